//! Upload workers: claim a due job, upload the closure of its path to its
//! target (references first, narinfo last, skipping what the target has),
//! then record the outcome. Nothing is ever dropped: a failed job goes back
//! to pending with its error and the retry policy's delay (see `retry.rs`),
//! however often and however it fails.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_queue::Job;
use nix_outbox_upload::{Target as _, UploadError, upload_closure};
use tokio::sync::watch;

use super::{Daemon, Failure, idle};

/// How long to sleep when nothing is due, at most (new work wakes us).
const IDLE_MAX: Duration = Duration::from_secs(5);

/// How often a job whose target left the configuration is looked at again.
const UNCONFIGURED_RECHECK: Duration = Duration::from_secs(3600);

pub async fn worker_loop(
    d: Arc<Daemon>,
    n: usize,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let svc = &d.svc;
    while !*shutdown.borrow() {
        let now = d.now();
        match svc.with_queue(move |q| q.claim_job(now)).await {
            Ok(Some(job)) => run_job(&d, job).await?,
            Ok(None) => {
                // Until the next job is due, to the second: with a paused
                // test clock, retries happen exactly when scheduled.
                let wait = match svc.with_queue(|q| q.next_wakeup()).await {
                    Ok(Some(at)) => d.clock.until(at).min(IDLE_MAX),
                    _ => IDLE_MAX,
                };
                idle(svc, &mut shutdown, wait.max(Duration::from_millis(50))).await;
            }
            Err(e) => {
                tracing::error!("worker {n}: queue error: {e:#}");
                idle(svc, &mut shutdown, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

async fn run_job(d: &Daemon, job: Job) -> anyhow::Result<()> {
    let Job {
        path,
        target,
        attempts,
        ..
    } = job;
    let svc = &d.svc;
    let sd = &svc.store_dir;
    let Some(index) = svc.targets.iter().position(|t| t.id == target) else {
        // A target removed from the configuration: keep the job visible
        // rather than delete it, and check rarely.
        let msg =
            format!("target {target} is no longer configured; add it back or remove its jobs");
        let (now, at) = (d.now(), d.clock.after(UNCONFIGURED_RECHECK));
        svc.with_queue(move |q| q.retry_job(&path, &target, &msg, at, now))
            .await?;
        return Ok(());
    };
    let (entry, present) = (&svc.targets[index], &d.present[index]);
    let root = match sd.parse_path(&format!("{}/{path}", sd.as_str())) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("invalid store path in queue: {e}");
            let now = d.now();
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now))
                .await?;
            return Ok(());
        }
    };
    let result = upload_closure(&svc.pool, present.as_ref(), &entry.config, &svc.keys, &root).await;
    // Whatever the outcome, what was seen present (or uploaded before a
    // failure) is worth remembering.
    present.flush().await;
    let now = d.now();
    match result {
        Ok(report) if report.missing.contains(&root) => {
            tracing::info!(
                "{}: no longer valid (garbage-collected?); skipping",
                sd.display(&root)
            );
            let msg =
                "path is no longer valid in the store (garbage-collected before upload)".to_owned();
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now))
                .await?;
        }
        Ok(report) if report.blocked.contains(&root) => {
            // A reference vanished between the build and the upload; the
            // cache must never get a narinfo whose references it lacks.
            let missing: Vec<String> = report.missing.iter().map(|p| sd.display(p)).collect();
            let msg = format!(
                "not uploaded: references are no longer valid in the store: {}",
                missing.join(" ")
            );
            tracing::warn!("{}: {msg}", sd.display(&root));
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now))
                .await?;
        }
        Ok(report) => {
            tracing::info!(
                "{} → {target}: {} uploaded ({} NAR bytes, {} compressed), {} already present",
                sd.display(&root),
                report.uploaded,
                report.nar_bytes,
                report.file_bytes,
                report.already_present
            );
            svc.with_queue(move |q| q.finish_job(&path, &target, now))
                .await?;
        }
        Err(e) => {
            let failure = if e.is_transient() {
                Failure::Transient
            } else {
                Failure::Permanent
            };
            // A server that sent Retry-After is not asked again earlier.
            let delay = d
                .retry
                .delay(attempts, failure, present.retry_after(), d.jitter.next());
            let at = d.clock.after(delay);
            let msg = failure_message(&e, failure, d.retry.cap);
            let shown = sd.display(&root);
            match failure {
                Failure::Transient => tracing::warn!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {}s): {msg}",
                    at - now
                ),
                Failure::Permanent => tracing::error!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {}s): {msg}",
                    at - now
                ),
            }
            svc.with_queue(move |q| q.retry_job(&path, &target, &msg, at, now))
                .await?;
        }
    }
    Ok(())
}

/// The job's `last_error`, as `nix-outbox status` shows it. A permanent
/// failure says so: the error names the cause (and usually the remedy),
/// and the reader must know that waiting will not help but that the job is
/// not lost either.
fn failure_message(e: &UploadError, failure: Failure, cap: Duration) -> String {
    match failure {
        Failure::Transient => e.to_string(),
        Failure::Permanent => format!(
            "needs fixing: {e} (this does not pass by itself; the job stays queued and is \
             retried, at pauses growing to {}, until it succeeds; `nix-outbox retry` \
             retries at once)",
            human(cap)
        ),
    }
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
