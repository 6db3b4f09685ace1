//! `nix-outbox retry [--config FILE] [--target URL] [PATH…]`: after fixing
//! what uploads failed on (credentials, a bucket, permissions), makes the
//! waiting jobs due now instead of after their backoff. The running daemon
//! picks them up within seconds; a daemon start does the same for all.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use nix_outbox_daemon::Config;
use nix_outbox_queue::Queue;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only jobs for this target (as configured, e.g. s3://bucket?endpoint=…).
    #[arg(long)]
    target: Option<String>,
    /// Only these store paths (default: every waiting job).
    paths: Vec<String>,
    /// Instead: put the spool files the daemon set aside (as holding no
    /// request) back into the spool, to be read again (after repairing them).
    #[arg(long, conflicts_with_all = ["target", "paths"])]
    rejected_spool: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    if args.rejected_spool {
        let dir = cfg.spool_dir();
        let n = nix_outbox_daemon::spool::requeue_rejected(&dir)
            .with_context(|| format!("moving set-aside files back into {}", dir.display()))?;
        eprintln!(
            "{n} set-aside spool file(s) are back in {}; the daemon reads them within seconds",
            dir.display()
        );
        return Ok(());
    }
    let target = match &args.target {
        None => None,
        Some(t) => {
            // Jobs are keyed by the target's id, which leaves out encoding
            // parameters; accept the URL as written in the configuration.
            let id = nix_outbox_upload::TargetConfig::parse(t)
                .with_context(|| format!("--target {t}"))?
                .id();
            if !cfg.targets.iter().any(|c| c.id() == id) {
                let known: Vec<String> = cfg.targets.iter().map(|c| c.id()).collect();
                bail!(
                    "--target {t} is not a configured target; configured: {}",
                    known.join(", ")
                );
            }
            Some(id)
        }
    };
    let sd = &cfg.store_dir;
    let mut paths = Vec::new();
    for p in &args.paths {
        let path = sd
            .parse_path(p)
            .with_context(|| format!("{p} is not a store path (nothing was changed)"))?;
        paths.push(path.to_string());
    }
    let queue_path = cfg.queue_path();
    if !queue_path.exists() {
        bail!(
            "no queue at {} yet: nothing to retry (check --config)",
            queue_path.display()
        );
    }
    let mut q =
        Queue::open(&queue_path).with_context(|| format!("opening {}", queue_path.display()))?;
    let n = q.retry_now(target.as_deref(), &paths, nix_outbox_daemon::now())?;
    eprintln!("{n} waiting job(s) are due now; the daemon retries them within seconds");
    Ok(())
}
