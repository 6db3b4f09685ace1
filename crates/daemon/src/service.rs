//! What the daemon's tasks share: the [`Service`] a caller assembles
//! (store, queue, targets, keys), the [`Options`] it runs with, and the
//! [`Daemon`] the loops see (the service with each target behind its
//! known-present cache, the path selection and the metrics).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_outbox_config::DEFAULT_STOP_TIMEOUT;
use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_queue::{Queue, QueueError};
use nix_outbox_store::StorePool;
use nix_outbox_upload::{Target, TargetConfig};
use tokio::sync::Notify;

use crate::socket::Peers;
use crate::{
    Clock, Filters, Jitter, KnownPresent, Metrics, Observability, RetryPolicy, Selection,
    UpstreamCache,
};

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
    pub extras: crate::CacheExtras,
}

impl Service {
    /// Runs `f` against the queue on a blocking thread.
    pub async fn with_queue<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        on_queue(&self.queue, f).await
    }
}

/// Runs `f` against a shared queue handle on a blocking thread: SQLite
/// calls block, and must not stall the runtime's threads. A panic in `f`
/// is a panic of the caller.
pub(crate) async fn on_queue<T: Send + 'static>(
    queue: &Arc<Mutex<Queue>>,
    f: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let queue = queue.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut q)
    })
    .await;
    match joined {
        Ok(res) => res,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime itself shuts down, which drops
        // this task too before it could look at an answer.
        Err(_) => std::future::pending().await,
    }
}

/// How [`run`](crate::run) runs a [`Service`]. The default is production's
/// pace on the wall clock, exposing nothing; tests change what they need
/// (`Options { clock, ..Default::default() }`).
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
    /// After the shutdown, how long in-flight uploads may take to finish
    /// (`stop-timeout-secs`).
    pub stop_timeout: Duration,
    /// Called once the queue is open, the listener accepts and the loops
    /// are spawned (the workers may still be waiting to recover the
    /// uploads a crash or stop interrupted): systemd's readiness.
    pub on_ready: Option<Box<dyn FnOnce() + Send>>,
    /// Whether to serve `/metrics` and write the progress file.
    pub observe: Observability,
    /// Who may enqueue through the hook socket.
    pub peers: Peers,
    /// Nix's database to follow (`ingest` includes `nix-db`).
    pub nix_db: Option<crate::nix_db::NixDbSource>,
    /// Tests only: the hook socket's committer panics at its first commit.
    #[cfg(test)]
    pub panic_on_commit: bool,
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
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            on_ready: None,
            observe: Observability::default(),
            peers: Peers::default(),
            nix_db: None,
            #[cfg(test)]
            panic_on_commit: false,
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
    /// Who may enqueue through the hook socket.
    pub peers: Peers,
    #[cfg(test)]
    pub panic_on_commit: bool,
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
            #[cfg(test)]
            panic_on_commit: options.panic_on_commit,
            peers: options.peers,
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
