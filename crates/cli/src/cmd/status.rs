//! `nix-outbox status [--config FILE] [--json]`: the queue per target.

use std::path::PathBuf;

use anyhow::Context as _;
use nix_outbox::config::Config;
use nix_outbox_queue::{Queue, Status};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let status = read_status(&cfg)?;
    let spooled = nix_outbox_hook::spool::list_spool(&cfg.spool_dir())
        .map(|v| v.len())
        .unwrap_or(0);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&status, spooled))?
        );
    } else {
        print!("{}", render(&status, spooled));
    }
    Ok(())
}

pub fn read_status(cfg: &Config) -> anyhow::Result<Status> {
    let path = cfg.queue_path();
    if !path.exists() {
        anyhow::bail!(
            "no queue at {} yet: start the daemon (nix-outbox daemon) or check --config",
            path.display()
        );
    }
    let q = Queue::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(q.status(5)?)
}

fn to_json(s: &Status, spooled: usize) -> serde_json::Value {
    json!({
        "spooled_requests": spooled,
        "new_requests": s.new_requests,
        "failing_request": s.failing_request.as_ref().map(|r| json!({"id": r.id, "last_error": r.last_error})),
        "targets": s.targets.iter().map(|t| json!({
            "target": t.target,
            "pending": t.never_tried,
            "failing": t.failing,
            "in_flight": t.in_flight,
            "done": t.done,
            "skipped": t.skipped,
            "recent_failures": t.recent_failures.iter().map(|j| json!({
                "path": j.path, "attempts": j.attempts, "last_error": j.last_error, "next_attempt_at": j.next_attempt_at,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn render(s: &Status, spooled: usize) -> String {
    let mut out = String::new();
    if spooled > 0 {
        out += &format!("spool: {spooled} request(s) waiting for the daemon to ingest them\n");
    }
    if s.new_requests > 0 {
        out += &format!("requests: {} not yet resolved into jobs\n", s.new_requests);
    }
    if let Some(r) = &s.failing_request {
        out += &format!(
            "  request {}: {}\n",
            r.id,
            r.last_error.as_deref().unwrap_or("")
        );
    }
    if s.targets.is_empty() {
        out += "no uploads queued yet\n";
    }
    for t in &s.targets {
        out += &format!(
            "{}\n  pending {}  in flight {}  failing {}  done {}  skipped {}\n",
            t.target, t.never_tried, t.in_flight, t.failing, t.done, t.skipped
        );
        for j in &t.recent_failures {
            let wait = j.next_attempt_at - nix_outbox::service::now();
            out += &format!(
                "  ✗ {} (attempt {}, next try in {}s): {}\n",
                j.path,
                j.attempts,
                wait.max(0),
                j.last_error.as_deref().unwrap_or("")
            );
        }
    }
    out
}
