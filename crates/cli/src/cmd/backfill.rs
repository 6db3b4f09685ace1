//! `nix-outbox backfill [--config FILE] (--since DATE | --all)`: queues
//! the paths Nix registered since DATE (or ever), under the configured
//! `nix-db-paths` rule, so that what was built before nix-outbox ran (or
//! while nothing watched) reaches the caches too. `wait` then covers them.
//!
//! It reads Nix's database read-only and adds requests to our queue
//! directly (source `nix-db`); the `nix-db` source's cursor is not moved,
//! and the daemon's expansion deduplicates paths already queued.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use nix_outbox_daemon::Config;
use nix_outbox_daemon::nix_db::requests_for;
use nix_outbox_queue::{Queue, Source};
use nix_outbox_store::nix_db::{NixDb, state_dir_from_env};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["since", "all"])))]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Paths registered at or after this time: a date (2026-12-01), a UTC
    /// time (2026-12-01T08:00:00Z) or unix seconds (@1796000000).
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Every path Nix ever registered (as `nix-db-paths` picks them).
    #[arg(long)]
    all: bool,
}

/// Rows read, and requests committed, at once.
const BATCH: usize = 2000;

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let since = match &args.since {
        Some(s) => parse_since(s)?,
        None => 0,
    };
    let state = state_dir_from_env();
    let db = NixDb::open(&state)?;
    // As the daemon does at its start: the queue lives there.
    cfg.ensure_state_dir()?;
    let mut q = Queue::open(&cfg.queue_path())?;
    let (mut cursor, mut rows_seen, mut paths, mut requests) = (0, 0u64, 0usize, 0usize);
    loop {
        let rows = db.rows_since(since, cursor, BATCH)?;
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        rows_seen += rows.len() as u64;
        let batch = requests_for(&rows, cfg.nix_db_paths, &cfg.store_dir);
        let now = unix_now();
        for res in q.add_requests(Source::NixDb, &batch, now)? {
            if let Err(e) = res {
                eprintln!("nix-outbox backfill: not queued: {e}");
            }
        }
        paths += batch.iter().map(|(_, outs)| outs.len()).sum::<usize>();
        requests += batch.len();
        cursor = last;
    }
    println!(
        "queued {paths} path(s) in {requests} request(s), of {rows_seen} registered {} in {} \
         (nix-db-paths = {:?}); `nix-outbox wait` covers them",
        match &args.since {
            Some(s) => format!("since {s}"),
            None => "ever".to_owned(),
        },
        db.path().display(),
        cfg.nix_db_paths
    );
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-01`, `2026-12-01T08:00:00Z` (or with a space), `@1796000000`.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        return secs
            .parse::<i64>()
            .with_context(|| format!("--since {s:?}: unix seconds after @ must be a number"));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let Ok(t) = humantime::parse_rfc3339_weak(full.trim_end_matches('Z')) else {
        bail!(
            "--since {s:?} is not a date: write 2026-12-01, 2026-12-01T08:00:00Z (UTC) or \
             @UNIX_SECONDS"
        );
    };
    Ok(t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_dates_times_and_unix_seconds() {
        assert_eq!(parse_since("1970-01-02").unwrap(), 86_400);
        assert_eq!(parse_since("1970-01-01T01:00:00Z").unwrap(), 3600);
        assert_eq!(parse_since("1970-01-01 00:01:00").unwrap(), 60);
        assert_eq!(parse_since("@1796000000").unwrap(), 1_796_000_000);
        for bad in ["yesterday", "2026-13-01", "@soon", ""] {
            let e = parse_since(bad).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad}: {e}");
        }
    }
}
