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
    match &inherited.path {
        Some(p) if p == &cfg.socket => {}
        // Hooks connect to `socket` from the configuration; anything sent
        // to another path would only reach us through the spool.
        other => tracing::warn!(
            "systemd passed a socket bound to {}, but the configuration's socket (which the hook \
             uses) is {}; make ListenStream= in nix-outbox.socket match it (nix-outbox \
             install-systemd does)",
            other
                .as_ref()
                .map_or("no path".to_owned(), |p| p.display().to_string()),
            cfg.socket.display()
        ),
    }
    if let Some(path) = &inherited.path {
        check_socket_access(cfg, path)?;
    }
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
    let text = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .with_context(|| format!("socket-group {name:?} does not exist in /etc/group"))
}
