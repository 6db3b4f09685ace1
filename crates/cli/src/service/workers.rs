//! Upload workers: claim a due job, upload the closure of its path to its
//! target (references first, narinfo last, skipping what the target has),
//! then record the outcome. Nothing is ever dropped: a failed job goes back
//! to pending with its error and the retry policy's delay (see `retry.rs`),
//! however often and however it fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix_outbox_queue::{Job, SkippedPath};
use nix_outbox_upload::{
    BuildLogOutcome, ClosureReport, Target as _, upload_build_log, upload_closure_selected,
};
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
        request_id,
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
    // Registered as in flight (with byte counts) for `status` until dropped.
    let (job, started) = (
        d.metrics.in_flight.start(&target, &path, d.now()),
        Instant::now(),
    );
    let tracked = job.track(present.as_ref());
    let result = upload_closure_selected(
        &svc.pool,
        &tracked,
        &entry.config,
        &svc.keys,
        &root,
        &d.selection,
    )
    .await;
    drop(job);
    let skipped = matches!(&result, Ok(r) if r.missing.contains(&root) || r.blocked.contains(&root)
        || r.skipped.iter().any(|(p, _)| p == &root));
    d.metrics
        .job_finished(&target, &result, skipped, started.elapsed());
    // Whatever the outcome, what was seen present (or uploaded before a
    // failure) is worth remembering.
    present.flush().await;
    d.selection.flush().await;
    let now = d.now();
    if let Ok(report) = &result {
        record_skips(d, &target, report, now).await;
    }
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
        Ok(report) if report.skipped.iter().any(|(p, _)| p == &root) => {
            // Left out on purpose (upstream serves it, or a filter): the
            // job is settled, with the reason for `status`.
            let skip = report
                .skipped
                .iter()
                .find(|(p, _)| p == &root)
                .map(|(_, s)| s.to_string())
                .unwrap_or_default();
            let msg = format!("not uploaded: {skip}");
            tracing::info!("{}: {msg}", sd.display(&root));
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
            // After the outputs' narinfos, so a log never holds them back;
            // a log that fails keeps the job pending (the outputs are then
            // found present at once) until the log is in too.
            if let Some((msg, failure)) = upload_log(d, entry, request_id).await {
                let delay = d.retry.delay(
                    attempts,
                    failure,
                    entry.target.retry_after(),
                    d.jitter.next(),
                );
                let at = d.clock.after(delay);
                let msg = failure_message(&msg, failure, d.retry.cap);
                tracing::warn!("{}: {msg}", sd.display(&root));
                svc.with_queue(move |q| q.retry_job(&path, &target, &msg, at, now))
                    .await?;
                return Ok(());
            }
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

/// Publishes the build log of the derivation the job's request named
/// (hook requests do), if `upload-build-logs` is on. Returns the error and
/// its pace when it failed in a way a retry can fix; a missing log is
/// normal (substituted, `keep-build-log = false`), and a log we refuse to
/// read (corrupt, a symlink) is skipped with a warning.
async fn upload_log(
    d: &Daemon,
    entry: &super::TargetEntry,
    request_id: i64,
) -> Option<(String, Failure)> {
    let svc = &d.svc;
    if !svc.extras.upload_build_logs {
        return None;
    }
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => {
            return Some((
                format!("build log: reading the request: {e:#}"),
                Failure::Transient,
            ));
        }
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    match upload_build_log(entry.target.as_ref(), &svc.extras.build_log_dir, &drv).await {
        Ok(BuildLogOutcome::Uploaded { bytes }) => {
            tracing::info!("build log of {shown} → {}: {bytes} bytes", entry.id)
        }
        Ok(BuildLogOutcome::AlreadyPresent) => {}
        Ok(BuildLogOutcome::NoLog) => tracing::debug!("no build log kept for {shown}"),
        Err(e) if e.is_retriable() => {
            let failure = if e.is_transient() {
                Failure::Transient
            } else {
                Failure::Permanent
            };
            return Some((
                format!("outputs uploaded, but not the build log yet: {e}"),
                failure,
            ));
        }
        Err(e) => tracing::warn!("not uploading the build log of {shown}: {e}"),
    }
    None
}

/// Records the closure paths left out on purpose, for `status`. Only
/// bookkeeping: a failure is logged, never fails the job.
async fn record_skips(d: &Daemon, target: &str, report: &ClosureReport, now: i64) {
    if report.skipped.is_empty() {
        return;
    }
    let skips: Vec<SkippedPath> = report
        .skipped
        .iter()
        .map(|(p, s)| SkippedPath {
            path: p.as_str().to_owned(),
            reason: s.reason.as_str().to_owned(),
            detail: s.detail.clone(),
        })
        .collect();
    tracing::debug!("{} path(s) left out of uploads to {target}", skips.len());
    let id = target.to_owned();
    if let Err(e) = d
        .svc
        .with_queue(move |q| q.mark_skipped(&id, &skips, now))
        .await
    {
        tracing::warn!("cannot record skipped paths for {target} in the queue: {e:#}");
    }
}

/// The job's `last_error`, as `nix-outbox status` shows it. A permanent
/// failure says so: the error names the cause (and usually the remedy),
/// and the reader must know that waiting will not help but that the job is
/// not lost either.
fn failure_message(e: &dyn std::fmt::Display, failure: Failure, cap: Duration) -> String {
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
