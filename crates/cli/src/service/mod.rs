//! The daemon: accepts hook requests on a Unix socket (acknowledging only
//! after the durable commit), ingests the spool, expands requests into
//! per-(path, target) jobs, and runs upload workers.
//!
//! Like mini-redis's `server::run`, [`run`] takes its listener, queue,
//! targets and shutdown signal as arguments, so tests run it in-process;
//! [`run_with`] also takes the clock and retry pace, so tests can run it on
//! tokio's paused clock.

mod clock;
mod expander;
pub mod filters;
mod listener;
pub mod metrics;
mod present;
mod retry;
mod spool;
pub mod systemd;
pub mod upstream;
mod workers;

#[cfg(test)]
mod present_tests;
#[cfg(test)]
mod retry_loop_tests;
#[cfg(test)]
mod test_target;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_queue::{Queue, QueueError};
use nix_outbox_store::StorePool;
use nix_outbox_upload::{Target, TargetConfig};
use tokio::net::UnixListener;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

pub use clock::Clock;
pub use filters::{Filters, Selection};
pub use metrics::{Metrics, Observability};
pub use present::{KnownPresent, RELOAD_EVERY};
pub use retry::{Failure, Jitter, RetryPolicy};
pub use upstream::UpstreamCache;

/// How long a path seen in a target is trusted to still be there.
pub const DEFAULT_PRESENT_TTL: Duration = Duration::from_secs(3600);

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
    /// SQLite handle; calls run on blocking threads (and the hook
    /// socket's commits on that socket's own thread).
    pub queue: Arc<Mutex<Queue>>,
    /// Wakes the workers when the expander creates jobs (jobs made due by
    /// `nix-outbox retry` are found by the workers' polling).
    pub wake: Notify,
    /// Wakes the expander when a request is committed. Kept apart from
    /// `wake` so that a hook's commit wakes one task, not every worker: on
    /// a machine busy building, each needless wake-up is CPU taken from
    /// the builds and from the next hook's acknowledgement.
    pub new_requests: Notify,
    /// Build logs and local signatures.
    pub extras: crate::config::CacheExtras,
}

impl Service {
    /// Runs `f` against the queue on a blocking thread.
    pub async fn with_queue<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> anyhow::Result<T> {
        on_queue(&self.queue, f).await
    }
}

/// Runs `f` against a shared queue handle on a blocking thread: SQLite
/// calls block, and must not stall the runtime's threads.
pub(crate) async fn on_queue<T: Send + 'static>(
    queue: &Arc<Mutex<Queue>>,
    f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
) -> anyhow::Result<T> {
    let queue = queue.clone();
    let res = tokio::task::spawn_blocking(move || {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut q)
    })
    .await?;
    Ok(res?)
}

/// The wall clock in unix seconds, as the queue stores time (for the CLI;
/// the daemon's loops read their [`Clock`]).
pub fn now() -> i64 {
    Clock::system().now()
}

/// What [`run_with`] adds to a [`Service`]. The default is production's.
pub struct Options {
    pub clock: Clock,
    pub retry: RetryPolicy,
    pub jitter: Jitter,
    /// How long a path seen in a target is trusted to still be there.
    pub present_ttl: Duration,
    /// What not to upload (`include`, `exclude`, `upstream-keys`).
    pub filters: Filters,
    /// Caches whose paths are not uploaded (`upstream-caches`); asked
    /// through the known-present cache, with `present_ttl`.
    pub upstream_caches: Vec<UpstreamCache>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clock: Clock::system(),
            retry: RetryPolicy::default(),
            jitter: Jitter::unpredictable(),
            present_ttl: DEFAULT_PRESENT_TTL,
            filters: Filters::default(),
            upstream_caches: Vec::new(),
        }
    }
}

/// What the loops of a running daemon share: the service and the options,
/// with each target behind its known-present cache.
pub(crate) struct Daemon {
    pub svc: Arc<Service>,
    pub clock: Clock,
    pub retry: RetryPolicy,
    pub jitter: Jitter,
    /// `svc.targets[i]` behind its known-present cache, in the same order.
    pub present: Vec<Arc<KnownPresent>>,
    /// Which paths of a closure not to upload.
    pub selection: Selection,
    /// Counters for `/metrics` and the in-flight progress for `status`.
    pub metrics: Arc<Metrics>,
}

impl Daemon {
    pub fn new(svc: Arc<Service>, options: Options) -> Arc<Self> {
        let present = svc
            .targets
            .iter()
            .map(|t| {
                Arc::new(KnownPresent::new(
                    t.target.clone(),
                    t.id.clone(),
                    svc.queue.clone(),
                    options.clock,
                    options.present_ttl,
                ))
            })
            .collect();
        let metrics = Arc::new(Metrics::new(
            svc.targets.iter().map(|t| t.id.clone()).collect(),
        ));
        let selection = Selection {
            store_dir: svc.store_dir.clone(),
            filters: options.filters,
            upstreams: options
                .upstream_caches
                .into_iter()
                .map(|u| u.remembered(svc.queue.clone(), options.clock, options.present_ttl))
                .collect(),
        };
        Arc::new(Self {
            metrics,
            selection,
            svc,
            clock: options.clock,
            retry: options.retry,
            jitter: options.jitter,
            present,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }
}

/// Runs the daemon until `shutdown` flips to true, on the wall clock.
pub async fn run(
    svc: Arc<Service>,
    listener: UnixListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_with(svc, listener, shutdown, Options::default()).await
}

/// Runs the daemon until `shutdown` flips to true, then drains for at most
/// [`DEFAULT_STOP_TIMEOUT`] (see [`run_managed`]).
pub async fn run_with(
    svc: Arc<Service>,
    listener: UnixListener,
    shutdown: watch::Receiver<bool>,
    options: Options,
) -> anyhow::Result<()> {
    run_managed(svc, listener, shutdown, options, Lifecycle::default()).await
}

/// How long a stopping daemon waits for in-flight uploads by default
/// (`stop-timeout-secs`); the systemd unit's TimeoutStopSec is above it.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How a daemon reports readiness and stops (systemd's `Type=notify` and
/// TimeoutStopSec, but nothing here depends on systemd).
pub struct Lifecycle {
    /// After `shutdown`, how long in-flight uploads may take to finish.
    pub stop_timeout: Duration,
    /// Called once the queue is open, the listener accepts and the loops
    /// are spawned (the workers may still be waiting to recover the
    /// uploads a crash or stop interrupted).
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Whether to serve `/metrics` and write the progress file.
    pub observe: Observability,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            on_ready: None,
            observe: Observability::default(),
        }
    }
}

/// Runs the daemon until `shutdown` flips to true, then drains: no new
/// upload or expansion starts, the hook socket keeps acknowledging (hooks
/// need not spool during the drain), and uploads in flight get up to
/// `lifecycle.stop_timeout` to finish. Those still running then are cut
/// off and stay `in_flight` in the queue, to be retried at the next start
/// (the same path as after a crash).
pub async fn run_managed(
    svc: Arc<Service>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
    options: Options,
    lifecycle: Lifecycle,
) -> anyhow::Result<()> {
    let d = Daemon::new(svc, options);
    for t in &d.svc.targets {
        t.target
            .ensure_cache_info(&d.svc.store_dir)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot write nix-cache-info to {}: {e} (will retry with the first upload)",
                    t.id
                )
            });
    }
    // The listener outlives the drain: it stops on its own signal, last.
    let (close_tx, close_rx) = watch::channel(false);
    let mut accepting = listener::spawn(d.clone(), listener, close_rx.clone())?;
    // The loops stop on `stop`: set by `shutdown`, or by a failure of the
    // hook socket (below).
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(spool::ingest_loop(d.clone(), stop.clone()));
    tasks.spawn(expander::expand_loop(d.clone(), stop.clone()));
    // Like the listener, /metrics and the progress file stay up during
    // the drain (that is when watching the uploads in flight matters).
    let mut observers = tokio::task::JoinSet::new();
    let metrics_address = match lifecycle.observe.metrics_listener {
        Some(l) => {
            let addr = l.local_addr()?.to_string();
            observers.spawn(metrics::serve(d.clone(), l, close_rx.clone()));
            Some(addr)
        }
        None => None,
    };
    if let Some(path) = lifecycle.observe.progress_file {
        observers.spawn(metrics::write_loop(
            d.clone(),
            path,
            metrics_address,
            close_rx.clone(),
        ));
    }
    tasks.spawn(workers::run_workers(d.clone(), stop.clone()));
    if let Some(ready) = lifecycle.on_ready {
        ready();
    }
    // The hook socket ends early only on a failure. Then the daemon stops
    // (draining the uploads as for a stop) and exits with the error, so
    // that it is restarted rather than run on with every hook spooling.
    let failed = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => None,
        res = &mut accepting => Some(match res {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow::anyhow!("the hook socket closed unexpectedly"),
            Err(_) => anyhow::anyhow!("the hook socket's thread panicked"),
        }),
    };
    if let Some(e) = &failed {
        tracing::error!("{e:#}; stopping (hooks spool their requests until a restart)");
    }
    let _ = stop_tx.send(true);
    d.svc.wake.notify_waiters();
    d.svc.new_requests.notify_waiters();
    drain(&d, &mut tasks, lifecycle.stop_timeout).await;
    let _ = close_tx.send(true);
    if failed.is_none()
        && let Ok(Err(e)) = accepting.await
    {
        tracing::error!("daemon task failed: {e:#}");
    }
    while let Some(res) = observers.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::error!("daemon task failed: {e:#}");
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits for the loops to end (workers end after their current job), for
/// at most `limit`; then cuts off what still runs.
async fn drain(d: &Daemon, tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>, limit: Duration) {
    let in_flight = d
        .svc
        .with_queue(|q| q.status(0))
        .await
        .map(|s| s.targets.iter().map(|t| t.in_flight).sum::<u64>())
        .unwrap_or(0);
    if in_flight > 0 {
        let msg = format!(
            "stopping: no new uploads; waiting up to {}s for {in_flight} upload(s) in flight",
            limit.as_secs()
        );
        tracing::info!("{msg}");
        systemd::notify_status(&msg);
    }
    let joined = tokio::time::timeout(limit, async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::error!("daemon task failed: {e:#}");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            "stop-timeout-secs ({}s) reached with uploads still in flight; they stay queued and \
             are retried at the next start",
            limit.as_secs()
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Sleeps until `woken` fires, the shutdown flips, or `max` passes. Take
/// `woken` (and `enable` it) before looking for work, so that a notice sent
/// between the look and the sleep is not missed.
pub(crate) async fn idle(
    woken: Pin<&mut Notified<'_>>,
    shutdown: &mut watch::Receiver<bool>,
    max: Duration,
) {
    tokio::select! {
        _ = woken => {}
        _ = shutdown.changed() => {}
        _ = tokio::time::sleep(max) => {}
    }
}
