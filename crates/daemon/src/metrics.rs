//! What the daemon counts, for Prometheus (`metrics-address`, served by
//! [`http`]) and for `nix-outbox status` (the in-flight progress file,
//! [`progress`]).
//!
//! Every label value is bounded: a configured target's id, or one of a
//! fixed set of words. Store paths never become labels: they would make
//! the series count grow with every build, and they say what was built.

mod http;
pub mod progress;

use std::path::PathBuf;
use std::time::Duration;

use nix_outbox_upload::{ClosureReport, RemoteErrorKind, UploadError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::Failure;

pub use progress::{InFlightJob, ProgressFile, TargetTotals};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    target: String,
    /// pending (never tried), failing (pending after a failure), in_flight.
    /// Skipped jobs are settled history: `jobs_total{outcome="skipped"}`.
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    target: String,
    /// done, skipped, failed.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    target: String,
    /// transient or permanent: how the retry policy paces it.
    class: &'static str,
    /// What failed; see [`failure_kind`].
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily = Family<TargetLabels, Histogram, fn() -> Histogram>;

/// The daemon's counters, shared by its tasks.
pub struct Metrics {
    registry: Registry,
    /// The configured targets' ids, in configuration order.
    targets: Vec<String>,
    queue_jobs: Family<QueueLabels, Gauge>,
    jobs: Family<JobLabels, Counter>,
    paths_uploaded: Family<TargetLabels, Counter>,
    paths_present: Family<TargetLabels, Counter>,
    nar_bytes: Family<TargetLabels, Counter>,
    file_bytes: Family<TargetLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    hook_requests: Family<OutcomeLabels, Counter>,
    spool_requests: Family<OutcomeLabels, Counter>,
    queue_write_refusals: Counter,
    /// The `nix-db` source: its cursor (the last `ValidPaths.id` looked
    /// at), how many rows Nix registered beyond it, requests it queued.
    nix_db_cursor: Gauge,
    nix_db_lag: Gauge,
    nix_db_requests: Counter,
    upload_duration: HistogramFamily,
    hook_latency: Histogram,
    /// Jobs being uploaded now, with their byte counts.
    pub in_flight: progress::InFlight,
}

fn upload_histogram() -> Histogram {
    // 50 ms … ~50 min: a cached closure's existence check to a big NAR.
    Histogram::new(exponential_buckets(0.05, 2.5, 13))
}

/// The states `nix_outbox_queue_jobs` reports for every configured target.
pub const QUEUE_STATES: [&str; 3] = ["pending", "failing", "in_flight"];

impl Metrics {
    pub fn new(targets: Vec<String>) -> Self {
        let mut registry = Registry::with_prefix("nix_outbox");
        let m = Self {
            registry: Registry::default(),
            targets,
            queue_jobs: Family::default(),
            jobs: Family::default(),
            paths_uploaded: Family::default(),
            paths_present: Family::default(),
            nar_bytes: Family::default(),
            file_bytes: Family::default(),
            failures: Family::default(),
            hook_requests: Family::default(),
            spool_requests: Family::default(),
            queue_write_refusals: Counter::default(),
            nix_db_cursor: Gauge::default(),
            nix_db_lag: Gauge::default(),
            nix_db_requests: Counter::default(),
            upload_duration: Family::new_with_constructor(upload_histogram),
            // 0.5 ms … ~5 s: a group-committed fsync to the hook's timeout.
            hook_latency: Histogram::new(exponential_buckets(0.0005, 2.5, 11)),
            in_flight: progress::InFlight::default(),
        };
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version (always 1)", build_info);
        registry.register(
            "queue_jobs",
            "Jobs in the queue per configured target and state (pending: never tried; failing: pending after a failure)",
            m.queue_jobs.clone(),
        );
        registry.register(
            "jobs",
            "Finished upload attempts per target and outcome (done, skipped, failed)",
            m.jobs.clone(),
        );
        registry.register(
            "paths_uploaded",
            "Store paths uploaded (NAR and narinfo written), closures included",
            m.paths_uploaded.clone(),
        );
        registry.register(
            "paths_already_present",
            "Store paths a job's closure needed that the target already had",
            m.paths_present.clone(),
        );
        registry.register_with_unit(
            "uploaded_nar",
            "Uncompressed NAR bytes of the paths uploaded",
            Unit::Bytes,
            m.nar_bytes.clone(),
        );
        registry.register_with_unit(
            "uploaded_file",
            "Compressed NAR file bytes uploaded",
            Unit::Bytes,
            m.file_bytes.clone(),
        );
        registry.register(
            "upload_failures",
            "Failed upload attempts per target, retry class and kind",
            m.failures.clone(),
        );
        registry.register(
            "hook_requests",
            "Hook connections with a request: accepted (committed), refused (malformed, too slow, or the commit failed), or forbidden (a user who may not enqueue)",
            m.hook_requests.clone(),
        );
        registry.register(
            "spool_requests",
            "Spooled requests: ingested into the queue, or rejected (unreadable, moved to spool/rejected)",
            m.spool_requests.clone(),
        );
        registry.register(
            "queue_write_refusals",
            "Queue writes the queue refused (full disk, a foreign write lock); each is retried until it lands",
            m.queue_write_refusals.clone(),
        );
        registry.register(
            "nix_db_cursor",
            "The nix-db source's cursor: the last row of Nix's ValidPaths table it looked at",
            m.nix_db_cursor.clone(),
        );
        registry.register(
            "nix_db_lag_rows",
            "Rows Nix registered beyond the nix-db source's cursor, when it last looked",
            m.nix_db_lag.clone(),
        );
        registry.register(
            "nix_db_requests",
            "Requests the nix-db source queued from Nix's database",
            m.nix_db_requests.clone(),
        );
        registry.register_with_unit(
            "upload_duration",
            "Time to upload one job's closure to its target, successful or not",
            Unit::Seconds,
            m.upload_duration.clone(),
        );
        registry.register_with_unit(
            "hook_commit_latency",
            "From a hook's connection to its `ok` reply: what a build waits for",
            Unit::Seconds,
            m.hook_latency.clone(),
        );
        // Every series of a configured target exists from the start, at 0:
        // a rate() over a counter that appears later misses its first step.
        for t in &m.targets {
            let target = t.clone();
            for outcome in ["done", "skipped", "failed"] {
                let _ = m.jobs.get_or_create(&JobLabels {
                    target: target.clone(),
                    outcome,
                });
            }
            let l = TargetLabels { target };
            for f in [
                &m.paths_uploaded,
                &m.paths_present,
                &m.nar_bytes,
                &m.file_bytes,
            ] {
                let _ = f.get_or_create(&l);
            }
            let _ = m.upload_duration.get_or_create(&l);
        }
        for outcome in ["accepted", "refused", "forbidden"] {
            let _ = m.hook_requests.get_or_create(&OutcomeLabels { outcome });
        }
        for outcome in ["ingested", "rejected"] {
            let _ = m.spool_requests.get_or_create(&OutcomeLabels { outcome });
        }
        Self { registry, ..m }
    }

    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    /// A hook connection was answered; `accepted` after its commit.
    pub fn hook_request(&self, accepted: bool, latency: Duration) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.hook_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if accepted {
            self.hook_latency.observe(latency.as_secs_f64());
        }
    }

    /// The queue refused a write that is retried until it lands.
    pub fn queue_write_refused(&self) {
        self.queue_write_refusals.inc();
    }

    pub fn nix_db_cursor(&self, id: i64) {
        self.nix_db_cursor.set(id);
    }

    pub fn nix_db_lag(&self, rows: i64) {
        self.nix_db_lag.set(rows);
    }

    pub fn nix_db_queued(&self, requests: u64) {
        self.nix_db_requests.inc_by(requests);
    }

    /// How many writes the queue refused so far.
    pub fn queue_write_refusals(&self) -> u64 {
        self.queue_write_refusals.get()
    }

    /// A connection from a user who may not enqueue was refused.
    pub fn hook_forbidden(&self) {
        self.hook_requests
            .get_or_create(&OutcomeLabels {
                outcome: "forbidden",
            })
            .inc();
    }

    /// A spool file was committed to the queue (`true`) or moved aside.
    pub fn spool_request(&self, ingested: bool) {
        let outcome = if ingested { "ingested" } else { "rejected" };
        self.spool_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records a job's upload attempt. `skipped` mirrors the worker's
    /// decision (root or a reference gone from the store); `log_failed` is
    /// set when the closure went out but the build log did not, which
    /// keeps the job pending, so it counts as a failure (kind `build_log`)
    /// and not as done.
    pub fn job_finished(
        &self,
        target: &str,
        result: &Result<ClosureReport, UploadError>,
        skipped: bool,
        log_failed: Option<Failure>,
        took: Duration,
    ) {
        let l = TargetLabels {
            target: target.to_owned(),
        };
        self.upload_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        let outcome = match result {
            Ok(report) => {
                self.paths_uploaded
                    .get_or_create(&l)
                    .inc_by(report.uploaded as u64);
                self.paths_present
                    .get_or_create(&l)
                    .inc_by(report.already_present as u64);
                self.nar_bytes.get_or_create(&l).inc_by(report.nar_bytes);
                self.file_bytes.get_or_create(&l).inc_by(report.file_bytes);
                self.in_flight.add_totals(target, report);
                match log_failed {
                    Some(f) => {
                        self.failure(target, f, "build_log");
                        "failed"
                    }
                    None if skipped => "skipped",
                    None => "done",
                }
            }
            Err(e) => {
                let class = Failure::from_transient(e.is_transient());
                self.failure(target, class, failure_kind(e));
                "failed"
            }
        };
        self.jobs
            .get_or_create(&JobLabels {
                target: target.to_owned(),
                outcome,
            })
            .inc();
    }

    fn failure(&self, target: &str, class: Failure, kind: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                target: target.to_owned(),
                class: class.label(),
                kind,
            })
            .inc();
    }

    /// Sets the queue gauges from per-(target, state) counts; configured
    /// targets missing from `counts` are set to 0, unconfigured ones
    /// (jobs left from an older configuration) are not reported.
    pub fn set_queue_depth(&self, counts: &[(String, &'static str, u64)]) {
        for t in &self.targets {
            for state in QUEUE_STATES {
                let n = counts
                    .iter()
                    .find(|(ct, cs, _)| ct == t && *cs == state)
                    .map_or(0, |c| c.2);
                self.queue_jobs
                    .get_or_create(&QueueLabels {
                        target: t.clone(),
                        state,
                    })
                    .set(n as i64);
            }
        }
    }

    /// The registry in the OpenMetrics text format (ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The `kind` label of a failure: one word per [`UploadError`] variant, and
/// per [`RemoteErrorKind`] for remote caches.
pub fn failure_kind(e: &UploadError) -> &'static str {
    match e {
        UploadError::Store(_) => "store",
        UploadError::HashMismatch { .. } => "hash_mismatch",
        UploadError::TargetIo { .. } => "target_io",
        UploadError::StoreDirMismatch { .. } => "store_dir_mismatch",
        UploadError::Compression { .. } => "compression",
        UploadError::Remote { kind, .. } => match kind {
            RemoteErrorKind::Credentials => "remote_credentials",
            RemoteErrorKind::Denied => "remote_denied",
            RemoteErrorKind::NotFound => "remote_not_found",
            RemoteErrorKind::Rejected => "remote_rejected",
            RemoteErrorKind::Unavailable => "remote_unavailable",
            // Non-exhaustive upstream: a kind added later still gets a
            // bounded label.
            _ => "remote_other",
        },
        UploadError::TargetSetup { .. } => "target_setup",
        UploadError::Internal(_) => "internal",
    }
}

/// What the daemon exposes besides the queue. The default exposes nothing
/// (tests that run the daemon in-process).
#[derive(Default)]
pub struct Observability {
    /// Serves `GET /metrics` here.
    pub metrics_listener: Option<TcpListener>,
    /// Where the in-flight progress is written for `nix-outbox status`.
    pub progress_file: Option<PathBuf>,
}

pub(crate) use http::serve;
pub(crate) use progress::write_loop;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_bounded_series() {
        let m = Metrics::new(vec!["file:///c".into()]);
        m.hook_request(true, Duration::from_millis(3));
        m.set_queue_depth(&[("file:///c".into(), "pending", 2)]);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("nix_outbox_queue_jobs{target=\"file:///c\",state=\"pending\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("nix_outbox_hook_requests_total{outcome=\"accepted\"} 1"),
            "{text}"
        );
        assert!(text.contains("nix_outbox_build_info{version="), "{text}");
        assert!(
            text.contains("nix_outbox_uploaded_file_bytes_total{target=\"file:///c\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_build_log_counts_the_attempt_as_failed_not_done() {
        let m = Metrics::new(vec!["t".into()]);
        let ok = Ok(ClosureReport::default());
        m.job_finished("t", &ok, false, Some(Failure::Transient), Duration::ZERO);
        m.job_finished("t", &ok, false, None, Duration::ZERO);
        let text = m.encode();
        for line in [
            "nix_outbox_jobs_total{target=\"t\",outcome=\"failed\"} 1",
            "nix_outbox_jobs_total{target=\"t\",outcome=\"done\"} 1",
            "nix_outbox_upload_failures_total{target=\"t\",class=\"transient\",kind=\"build_log\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
