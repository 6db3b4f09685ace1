//! `nix-outbox wait [--config FILE] [--timeout SECONDS]`: exits 0 once
//! everything accepted so far (including spooled requests) is uploaded or
//! settled as skipped (listed as left out, never as uploaded); non-zero on
//! timeout, listing what is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix_outbox::config::Config;
use nix_outbox_core::StorePath;
use nix_outbox_queue::{Job, Outstanding, Queue};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Give up after this many seconds (default: wait forever).
    #[arg(long)]
    timeout: Option<u64>,
}

const POLL: Duration = Duration::from_millis(200);

/// How many skipped jobs the final message lists (the count is complete).
pub const LIST_SKIPPED: usize = 20;

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let deadline = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t));
    // Spooled requests were accepted too: wait until the daemon has ingested
    // them, so they get request ids below the mark we then take.
    loop {
        let spooled = nix_outbox_hook::spool::list_spool(&cfg.spool_dir())
            .map(|v| v.len())
            .unwrap_or(0);
        if spooled == 0 {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "timed out: {spooled} spooled request(s) not yet ingested; is the daemon running?"
            );
        }
        std::thread::sleep(POLL);
    }
    if !cfg.queue_path().exists() {
        eprintln!(
            "nothing accepted yet (no queue at {})",
            cfg.queue_path().display()
        );
        return Ok(());
    }
    let upto = Queue::open(&cfg.queue_path())?.max_request_id()?;
    let left = wait_for(
        &cfg,
        upto,
        args.timeout
            .map(|t| deadline.map_or(t, |d| d.saturating_duration_since(Instant::now()).as_secs())),
    )?;
    eprintln!(
        "{}",
        done_message(&cfg, upto, left.skipped_jobs, &left.skipped)
    );
    Ok(())
}

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
