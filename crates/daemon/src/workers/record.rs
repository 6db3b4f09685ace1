//! Writing outcomes to the queue. The upload itself is over by then; a
//! queue write that fails (the state directory's disk is full, another
//! process holds the database) must neither lose the outcome nor end the
//! worker, which would leave the job in flight and the daemon uploading
//! nothing until a restart. So every write here is retried until the queue
//! takes it ([`until_written`]).

use std::time::Duration;

use nix_outbox_queue::{Queue, QueueError, SkippedPath};
use nix_outbox_upload::ClosureReport;
use tokio_util::sync::CancellationToken;

use super::outcome::Outcome;
use crate::service::Daemon;

/// Pauses between attempts at a queue write the queue refused.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Records `outcome` for the job (`path`, `target`), which was claimed at
/// some point before `now`. A stop ends the retries: the job then stays in
/// flight and is retried after the restart, as after a crash.
pub async fn outcome(
    d: &Daemon,
    stop: &CancellationToken,
    path: String,
    target: String,
    outcome: Outcome,
    now: i64,
) {
    let what = "record an upload's outcome";
    let meanwhile = "the job shows as in flight until then";
    match outcome {
        Outcome::Done => {
            until_written(d, stop, what, meanwhile, move |q| {
                q.finish_job(&path, &target, now)
            })
            .await
        }
        Outcome::Skip { reason, .. } => {
            until_written(d, stop, what, meanwhile, move |q| {
                q.skip_job(&path, &target, &reason, now)
            })
            .await
        }
        Outcome::Retry { delay, error, .. } => {
            let at = d.clock.after(delay);
            until_written(d, stop, what, meanwhile, move |q| {
                q.retry_job(&path, &target, &error, at, now)
            })
            .await
        }
    };
}

/// Runs a queue write until the queue takes it, pausing 1 s, then twice as
/// long each time up to 30 s, and logging each refusal with `what` was
/// tried and what holds `meanwhile`. None if a stop came first, or if the
/// queue said the job is no longer in flight or gone: an earlier attempt
/// did commit (SQLite can report an error at COMMIT after the fact), or
/// the job was reset meanwhile, and repeating could never succeed.
pub async fn until_written<T: Send + 'static>(
    d: &Daemon,
    stop: &CancellationToken,
    what: &str,
    meanwhile: &str,
    write: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Clone + Send + 'static,
) -> Option<T> {
    let mut pause = FIRST_PAUSE;
    loop {
        let e = match d.svc.with_queue(write.clone()).await {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        if let gone @ (QueueError::JobNotInFlight { .. } | QueueError::NoSuchJob { .. }) = &e {
            tracing::warn!("not trying again to {what}: {gone}");
            return None;
        }
        d.metrics.queue_write_refused();
        tracing::error!(
            "cannot {what} in the queue: {e}; {meanwhile}; trying again in {}s",
            pause.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => {
                tracing::warn!("stopping before managing to {what}; it is tried again at the next start");
                return None;
            }
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Records the closure paths left out on purpose, for `status`. Only
/// bookkeeping: a failure is logged, never fails the job.
pub async fn skips(d: &Daemon, target: &str, report: &ClosureReport, now: i64) {
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
        tracing::warn!("cannot record skipped paths for {target} in the queue: {e}");
    }
}
