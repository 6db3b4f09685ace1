//! `nix-outbox daemon [--config FILE]`: runs the daemon in the foreground.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use nix_outbox::config::Config;
use nix_outbox::service::systemd::{self, InheritedSocket};
use nix_outbox::service::{self, Lifecycle, Options, Service, TargetEntry};
use nix_outbox_core::keys::{self, SecretKey};
use nix_outbox_queue::Queue;
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_upload::{TargetLocation, open_target};
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};

#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (default: $NIX_OUTBOX_CONFIG, then /etc/nix-outbox/config.toml, then built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    // SAFETY: no thread exists yet (the runtime is built below).
    let inherited = unsafe { systemd::take_listen_socket() }?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let res = runtime.block_on(serve(cfg, inherited));
    // Uploads cut off by stop-timeout-secs may leave blocking work (a
    // compressor thread, a queue call) that ends by itself soon; do not let
    // it hold the exit for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    res
}

async fn serve(cfg: Config, inherited: Option<InheritedSocket>) -> anyhow::Result<()> {
    cfg.ensure_state_dir()?;
    let (keys, generated) = load_or_generate_keys(&cfg)?;
    if generated || cfg.default_target || cfg.source == "built-in defaults" {
        eprintln!("{}", nix_conf_advice(&cfg, &keys));
    }
    for t in &cfg.targets {
        // Like `nix copy --to file://DIR`, a missing cache directory is
        // created (once, at start; uploads never create it).
        if let TargetLocation::File { root } = &t.location {
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
        }
    }
    let queue = Queue::open(&cfg.queue_path())?;
    let address = StoreAddress::from_env()?;
    let pool = StorePool::new(address, cfg.store_dir.clone(), cfg.workers + 2);
    let targets = cfg
        .targets
        .iter()
        .map(|c| {
            Ok(TargetEntry {
                id: c.id(),
                target: open_target(c)?,
                config: c.clone(),
            })
        })
        .collect::<Result<_, nix_outbox_upload::UploadError>>()?;
    let activated = inherited.is_some();
    let listener = match inherited {
        Some(inherited) => from_systemd(&cfg, inherited)?,
        None => bind_socket(&cfg)?,
    };
    tracing::info!(
        "nix-outbox daemon listening on {}{} (config: {}); uploading to {}",
        cfg.socket.display(),
        if activated {
            " (socket from systemd)"
        } else {
            ""
        },
        cfg.source,
        cfg.targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let svc = Arc::new(Service {
        store_dir: cfg.store_dir.clone(),
        pool,
        targets,
        keys,
        spool_dir: cfg.spool_dir(),
        workers: cfg.workers,
        queue: Arc::new(Mutex::new(queue)),
        wake: Notify::new(),
        new_requests: Notify::new(),
        extras: cfg.extras.clone(),
    });
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stopping; interrupted uploads resume at the next start");
        systemd::notify_stopping("stopping: finishing uploads in flight");
        let _ = tx.send(true);
    });
    let metrics_listener = match cfg.metrics_address {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr} (metrics-address)"))?;
            tracing::info!("serving metrics on http://{}/metrics", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let lifecycle = Lifecycle {
        observe: service::Observability {
            metrics_listener,
            progress_file: Some(cfg.progress_path()),
        },
        stop_timeout: cfg.stop_timeout,
        on_ready: Some(Box::new(|| {
            systemd::notify_ready("accepting hook requests")
        })),
    };
    let options = Options {
        filters: cfg.filters.clone(),
        upstream_caches: upstream_caches(&cfg)?,
        ..Options::default()
    };
    let res = service::run_managed(svc, listener, rx, options, lifecycle).await;
    // systemd's socket outlives us: that is what keeps hooks queued while
    // the daemon restarts. Only a socket we bound is ours to remove.
    if !activated {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    res
}

/// The hook socket passed by socket activation (nix-outbox.socket). Its
/// mode and group are systemd's (SocketMode=, SocketGroup=), not ours.
fn from_systemd(cfg: &Config, inherited: InheritedSocket) -> anyhow::Result<UnixListener> {
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

/// The configured upstream caches, opened read-only (only existence checks
/// are ever made on them).
pub(crate) fn upstream_caches(cfg: &Config) -> anyhow::Result<Vec<service::UpstreamCache>> {
    cfg.upstream_caches
        .iter()
        .map(|c| {
            let target = open_target(c).with_context(|| format!("upstream cache {c}"))?;
            Ok(service::UpstreamCache::new(c.id(), target))
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Loads the configured keys, or with none configured, the embedded
/// default key `<state-dir>/keys/<host>-outbox-1`, generated on first use.
fn load_or_generate_keys(cfg: &Config) -> anyhow::Result<(Vec<SecretKey>, bool)> {
    let mut generated = false;
    let files = if cfg.secret_key_files.is_empty() {
        let (name, sk, pk) = default_key_files(cfg);
        if !sk.exists() {
            create_private_dir(&cfg.keys_dir())?;
            let key = SecretKey::generate(&name)?;
            keys::write_key_files(&key, &sk, &pk, false)?;
            eprintln!(
                "nix-outbox: generated signing key {} (public key in {})",
                sk.display(),
                pk.display()
            );
            generated = true;
        }
        vec![sk]
    } else {
        cfg.secret_key_files.clone()
    };
    Ok((read_keys(&files)?, generated))
}

/// The embedded default key used when `secret-key-files` is empty: its
/// name and its secret and public key files under `<state-dir>/keys/`.
/// Shared with `copy`, which uses the key but never generates it.
pub fn default_key_files(cfg: &Config) -> (String, PathBuf, PathBuf) {
    let name = format!("{}-outbox-1", hostname());
    let (sk, pk) = (
        cfg.keys_dir().join(format!("{name}.sk")),
        cfg.keys_dir().join(format!("{name}.pk")),
    );
    (name, sk, pk)
}

/// Reads secret key files, warning loudly about group/world-readable ones.
pub fn read_keys(files: &[PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    let mut out = Vec::new();
    for f in files {
        let loaded = keys::read_secret_key_file(f)?;
        if let Some(w) = &loaded.permission_warning {
            // Loud on purpose: both in the log and on the terminal.
            tracing::warn!("{w}");
            eprintln!("nix-outbox: WARNING: {w}");
        }
        out.push(loaded.key);
    }
    Ok(out)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && SecretKey::generate(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn nix_conf_advice(cfg: &Config, keys: &[SecretKey]) -> String {
    let hook = std::env::current_exe()
        .map(|e| e.with_file_name("nix-outbox-hook"))
        .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/nix-outbox-hook"));
    let pks: Vec<String> = keys.iter().map(|k| k.public_key().to_string()).collect();
    // What Nix reads from is the cache without our upload options.
    let caches: Vec<String> = cfg.targets.iter().map(|t| t.location.to_string()).collect();
    format!(
        "nix-outbox: add to /etc/nix/nix.conf on this machine, then restart nix-daemon:\n    post-build-hook = {}\n\
         nix-outbox: and on every machine that should use the cache:\n    extra-substituters = {}\n    extra-trusted-public-keys = {}",
        hook.display(),
        caches.join(" "),
        pks.join(" ")
    )
}

fn bind_socket(cfg: &Config) -> anyhow::Result<UnixListener> {
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
