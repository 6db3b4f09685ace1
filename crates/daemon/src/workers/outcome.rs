//! What becomes of a job after an upload attempt: a pure function of the
//! attempt's result and the retry policy, so every case is tested without
//! a store, a target or a clock (like `retry.rs`). The worker then writes
//! the outcome once (`record.rs`).

use std::time::Duration;

use nix_outbox_core::{StoreDir, StorePath};
use nix_outbox_upload::{ClosureReport, UploadError};

use crate::{Failure, RetryPolicy};

/// How a job ends this attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded (with its extras), or found present.
    Done,
    /// Settled without an upload, for the reason given (`status` shows it).
    /// `notable`: worth a warning, not just a note (a reference vanished).
    Skip { reason: String, notable: bool },
    /// Pending again, `delay` from now, with the error `status` shows.
    Retry {
        delay: Duration,
        error: String,
        failure: Failure,
    },
}

/// What one attempt at a job produced.
pub struct Attempt<'a> {
    /// The job's path.
    pub root: &'a StorePath,
    /// Attempts made so far, this one included.
    pub attempts: u32,
    /// The closure upload's result.
    pub result: &'a Result<ClosureReport, UploadError>,
    /// A build log or realisation that failed in a way a retry can fix,
    /// after the closure went up.
    pub extras_failed: Option<(String, Failure)>,
    /// What the target asked for with `Retry-After`, if anything.
    pub retry_after: Option<Duration>,
    /// A uniformly random value for the jitter.
    pub random: u64,
}

/// Decides the outcome of `attempt` under `policy`; `sd` only spells paths
/// in messages.
pub fn decide(attempt: Attempt<'_>, policy: &RetryPolicy, sd: &StoreDir) -> Outcome {
    let root = attempt.root;
    let retry = |error: &dyn std::fmt::Display, failure: Failure| Outcome::Retry {
        delay: policy.delay(
            attempt.attempts,
            failure,
            attempt.retry_after,
            attempt.random,
        ),
        error: failure_message(error, failure, policy.cap),
        failure,
    };
    let report = match attempt.result {
        Err(e) => return retry(e, Failure::from_transient(e.is_transient())),
        Ok(report) => report,
    };
    if report.missing.contains(root) {
        return Outcome::Skip {
            reason: "path is no longer valid in the store (garbage-collected before upload)"
                .to_owned(),
            notable: false,
        };
    }
    if report.blocked.contains(root) {
        // A reference vanished between the build and the upload; the cache
        // must never get a narinfo whose references it lacks.
        let missing: Vec<String> = report.missing.iter().map(|p| sd.display(p)).collect();
        return Outcome::Skip {
            reason: format!(
                "not uploaded: references are no longer valid in the store: {}",
                missing.join(" ")
            ),
            notable: true,
        };
    }
    if let Some((_, skip)) = report.skipped.iter().find(|(p, _)| p == root) {
        // Left out on purpose (upstream serves it, or a filter).
        return Outcome::Skip {
            reason: format!("not uploaded: {skip}"),
            notable: false,
        };
    }
    match &attempt.extras_failed {
        // The outputs are in; the job stays pending until the extras are
        // too (its outputs are then found present at once).
        Some((msg, failure)) => retry(msg, *failure),
        None => Outcome::Done,
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

#[cfg(test)]
mod tests;
