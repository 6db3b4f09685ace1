//! Waiting until what was accepted is uploaded (or settled as skipped),
//! by watching the queue: what `nix-outbox wait` and `push --wait` do.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix_outbox_core::StorePath;
use nix_outbox_queue::{Job, Outstanding, Queue};

use crate::Config;

/// How often the queue is looked at.
const POLL: Duration = Duration::from_millis(200);

/// How many skipped jobs the final message lists (the count is complete).
pub const LIST_SKIPPED: usize = 20;

/// Waits until every request up to `upto` is uploaded or skipped, and
/// returns what the last look saw (nothing outstanding; the skipped jobs,
/// which the caller must report as such).
pub fn wait_for(cfg: &Config, upto: i64, timeout: Option<u64>) -> anyhow::Result<Outstanding> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let q = Queue::open(&cfg.queue_path())?;
    loop {
        let left = q.outstanding(upto, LIST_SKIPPED)?;
        if left.is_empty() {
            return Ok(left);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let mut msg = format!(
                "timed out; still outstanding: {} unresolved request(s), {} pending job(s) ({} failing), {} in flight",
                left.new_requests, left.pending_jobs, left.failing_jobs, left.in_flight_jobs
            );
            for j in &left.jobs {
                msg += &format!("\n  {} → {} [{}]", j.path, j.target, j.state.as_str());
                if let Some(e) = &j.last_error {
                    msg += &format!(": {e}");
                }
            }
            for r in &left.requests {
                msg += &format!(
                    "\n  request {}: {}",
                    r.id,
                    r.last_error.as_deref().unwrap_or("not yet resolved")
                );
            }
            bail!(msg);
        }
        std::thread::sleep(POLL);
    }
}

/// The verdict once nothing is outstanding. Skipped jobs (filtered out,
/// served upstream, gone from the store) settle a wait too, but must never
/// read as uploaded: they are counted and listed with their reason.
pub fn done_message(cfg: &Config, upto: i64, skipped_jobs: u64, skipped: &[Job]) -> String {
    let mut msg = format!("everything accepted up to request {upto} is uploaded");
    if skipped_jobs == 0 {
        return msg;
    }
    msg += &format!(", except {skipped_jobs} path(s) left out:");
    for j in skipped {
        let shown = StorePath::from_base_name(&j.path)
            .map_or_else(|_| j.path.clone(), |p| cfg.store_dir.display(&p));
        let why = j.last_error.as_deref().unwrap_or("skipped");
        msg += &format!("\n  {shown} → {}: {why}", j.target);
    }
    let more = skipped_jobs.saturating_sub(skipped.len() as u64);
    if more > 0 {
        msg += &format!("\n  … and {more} more (see nix-outbox status)");
    }
    msg
}
