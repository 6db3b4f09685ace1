//! The daemon: accepts hook requests on a Unix socket (acknowledging only
//! after the durable commit), ingests the spool, expands requests into
//! per-(path, target) jobs, and runs upload workers.
//!
//! Like mini-redis's `server::run`, [`run`] takes its listener, queue,
//! targets and shutdown signal as arguments, so tests run it in-process.

mod backoff;
mod expander;
mod listener;
mod spool;
mod workers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_queue::Queue;
use nix_outbox_store::StorePool;
use nix_outbox_upload::{Target, TargetConfig};
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};

pub use backoff::backoff_secs;

/// One configured cache.
pub struct TargetEntry {
    pub config: TargetConfig,
    /// The queue's name for this target (its canonical URL).
    pub id: String,
    pub target: Arc<dyn Target>,
}

/// Everything the daemon's tasks share.
pub struct Service {
    pub store_dir: StoreDir,
    pub pool: StorePool,
    pub targets: Vec<TargetEntry>,
    pub keys: Vec<SecretKey>,
    pub spool_dir: PathBuf,
    pub workers: usize,
    /// SQLite handle; calls run on blocking threads.
    pub queue: Arc<Mutex<Queue>>,
    /// Wakes the expander and workers when new work is committed.
    pub wake: Notify,
}

impl Service {
    /// Runs `f` against the queue on a blocking thread.
    pub async fn with_queue<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Queue) -> Result<T, nix_outbox_queue::QueueError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let queue = self.queue.clone();
        let res = tokio::task::spawn_blocking(move || {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut q)
        })
        .await?;
        Ok(res?)
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the daemon until `shutdown` flips to true. Jobs interrupted by the
/// shutdown stay `in_flight` in the queue and are retried on the next start
/// (the same path as after a crash).
pub async fn run(
    svc: Arc<Service>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let recovered = svc.with_queue(move |q| q.recover(now())).await?;
    if recovered > 0 {
        tracing::warn!("{recovered} upload(s) were interrupted by a crash or stop; retrying them");
    }
    for t in &svc.targets {
        t.target
            .ensure_cache_info(&svc.store_dir)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot write nix-cache-info to {}: {e} (will retry with the first upload)",
                    t.id
                )
            });
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(listener::accept_loop(
        svc.clone(),
        listener,
        shutdown.clone(),
    ));
    tasks.spawn(spool::ingest_loop(svc.clone(), shutdown.clone()));
    tasks.spawn(expander::expand_loop(svc.clone(), shutdown.clone()));
    for n in 0..svc.workers {
        tasks.spawn(workers::worker_loop(svc.clone(), n, shutdown.clone()));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    svc.wake.notify_waiters();
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::error!("daemon task failed: {e:#}");
        }
    }
    Ok(())
}

/// Sleeps until woken, the shutdown flips, or `max` passes.
pub(crate) async fn idle(
    svc: &Service,
    shutdown: &mut watch::Receiver<bool>,
    max: std::time::Duration,
) {
    tokio::select! {
        _ = svc.wake.notified() => {}
        _ = shutdown.changed() => {}
        _ = tokio::time::sleep(max) => {}
    }
}
