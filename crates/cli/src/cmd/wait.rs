//! `nix-outbox wait [--config FILE] [--timeout SECONDS]`: exits 0 once
//! everything accepted so far (including spooled requests) is uploaded or
//! settled as skipped (listed as left out, never as uploaded); non-zero on
//! timeout, listing what is left.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use nix_outbox_daemon::Config;
use nix_outbox_daemon::wait::{done_message, wait_for};
use nix_outbox_queue::Queue;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Give up after this many seconds (default: wait forever).
    #[arg(long)]
    timeout: Option<u64>,
}

/// How often the spool is looked at again.
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
    // A spool file set aside as holding no request may be a hook's request
    // damaged on disk: its paths are not queued, so "everything is
    // uploaded" would be a lie.
    let rejected = nix_outbox_daemon::spool::rejected_files(&cfg.spool_dir())?;
    if !rejected.is_empty() {
        let listed: Vec<String> = rejected
            .iter()
            .map(|f| format!("  {}", f.display()))
            .collect();
        bail!(
            "{} spool file(s) were set aside because they hold no request, so their paths (if \
             any) are not queued; repair or remove them, then `nix-outbox retry \
             --rejected-spool`:\n{}",
            rejected.len(),
            listed.join("\n")
        );
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
