//! Upload workers: claim a due job, upload the closure of its path to its
//! target (references first, narinfo last, skipping what the target has),
//! publish its extras, decide the outcome ([`outcome`]) and write it once
//! ([`record`]). Nothing is ever dropped: a failed job goes back to pending
//! with its error and the retry policy's delay (see `retry.rs`), however
//! often and however it fails.

pub mod extras;
pub mod outcome;
pub mod record;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix_outbox_queue::Job;
use nix_outbox_upload::{Target as _, upload_closure_selected};
use tokio_util::sync::CancellationToken;

use crate::run::idle;
use crate::service::Daemon;
use outcome::{Attempt, Outcome, decide};

/// How long to sleep when nothing is due, at most (new work wakes us).
const IDLE_MAX: Duration = Duration::from_secs(5);

/// How often a job whose target left the configuration is looked at again.
const UNCONFIGURED_RECHECK: Duration = Duration::from_secs(3600);

/// Readies the queue for uploads, then runs the workers until the stop.
/// Uploads that a crash or stop left in flight go back to pending first,
/// and no worker claims a job before that is done. If the queue cannot
/// take that write (its disk is full), it is tried again until it can:
/// the hook socket, the spool and the expander run meanwhile, so the
/// daemon comes up and recovers when space returns instead of exiting.
pub async fn run_workers(d: Arc<Daemon>, stop: CancellationToken) -> anyhow::Result<()> {
    let what = "reset the uploads a crash or stop interrupted";
    let meanwhile = "no upload starts until this succeeds";
    let now = d.now();
    match record::until_written(&d, &stop, what, meanwhile, move |q| q.recover(now)).await {
        None => return Ok(()),
        Some(0) => {}
        Some(n) => {
            tracing::warn!("{n} upload(s) were interrupted by a crash or stop; retrying them")
        }
    }
    // A restart usually follows a fix (credentials, configuration): what
    // was waiting out a backoff is tried again at once. Only a shortcut:
    // if the queue refuses it, the jobs run when their pauses end.
    let now = d.now();
    match d.svc.with_queue(move |q| q.retry_now(None, &[], now)).await {
        Ok(0) => {}
        Ok(due) => tracing::info!("{due} waiting upload(s) are retried now, at start"),
        Err(e) => tracing::warn!(
            "cannot make the waiting uploads due now, at start: {e}; each is tried when its pause ends"
        ),
    }
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..d.svc.workers {
        workers.spawn(worker_loop(d.clone(), n, stop.clone()));
    }
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("worker failed: {e:#}"),
            Err(e) if e.is_panic() => tracing::error!("a worker panicked: {e}"),
            Err(_) => {}
        }
    }
    Ok(())
}

/// One worker: claims due jobs one at a time and runs each to its
/// recorded outcome. A queue error pauses it; nothing ends it but the stop.
pub(crate) async fn worker_loop(
    d: Arc<Daemon>,
    n: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let svc = &d.svc;
    while !stop.is_cancelled() {
        let woken = svc.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = d.now();
        match svc.with_queue(move |q| q.claim_job(now)).await {
            Ok(Some(job)) => run_job(&d, job, &stop).await,
            Ok(None) => {
                // Until the next job is due, to the second: with a paused
                // test clock, retries happen exactly when scheduled.
                let wait = match svc.with_queue(|q| q.next_wakeup()).await {
                    Ok(Some(at)) => d.clock.until(at).min(IDLE_MAX),
                    _ => IDLE_MAX,
                };
                idle(woken, &stop, wait.max(Duration::from_millis(50))).await;
            }
            Err(e) => {
                tracing::error!("worker {n}: queue error: {e}");
                idle(woken, &stop, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

async fn run_job(d: &Daemon, job: Job, stop: &CancellationToken) {
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
        let error =
            format!("target {target} is no longer configured; add it back or remove its jobs");
        let (now, delay) = (d.now(), UNCONFIGURED_RECHECK);
        let failure = crate::Failure::Permanent;
        let retry = Outcome::Retry {
            delay,
            error,
            failure,
        };
        record::outcome(d, stop, path, target, retry, now).await;
        return;
    };
    let (entry, present) = (&svc.targets[index], &d.present[index]);
    let root = match sd.parse_path(&format!("{}/{path}", sd.as_str())) {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("invalid store path in queue: {e}");
            let skip = Outcome::Skip {
                reason,
                notable: true,
            };
            record::outcome(d, stop, path, target, skip, d.now()).await;
            return;
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
    let skipped = matches!(&result, Ok(r) if r.missing.contains(&root)
        || r.blocked.contains(&root)
        || r.skipped.iter().any(|(p, _)| p == &root));
    // After the outputs' narinfos, so a log never holds them back; a log
    // that fails keeps the job pending (the outputs are then found present
    // at once) until the log is in too. Realisations likewise, each after
    // its own output's narinfo.
    let extras_failed = match &result {
        Ok(_) if !skipped => match extras::build_log(d, entry, request_id).await {
            Some(failed) => Some(failed),
            None => extras::realisations(d, entry, request_id, &root).await,
        },
        _ => None,
    };
    // A server that sent Retry-After is not asked again earlier.
    let (retry_after, random) = match (&result, &extras_failed) {
        (Err(_), _) => (present.retry_after(), d.jitter.next()),
        (Ok(_), Some(_)) => (entry.target.retry_after(), d.jitter.next()),
        (Ok(_), None) => (None, 0),
    };
    let attempt = Attempt {
        root: &root,
        attempts,
        result: &result,
        extras_failed,
        retry_after,
        random,
    };
    // Counted before the outcome is written, so a job whose log failed is
    // a failure there, not done twice.
    let extras_failure = attempt.extras_failed.as_ref().map(|(_, f)| *f);
    d.metrics
        .job_finished(&target, &result, skipped, extras_failure, started.elapsed());
    // Whatever the outcome, what was seen present (or uploaded before a
    // failure) is worth remembering.
    present.flush().await;
    d.selection.flush().await;
    let now = d.now();
    if let Ok(report) = &result {
        record::skips(d, &target, report, now).await;
        if !skipped {
            tracing::info!(
                "{} → {target}: {} uploaded ({} NAR bytes, {} compressed), {} already present",
                sd.display(&root),
                report.uploaded,
                report.nar_bytes,
                report.file_bytes,
                report.already_present
            );
        }
    }
    let outcome = decide(attempt, &d.retry, sd);
    let retry_in = match &outcome {
        Outcome::Retry { delay, .. } => d.clock.after(*delay) - now,
        _ => 0,
    };
    log_outcome(
        &outcome,
        &result,
        &sd.display(&root),
        &target,
        (attempts, retry_in),
    );
    record::outcome(d, stop, path, target, outcome, now).await;
}

/// Says what became of a job: quietly when all went well.
fn log_outcome<T>(
    outcome: &Outcome,
    result: &Result<T, nix_outbox_upload::UploadError>,
    shown: &str,
    target: &str,
    (attempts, retry_in): (u32, i64),
) {
    match outcome {
        Outcome::Done => {}
        Outcome::Skip {
            reason,
            notable: false,
        } => tracing::info!("{shown}: {reason}"),
        Outcome::Skip {
            reason,
            notable: true,
        } => tracing::warn!("{shown}: {reason}"),
        // The closure went up, an extra did not.
        Outcome::Retry { error, .. } if result.is_ok() => tracing::warn!("{shown}: {error}"),
        Outcome::Retry { error, failure, .. } => {
            let secs = retry_in;
            match failure {
                crate::Failure::Transient => tracing::warn!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {secs}s): {error}"
                ),
                crate::Failure::Permanent => tracing::error!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {secs}s): {error}"
                ),
            }
        }
    }
}
