//! `nix-outbox wait [--config FILE] [--timeout SECONDS]`: exits 0 once
//! everything accepted so far (including spooled requests) is uploaded;
//! non-zero on timeout, listing what is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix_outbox::config::Config;
use nix_outbox_queue::Queue;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Give up after this many seconds (default: wait forever).
    #[arg(long)]
    timeout: Option<u64>,
}

const POLL: Duration = Duration::from_millis(200);

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
    wait_for(
        &cfg,
        upto,
        args.timeout
            .map(|t| deadline.map_or(t, |d| d.saturating_duration_since(Instant::now()).as_secs())),
    )
}

/// Waits until every request up to `upto` is uploaded (or skipped).
pub fn wait_for(cfg: &Config, upto: i64, timeout: Option<u64>) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
    let q = Queue::open(&cfg.queue_path())?;
    loop {
        let left = q.outstanding(upto, 20)?;
        if left.is_empty() {
            eprintln!("everything accepted up to request {upto} is uploaded");
            return Ok(());
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
