//! `nix-outbox install-systemd [--prefix DIR] [--bin PATH] [--config FILE]`:
//! writes `nix-outbox.service` and `nix-outbox.socket` (templates in
//! `dist/systemd/`, embedded here) with this binary's path, the configured
//! socket and the directories the daemon writes filled in, then prints the
//! remaining steps.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nix_outbox_core::atomic_write;
use nix_outbox_daemon::Config;
use nix_outbox_upload::TargetLocation;

const SERVICE_TEMPLATE: &str = include_str!("../../../../dist/systemd/nix-outbox.service");
const SOCKET_TEMPLATE: &str = include_str!("../../../../dist/systemd/nix-outbox.socket");

/// What `StateDirectory=nix-outbox` already makes writable.
const SYSTEMD_STATE_DIR: &str = "/var/lib/nix-outbox";

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the units.
    #[arg(long, default_value = "/etc/systemd/system")]
    prefix: PathBuf,
    /// The nix-outbox binary the service runs (default: this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Configuration file the service passes to the daemon (default: none,
    /// so the daemon reads /etc/nix-outbox/config.toml). Its socket, state
    /// directory and file:// caches go into the units.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The values filled into the templates.
#[derive(Debug)]
struct Install {
    bin: PathBuf,
    config: Option<PathBuf>,
    socket: PathBuf,
    socket_group: Option<String>,
    /// Directories to list in ReadWritePaths=, besides /var/lib/nix-outbox.
    writable: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe().context("cannot tell where this binary is; pass --bin")?,
    };
    let bin = std::fs::canonicalize(&bin)
        .with_context(|| format!("the binary {} does not exist; pass --bin", bin.display()))?;
    let config = match args.config {
        Some(c) => Some(
            std::fs::canonicalize(&c)
                .with_context(|| format!("the configuration {} does not exist", c.display()))?,
        ),
        None => None,
    };
    let cfg = Config::load(config.as_deref())?;
    if nix_outbox_config::effective_uid() != 0 {
        eprintln!(
            "nix-outbox: note: not running as root; the units run the daemon as root, whose \
             default state-dir and socket differ from this user's (set them in the configuration)"
        );
    }
    // The daemon creates these at start, but cannot under ProtectSystem=strict
    // unless they exist (ReadWritePaths= needs existing paths).
    let mut writable = Vec::new();
    if cfg.state_dir != Path::new(SYSTEMD_STATE_DIR) {
        cfg.ensure_state_dir()?;
        writable.push(cfg.state_dir.clone());
    }
    for t in &cfg.targets {
        if let TargetLocation::File { root } = &t.location {
            if root.starts_with(&cfg.state_dir) && cfg.state_dir == Path::new(SYSTEMD_STATE_DIR) {
                continue;
            }
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
            if !writable.iter().any(|w| root.starts_with(w)) {
                writable.push(root.clone());
            }
        }
    }
    let install = Install {
        bin,
        config,
        socket: cfg.socket.clone(),
        socket_group: cfg.socket_group.clone(),
        writable,
    };
    let (service, socket) = render(&install)?;
    std::fs::create_dir_all(&args.prefix)
        .with_context(|| format!("cannot create {}", args.prefix.display()))?;
    for (name, text) in [
        ("nix-outbox.service", service),
        ("nix-outbox.socket", socket),
    ] {
        let path = args.prefix.join(name);
        atomic_write::write(&path, text.as_bytes(), 0o644, true)?;
        println!("wrote {}", path.display());
    }
    let hook = install.bin.with_file_name("nix-outbox-hook");
    if !hook.exists() {
        eprintln!(
            "nix-outbox: WARNING: {} does not exist; install nix-outbox-hook next to nix-outbox",
            hook.display()
        );
    }
    println!(
        "next steps:\n  systemctl daemon-reload && systemctl enable --now nix-outbox.socket nix-outbox.service\n\
         \x20 add to /etc/nix/nix.conf, then restart nix-daemon (systemctl restart nix-daemon):\n    post-build-hook = {}\n\
         \x20 caches added to the configuration later need ReadWritePaths= too: run this command again",
        hook.display()
    );
    Ok(())
}

/// Fills the templates: `(service, socket)`.
fn render(i: &Install) -> anyhow::Result<(String, String)> {
    let bin = unit_path(&i.bin)?;
    let daemon_args = match &i.config {
        Some(c) => format!(" --config {}", unit_path(c)?),
        None => String::new(),
    };
    let mut rw = String::from("# The state directory and file:// caches of the configuration:");
    for w in &i.writable {
        rw.push_str(&format!("\nReadWritePaths={}", unit_path(w)?));
    }
    if i.writable.is_empty() {
        rw.push_str(" all inside /var/lib/nix-outbox.");
    }
    let service = SERVICE_TEMPLATE
        .replace("@bindir@/nix-outbox", &bin)
        .replace("@daemon_args@", &daemon_args)
        .replace("@read_write_paths@", &rw);
    let access = match &i.socket_group {
        None => "SocketMode=0600".to_owned(),
        Some(g) => {
            if g.is_empty()
                || !g
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                bail!("socket-group {g:?} is not a valid group name for a systemd unit");
            }
            format!("SocketGroup={g}\nSocketMode=0660")
        }
    };
    let socket = SOCKET_TEMPLATE
        .replace("@socket@", &unit_path(&i.socket)?)
        .replace("@socket_access@", &access);
    Ok((service, socket))
}

/// A path as a unit file takes it: absolute, `%` escaped (systemd expands
/// `%` specifiers), and without the characters that would need quoting.
fn unit_path(p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    if !p.is_absolute() {
        bail!("{s:?} must be an absolute path for a systemd unit");
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\;".contains(c))
    {
        bail!("{s:?} contains whitespace, quotes, backslashes or ';': move it to a plainer path");
    }
    Ok(s.replace('%', "%%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACEHOLDERS: &[&str] = &[
        "@bindir@",
        "@daemon_args@",
        "@read_write_paths@",
        "@socket@",
        "@socket_access@",
    ];

    #[test]
    fn the_templates_hold_every_placeholder() {
        let both = format!("{SERVICE_TEMPLATE}{SOCKET_TEMPLATE}");
        for placeholder in PLACEHOLDERS {
            assert!(both.contains(placeholder), "{placeholder}");
        }
    }

    fn install() -> Install {
        Install {
            bin: "/opt/outbox/bin/nix-outbox".into(),
            config: None,
            socket: "/run/nix-outbox/hook.sock".into(),
            socket_group: None,
            writable: vec![],
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let (service, socket) = render(&install()).unwrap();
        for text in [&service, &socket] {
            for placeholder in PLACEHOLDERS {
                assert!(!text.contains(placeholder), "{placeholder} in {text}");
            }
        }
        assert!(
            service.contains("\nExecStart=/opt/outbox/bin/nix-outbox daemon\n"),
            "{service}"
        );
        assert!(!service.contains("\nReadWritePaths="), "{service}");
        assert!(
            socket.contains("\nListenStream=/run/nix-outbox/hook.sock\n"),
            "{socket}"
        );
        assert!(socket.contains("\nSocketMode=0600\n"), "{socket}");
    }

    #[test]
    fn config_group_and_caches_are_carried_over() {
        let i = Install {
            config: Some("/etc/o%/c.toml".into()),
            socket_group: Some("nixbld".into()),
            writable: vec!["/srv/state".into(), "/srv/cache".into()],
            ..install()
        };
        let (service, socket) = render(&i).unwrap();
        assert!(
            service.contains("daemon --config /etc/o%%/c.toml\n"),
            "{service}"
        );
        assert!(
            service.contains("\nReadWritePaths=/srv/state\nReadWritePaths=/srv/cache\n"),
            "{service}"
        );
        assert!(
            socket.contains("\nSocketGroup=nixbld\nSocketMode=0660\n"),
            "{socket}"
        );
    }

    #[test]
    fn paths_a_unit_cannot_hold_plainly_are_refused() {
        for bad in ["/a b/nix-outbox", "relative/nix-outbox", "/a\"b", "/a;b"] {
            let i = Install {
                bin: bad.into(),
                ..install()
            };
            assert!(render(&i).is_err(), "{bad}");
        }
        let i = Install {
            socket_group: Some("bad group".into()),
            ..install()
        };
        assert!(render(&i).is_err());
    }
}
