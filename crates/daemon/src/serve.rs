//! The production daemon: what `nix-outbox daemon` runs. It takes the
//! socket systemd handed over (if any), opens the queue, the store and the
//! targets named by the [`Config`], loads or generates the signing key,
//! and [`run`](crate::run)s until SIGINT or SIGTERM.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use nix_outbox_queue::Queue;
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_upload::{TargetLocation, open_target};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::systemd::{self, InheritedSocket};
use crate::{Config, Observability, Options, Service, TargetEntry, keys, socket};

/// Runs the daemon for `cfg` in the foreground until it is stopped.
pub fn serve(cfg: Config) -> anyhow::Result<()> {
    // SAFETY: no thread exists yet (the runtime is built below).
    let inherited = unsafe { systemd::take_listen_socket() }?;
    // Every thread of this runtime (workers and blocking threads) uploads
    // or follows Nix's database; the hook thread is started from this one
    // (run → listener::spawn, polled here by block_on), so it keeps the
    // daemon's priority.
    let nice = cfg.upload_nice;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || crate::priority::lower_this_thread(nice))
        .build()?;
    let res = runtime.block_on(serve_async(cfg, inherited));
    // Uploads cut off by stop-timeout-secs may leave blocking work (a
    // compressor thread, a queue call) that ends by itself soon; do not let
    // it hold the exit for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    res
}

async fn serve_async(cfg: Config, inherited: Option<InheritedSocket>) -> anyhow::Result<()> {
    cfg.ensure_state_dir()?;
    let (keys, generated) = keys::load_or_generate(&cfg)?;
    if generated || cfg.default_target || cfg.source == "built-in defaults" {
        eprintln!("{}", keys::nix_conf_advice(&cfg, &keys));
    }
    for t in &cfg.targets {
        let TargetLocation::File { root } = &t.location else {
            continue;
        };
        // Only the embedded default cache, inside our own state dir, is
        // created. A configured directory that is missing may be a mount
        // point whose filesystem is not mounted (yet): creating it would
        // fill the disk below. Its uploads wait, retried, until it exists.
        if cfg.default_target && root.starts_with(&cfg.state_dir) {
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
        } else if !root.is_dir() {
            tracing::error!(
                "the cache directory {} does not exist: uploads to it wait, and are retried, until \
                 it does; create it (or mount its filesystem). nix-outbox never creates it, so an \
                 unmounted filesystem is not filled by mistake",
                root.display()
            );
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
        Some(inherited) => socket::from_systemd(&cfg, inherited)?,
        None => socket::bind(&cfg)?,
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
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stopping; interrupted uploads resume at the next start");
        systemd::notify_stopping("stopping: finishing uploads in flight");
        on_signal.cancel();
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
    // Opened before anything starts: a database we cannot read is an
    // error now, with advice, not a source that silently does nothing.
    let nix_db = if cfg.ingest.contains(&nix_outbox_config::Ingest::NixDb) {
        let state = nix_outbox_store::nix_db::state_dir_from_env();
        let db = nix_outbox_store::nix_db::NixDb::open(&state)
            .context("ingest includes \"nix-db\", but Nix's database cannot be read")?;
        tracing::info!(
            "following Nix's database {} (nix-db-paths = {:?})",
            db.path().display(),
            cfg.nix_db_paths
        );
        Some(crate::nix_db::NixDbSource {
            db,
            paths: cfg.nix_db_paths,
        })
    } else {
        None
    };
    let options = Options {
        nix_db,
        filters: cfg.filters.clone(),
        upstream_caches: crate::upstream::open_configured(&cfg)?,
        observe: Observability {
            metrics_listener,
            progress_file: Some(cfg.progress_path()),
        },
        stop_timeout: cfg.stop_timeout,
        peers: socket::Peers::for_config(&cfg)?,
        on_ready: Some(Box::new(|| {
            systemd::notify_ready("accepting hook requests")
        })),
        ..Options::default()
    };
    let res = crate::run(svc, listener, options, shutdown).await;
    // systemd's socket outlives us: that is what keeps hooks queued while
    // the daemon restarts. Only a socket we bound is ours to remove.
    if !activated {
        let _ = std::fs::remove_file(&cfg.socket);
    }
    res
}
