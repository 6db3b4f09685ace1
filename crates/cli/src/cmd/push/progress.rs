//! `push --wait`'s progress: uploads done of the total and bytes uploaded,
//! as a bar on a terminal and as a plain line per change otherwise (logs
//! and CI output stay readable).
//!
//! The counts come from the queue (everything requests up to ours need,
//! as `wait` counts them); bytes from the daemon's progress file, when
//! it is running: what its targets received since the wait began.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nix_outbox_daemon::Config;
use nix_outbox_daemon::metrics::progress::{self, ProgressFile};
use nix_outbox_queue::Queue;

use crate::format::human_bytes;

const POLL: Duration = Duration::from_millis(200);

/// What one poll saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    /// Requests not yet expanded: their uploads are not counted yet.
    resolving: u64,
    done: u64,
    total: u64,
    in_flight: u64,
    failing: u64,
    /// Bytes the daemon's targets received since the wait began, in-flight
    /// bytes included; `None` without a progress file.
    bytes: Option<u64>,
    /// Of the closures uploading now (their paths go up concurrently):
    /// paths published and paths to upload, once known.
    paths: Option<(u64, u64)>,
}

impl Seen {
    fn line(&self) -> String {
        let mut s = if self.resolving > 0 && self.total == 0 {
            format!("resolving {} request(s)", self.resolving)
        } else {
            format!("{}/{} uploads done", self.done, self.total)
        };
        if self.in_flight > 0 {
            s += &format!(", {} in flight", self.in_flight);
        }
        if self.failing > 0 {
            s += &format!(", {} failing (see nix-outbox status)", self.failing);
        }
        if let Some((published, to_upload)) = self.paths
            && to_upload > 0
        {
            s += &format!(", {published}/{to_upload} paths of the closures in flight published");
        }
        if let Some(b) = self.bytes {
            s += &format!(", {} uploaded", human_bytes(b));
        }
        s
    }
}

/// Polls until everything up to request `upto` is uploaded or skipped, or
/// `deadline` passes; the caller reports which.
pub fn follow(
    cfg: &Config,
    upto: i64,
    deadline: Option<Instant>,
    terminal: bool,
) -> anyhow::Result<()> {
    let q = Queue::open(&cfg.queue_path())?;
    let read = || progress::read(&cfg.progress_path());
    let base = read().map(|p| bytes_of(&p));
    let bar = terminal.then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    // The total is the most ever outstanding: expansion adds uploads once
    // (when a request is resolved), uploads only ever remove them.
    let mut peak = 0;
    let mut last = None;
    loop {
        let left = q.outstanding(upto, 0)?;
        let remaining = left.pending_jobs + left.in_flight_jobs;
        peak = peak.max(remaining);
        let now = read();
        let seen = Seen {
            resolving: left.new_requests,
            done: peak - remaining,
            total: peak,
            in_flight: left.in_flight_jobs,
            failing: left.failing_jobs,
            bytes: now
                .as_ref()
                .map(|p| bytes_of(p).saturating_sub(base.unwrap_or(0))),
            paths: now.as_ref().map(paths_of),
        };
        if last.as_ref() != Some(&seen) {
            match &bar {
                Some(bar) => {
                    bar.set_length(seen.total);
                    bar.set_position(seen.done);
                    bar.set_message(seen.line());
                }
                None => eprintln!("{}", seen.line()),
            }
            last = Some(seen);
        }
        if left.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(POLL);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(())
}

/// Compressed bytes the daemon's targets received since it started, plus
/// what the uploads in flight wrote so far.
fn bytes_of(p: &ProgressFile) -> u64 {
    p.totals.iter().map(|t| t.file_bytes).sum::<u64>()
        + p.in_flight.iter().map(|j| j.written).sum::<u64>()
}

/// Paths published and paths to upload, summed over the uploads in flight
/// (a job whose closure is not yet checked counts neither).
fn paths_of(p: &ProgressFile) -> (u64, u64) {
    p.in_flight.iter().fold((0, 0), |(done, all), j| {
        (done + j.published, all + j.to_upload.unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let s = Seen {
            resolving: 1,
            ..Default::default()
        };
        assert_eq!(s.line(), "resolving 1 request(s)");
        let s = Seen {
            done: 3,
            total: 10,
            in_flight: 2,
            failing: 1,
            bytes: Some(1536),
            ..Default::default()
        };
        assert_eq!(
            s.line(),
            "3/10 uploads done, 2 in flight, 1 failing (see nix-outbox status), 1.5 KiB uploaded"
        );
        let s = Seen {
            done: 0,
            total: 1,
            in_flight: 1,
            paths: Some((37, 501)),
            ..Default::default()
        };
        assert_eq!(
            s.line(),
            "0/1 uploads done, 1 in flight, 37/501 paths of the closures in flight published"
        );
    }
}
