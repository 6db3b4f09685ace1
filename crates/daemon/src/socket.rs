//! The hook socket: bound by us (mode 0600, or 0660 for `socket-group`,
//! created under a strict umask) or handed over by systemd, whose mode is
//! then checked, since whoever can connect can make the daemon sign and
//! upload any store path.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;

use crate::Config;
use crate::systemd::InheritedSocket;

/// The hook socket passed by socket activation (nix-outbox.socket). Its
/// mode and group are systemd's (SocketMode=, SocketGroup=), not ours.
pub fn from_systemd(cfg: &Config, inherited: InheritedSocket) -> anyhow::Result<UnixListener> {
    let Some(path) = &inherited.path else {
        bail!(
            "systemd passed a socket without a path (an abstract socket, such as \
             ListenStream=@name): file permissions cannot protect it, so any local user could \
             connect; use a path, ListenStream={} (nix-outbox install-systemd writes it)",
            cfg.socket.display()
        );
    };
    // Hooks connect to `socket` from the configuration; anything sent to
    // another path would only reach us through the spool.
    if path != &cfg.socket {
        tracing::warn!(
            "systemd passed a socket bound to {}, but the configuration's socket (which the hook \
             uses) is {}; make ListenStream= in nix-outbox.socket match it (nix-outbox \
             install-systemd does)",
            path.display(),
            cfg.socket.display()
        );
    }
    check_socket_access(cfg, path)?;
    inherited.listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(inherited.listener)?)
}

/// Refuses a systemd socket that lets others enqueue: whoever can connect
/// can make the daemon sign and upload any store path. We bind our own
/// socket 0600 (0660 with `socket-group`); an edited unit may not be.
fn check_socket_access(cfg: &Config, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot check the permissions of {}", path.display()))?;
    let us = nix_outbox_config::effective_uid();
    if meta.uid() != us && meta.uid() != 0 {
        bail!(
            "the socket systemd passed, {}, is owned by uid {}, neither root nor the daemon's user \
             (uid {us}): that user could change who may connect; let systemd create it \
             (nix-outbox install-systemd), or remove it",
            path.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && cfg.socket_group.is_none()) {
        bail!(
            "nix-outbox.socket has SocketMode={mode:04o}: any local user could enqueue uploads; \
             set SocketMode=0600 (or SocketGroup= and 0660), e.g. with nix-outbox install-systemd"
        );
    }
    if let Some(group) = &cfg.socket_group {
        match group_id(group) {
            Ok(gid) if gid == meta.gid() => {}
            Ok(_) => tracing::warn!(
                "{} is not owned by socket-group {group}, so that group's members cannot \
                 connect; set SocketGroup={group} in nix-outbox.socket (nix-outbox install-systemd \
                 does)",
                path.display()
            ),
            Err(e) => tracing::warn!("{e:#}; cannot check the group of {}", path.display()),
        }
    }
    Ok(())
}

pub fn bind(cfg: &Config) -> anyhow::Result<UnixListener> {
    let path = &cfg.socket;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another nix-outbox daemon is already listening on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    // Created 0600 from the start: between `bind` and the chmod below, a
    // socket made under a lax umask would let anyone connect (and keep a
    // connection made in that window). umask is process-wide, but nothing
    // else creates files while the daemon starts up.
    // SAFETY: umask only swaps the process's file-creation mask.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old_mask) };
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    // Root-only by default: only root may enqueue (the hook runs as root under
    // nix-daemon). A configured group gets access too.
    let mode = match &cfg.socket_group {
        None => 0o600,
        Some(group) => {
            let gid = group_id(group)?;
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
            // SAFETY: c is a valid NUL-terminated path; -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                bail!(
                    "cannot give group {group} the socket {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            0o660
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    Ok(group_entry(name)?.0)
}

/// A group's id and its listed (supplementary) members, from /etc/group.
fn group_entry(name: &str) -> anyhow::Result<(u32, Vec<String>)> {
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (group, _, gid, members) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((group, gid.parse().ok()?, members))
        })
        .find(|(g, _, _)| *g == name)
        .map(|(_, gid, members)| {
            let members = members
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            (gid, members.collect())
        })
        .with_context(|| format!("socket-group {name:?} does not exist in /etc/group"))
}

/// Who may enqueue through the hook socket: root (the hook runs as root
/// under nix-daemon), the daemon's own user, and members of `socket-group`
/// (for `push` and `retry`). Checked on every connection with the kernel's
/// word for the peer (`SO_PEERCRED`), so neither a socket without file
/// permissions (an abstract one) nor a lax mode lets anyone else in.
#[derive(Clone, Debug)]
pub struct Peers {
    own_uid: u32,
    /// `socket-group`: its name, id and listed members, read at start (a
    /// change to /etc/group takes effect at the next start).
    group: Option<(String, u32, Vec<String>)>,
}

impl Default for Peers {
    /// Root and the daemon's own user only.
    fn default() -> Self {
        Self {
            own_uid: nix_outbox_config::effective_uid(),
            group: None,
        }
    }
}

impl Peers {
    /// The peers the configuration allows.
    pub fn for_config(cfg: &Config) -> anyhow::Result<Self> {
        let group = match &cfg.socket_group {
            None => None,
            Some(name) => {
                let (gid, members) = group_entry(name)?;
                Some((name.clone(), gid, members))
            }
        };
        Ok(Self {
            group,
            ..Self::default()
        })
    }

    /// `Ok` if a peer running as `uid` (primary group `gid`) may enqueue;
    /// else what to tell it.
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        if let Some((_, group_gid, members)) = &self.group
            && (gid == *group_gid || user_name(uid).is_some_and(|n| members.contains(&n)))
        {
            return Ok(());
        }
        let group = match &self.group {
            Some((name, _, _)) => format!("members of socket-group {name}"),
            None => "members of socket-group (none is configured)".to_owned(),
        };
        Err(format!(
            "permission denied: uid {uid} may not enqueue uploads; only root, the daemon's user \
             (uid {}) and {group} may. Run this as root, or add the user to socket-group",
            self.own_uid
        ))
    }
}

/// The login name of `uid`, from the user database.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: zeroed is a valid `passwd` (pointers null, integers 0).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; on success
    // `found` points at `pwd`, whose strings live in `buf`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_our_own_user_may_others_may_not() {
        let peers = Peers {
            own_uid: 1234,
            group: None,
        };
        assert!(peers.check(0, 0).is_ok());
        assert!(peers.check(1234, 99).is_ok());
        let e = peers.check(65534, 65534).unwrap_err();
        assert!(
            e.contains("permission denied")
                && e.contains("uid 65534")
                && e.contains("socket-group"),
            "{e}"
        );
    }

    #[test]
    fn socket_group_members_may_by_primary_or_listed_membership() {
        let peers = Peers {
            own_uid: 0,
            group: Some(("outbox".into(), 4242, vec!["root".into()])),
        };
        // Primary group.
        assert!(peers.check(5000, 4242).is_ok());
        // Listed member: uid 0 is "root" in every user database; use the
        // name lookup on a non-root uid that has none.
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert!(peers.check(4_000_000, 1).is_err());
        let e = peers.check(4_000_000, 1).unwrap_err();
        assert!(e.contains("members of socket-group outbox"), "{e}");
    }
}
