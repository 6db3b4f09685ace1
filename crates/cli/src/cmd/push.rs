//! `nix-outbox push [--config FILE] [--wait] PATH...`: enqueue paths (and,
//! through the upload, their closures) by hand.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix_outbox_core::StorePath;
use nix_outbox_daemon::Config;
use nix_outbox_hook::client;
use nix_outbox_hook::protocol::{HookRequest, MAX_OUT_PATHS};
use nix_outbox_queue::{Job, JobState, Queue, Source};

use nix_outbox_daemon::wait;

mod progress;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Wait until these paths (and everything accepted before them) are uploaded.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (default: wait forever).
    #[arg(long)]
    timeout: Option<u64>,
    /// Store paths to upload, e.g. ./result or /nix/store/…-hello-2.12.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let sd = &cfg.store_dir;
    let mut paths: Vec<StorePath> = Vec::new();
    let mut bad = Vec::new();
    for p in &args.paths {
        // `./result` symlinks are what users have at hand: resolve them, but
        // only accept what lands directly in the store.
        let resolved = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        match sd.parse_os_path(&resolved) {
            Ok(sp) if !paths.contains(&sp) => paths.push(sp),
            Ok(_) => {}
            Err(e) => bad.push(format!("  {}: {e}", p.display())),
        }
    }
    if !bad.is_empty() {
        bail!("not store paths (nothing was queued):\n{}", bad.join("\n"));
    }
    let mut last_id = 0;
    let count = paths.len();
    let pushed: Vec<String> = paths.iter().map(|p| p.as_str().to_owned()).collect();
    for req in batches(paths, sd) {
        let timeout = Duration::from_millis(cfg.hook_timeout_ms.max(5000));
        last_id = match client::send(&cfg.socket, &req, sd, timeout) {
            Ok(id) => id as i64,
            Err(e) => {
                // No daemon: commit straight to the queue; the daemon picks it
                // up when it starts. Still durable, still nothing lost.
                let outs: Vec<String> = req.out_paths.iter().map(|p| sd.display(p)).collect();
                let direct = || -> anyhow::Result<i64> {
                    cfg.ensure_state_dir()?;
                    let mut q = Queue::open(&cfg.queue_path())?;
                    Ok(q.add_request(Source::Push, None, &outs, nix_outbox_daemon::now())?)
                };
                // Both ways failed: say why for each, the socket's first
                // (for a non-root user, "permission denied" there is the
                // answer: only root, or the socket-group, may enqueue).
                let id = direct().with_context(|| {
                    format!(
                        "nothing was queued: the daemon is not reachable at {} ({e}), and \
                         queueing directly in {} failed",
                        cfg.socket.display(),
                        cfg.queue_path().display()
                    )
                })?;
                eprintln!(
                    "nix-outbox: daemon not reachable at {} ({e}); queued directly in {}",
                    cfg.socket.display(),
                    cfg.queue_path().display()
                );
                id
            }
        };
    }
    eprintln!("queued {count} path(s) (request {last_id})");
    if args.wait {
        let deadline = args
            .timeout
            .map(|t| Instant::now() + Duration::from_secs(t));
        let terminal = std::io::stderr().is_terminal();
        progress::follow(&cfg, last_id, deadline, terminal)?;
        // Outstanding work is done (or the deadline passed): `wait` with no
        // time left checks once and says which, with its usual report.
        wait::wait_for(&cfg, last_id, args.timeout.map(|_| 0))?;
        let skipped = skipped_jobs(&cfg, &pushed)?;
        let listed = &skipped[..skipped.len().min(wait::LIST_SKIPPED)];
        eprintln!(
            "{}",
            wait::done_message(&cfg, last_id, skipped.len() as u64, listed)
        );
    }
    Ok(())
}

/// The jobs of the pushed paths (basenames) settled as `skipped`: what
/// this push asked for and did not get. Other requests' skips are `wait`'s
/// business.
fn skipped_jobs(cfg: &Config, pushed: &[String]) -> anyhow::Result<Vec<Job>> {
    let q = Queue::open(&cfg.queue_path())?;
    let mut out = Vec::new();
    for path in pushed {
        for t in &cfg.targets {
            if let Some(job) = q.job(path, &t.id())?
                && job.state == JobState::Skipped
            {
                out.push(job);
            }
        }
    }
    Ok(out)
}

/// Splits `paths` into requests that each fit one hook frame (at most
/// [`MAX_OUT_PATHS`] paths and the frame's byte limit).
fn batches(paths: Vec<StorePath>, sd: &nix_outbox_core::StoreDir) -> Vec<HookRequest> {
    let mut out = Vec::new();
    let mut cur = HookRequest::default();
    for p in paths {
        cur.out_paths.push(p);
        if cur.out_paths.len() > MAX_OUT_PATHS || !cur.fits(sd) {
            let last = cur.out_paths.pop().expect("just pushed");
            out.push(std::mem::take(&mut cur));
            cur.out_paths.push(last);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix_outbox_core::StoreDir;

    #[test]
    fn batches_fit_the_frame() {
        let sd = StoreDir::default();
        let paths: Vec<StorePath> = (0..3000)
            .map(|i| {
                StorePath::from_base_name(&format!("{}-some-package-name-{i:05}", "a".repeat(32)))
                    .unwrap()
            })
            .collect();
        let b = batches(paths.clone(), &sd);
        assert!(b.len() >= 3);
        assert!(
            b.iter()
                .all(|r| r.fits(&sd) && r.out_paths.len() <= MAX_OUT_PATHS)
        );
        let flat: Vec<StorePath> = b.into_iter().flat_map(|r| r.out_paths).collect();
        assert_eq!(flat, paths);
    }
}
