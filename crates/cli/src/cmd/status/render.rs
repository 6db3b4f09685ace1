//! `status` as text for people and as JSON for machines.

use std::fmt::Write as _;

use nix_outbox_daemon::metrics::progress::InFlightJob;
use nix_outbox_queue::{SkipCount, TargetStatus};
use serde_json::{Value, json};

use super::Snapshot;
use crate::format::{human_bytes, human_duration, relative};
use nix_outbox_daemon::spool::rejected_dir;

/// One target's view: queue counts plus what the daemon says is uploading.
struct TargetView<'a> {
    id: &'a str,
    configured: bool,
    counts: Option<&'a TargetStatus>,
    done_last_hour: u64,
    uploading: Vec<&'a InFlightJob>,
    /// Closure paths left out on purpose (filters, upstream).
    skips: Vec<&'a SkipCount>,
}

/// Configured targets in configuration order, then targets that only the
/// queue knows (jobs left by an older configuration).
fn targets(s: &Snapshot) -> Vec<TargetView<'_>> {
    let mut ids: Vec<(&str, bool)> = s.configured.iter().map(|t| (t.as_str(), true)).collect();
    for t in &s.status.targets {
        if !ids.iter().any(|(id, _)| *id == t.target) {
            ids.push((&t.target, false));
        }
    }
    ids.into_iter()
        .map(|(id, configured)| TargetView {
            id,
            configured,
            counts: s.status.targets.iter().find(|t| t.target == id),
            done_last_hour: s
                .done_last_hour
                .iter()
                .find(|(t, _)| t == id)
                .map_or(0, |d| d.1),
            uploading: s
                .daemon
                .progress
                .iter()
                .flat_map(|p| &p.in_flight)
                .filter(|j| j.target == id)
                .collect(),
            skips: s
                .skip_counts
                .iter()
                .filter(|(t, _)| t == id)
                .map(|(_, c)| c)
                .collect(),
        })
        .collect()
}

pub(super) fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let d = &s.daemon;
    let _ = writeln!(
        out,
        "daemon: {} ({})",
        if d.running { "running" } else { "NOT RUNNING" },
        d.how
    );
    if !d.running {
        out += "  nothing is uploaded until it runs; the queue below is kept\n";
    }
    if let Some(addr) = d.progress.as_ref().and_then(|p| p.metrics_address.as_ref()) {
        let _ = writeln!(out, "metrics: http://{addr}/metrics");
    }
    if s.spooled > 0 {
        let _ = writeln!(
            out,
            "spool: {} request(s) waiting for the daemon to ingest them",
            s.spooled
        );
    }
    if !s.rejected.is_empty() {
        let _ = writeln!(
            out,
            "spool: {} file(s) set aside in {} because they hold no request (their paths are \
             NOT queued); repair or remove them, then `nix-outbox retry --rejected-spool`:",
            s.rejected.len(),
            rejected_dir(&s.spool_dir).display()
        );
        for f in s.rejected.iter().take(10) {
            let _ = writeln!(out, "  {}", f.display());
        }
    }
    if !s.sources_last_hour.is_empty() {
        let by: Vec<String> = s
            .sources_last_hour
            .iter()
            .map(|(source, n)| format!("{source} {n}"))
            .collect();
        let _ = writeln!(out, "requests in the last hour: {}", by.join(", "));
    }
    if let Some(v) = &s.nix_db {
        let behind = match v.nix_last {
            Some(last) => format!(
                ", {} row(s) behind Nix's last",
                last.saturating_sub(v.cursor.last_id)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "nix-db: {} read up to row {}{behind}, moved {} ago",
            v.cursor.db_path,
            v.cursor.last_id,
            human_duration(s.now - v.cursor.moved_at)
        );
    }
    if s.status.new_requests > 0 {
        let age = s
            .status
            .oldest_new_request_at
            .map(|at| format!(" (oldest {} ago)", human_duration(s.now - at)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "requests: {} not yet resolved into uploads{age}",
            s.status.new_requests
        );
    }
    if let Some(r) = &s.status.failing_request {
        let _ = writeln!(
            out,
            "  ✗ request {}: {}",
            r.id,
            r.last_error.as_deref().unwrap_or("")
        );
    }
    for t in targets(s) {
        render_target(&mut out, s.now, &t, d.running && d.progress.is_some());
    }
    out
}

fn render_target(out: &mut String, now: i64, t: &TargetView<'_>, live: bool) {
    let c = t.counts;
    let n = |f: fn(&TargetStatus) -> u64| c.map_or(0, f);
    let _ = writeln!(
        out,
        "\n{}{}",
        t.id,
        if t.configured {
            ""
        } else {
            "   (no longer configured)"
        }
    );
    let _ = writeln!(out, "  pending {}", n(|c| c.never_tried));
    let _ = writeln!(out, "  in flight {}", n(|c| c.in_flight));
    for j in &t.uploading {
        let _ = writeln!(out, "    ↑ {}", uploading_line(j, now));
    }
    if n(|c| c.in_flight) > 0 && !live {
        *out += "    (progress unknown: the daemon is not running or has not reported yet)\n";
    }
    let _ = writeln!(out, "  failing {}", n(|c| c.failing));
    for j in c.iter().flat_map(|c| &c.recent_failures) {
        let _ = writeln!(
            out,
            "    ✗ {} (attempt {}, next try {}): {}",
            j.path,
            j.attempts,
            relative(j.next_attempt_at, now),
            j.last_error.as_deref().unwrap_or("")
        );
    }
    if let Some(c) = c.filter(|c| c.failing > c.recent_failures.len() as u64) {
        let _ = writeln!(
            out,
            "    … and {} more",
            c.failing - c.recent_failures.len() as u64
        );
    }
    let _ = writeln!(out, "  skipped {}", n(|c| c.skipped));
    if !t.skips.is_empty() {
        let parts: Vec<String> = t.skips.iter().map(|c| skip_label(c)).collect();
        let _ = writeln!(out, "    paths left out on purpose: {}", parts.join(", "));
    }
    let _ = writeln!(
        out,
        "  done {} ({} in the last hour)",
        n(|c| c.done),
        t.done_last_hour
    );
}

/// `12 signed by upstream key cache.nixos.org-1`, `3 excluded by "*.drv"`.
fn skip_label(c: &SkipCount) -> String {
    let (n, d) = (c.paths, &c.detail);
    match c.reason.as_str() {
        "upstream-key" => format!("{n} signed by upstream key {d}"),
        "upstream-cache" => format!("{n} served by upstream cache {d}"),
        "excluded" => format!("{n} excluded by {d:?}"),
        "not-included" => format!("{n} matching no include pattern"),
        other => format!("{n} {other} {d}"),
    }
}

/// `foo-1.0: 12.3 MiB written, 2 of 5 paths published, 3 NARs (100.0 MiB)
/// going up, 4.1 MiB/s, for 3s`
fn uploading_line(j: &InFlightJob, now: i64) -> String {
    let mut line = format!("{}: {} written", j.path, human_bytes(j.written));
    match j.to_upload {
        Some(to_upload) if to_upload > 0 => {
            let _ = write!(line, ", {} of {to_upload} paths published", j.published);
            if j.nars_in_flight > 0 {
                let _ = write!(
                    line,
                    ", {} NAR{} ({}) going up",
                    j.nars_in_flight,
                    if j.nars_in_flight == 1 { "" } else { "s" },
                    human_bytes(j.in_flight_nar_bytes)
                );
            }
        }
        Some(_) => line += ", checking",
        None => line += ", computing the closure",
    }
    let _ = write!(
        line,
        ", {}/s, for {}",
        human_bytes(j.bytes_per_second),
        human_duration(now - j.started_at)
    );
    line
}

pub(super) fn to_json(s: &Snapshot) -> Value {
    let d = &s.daemon;
    json!({
        "now": s.now,
        "daemon": {
            "running": d.running,
            "detail": d.how,
            "pid": d.progress.as_ref().map(|p| p.pid),
            "metrics_address": d.progress.as_ref().and_then(|p| p.metrics_address.clone()),
        },
        "requests_last_hour": s.sources_last_hour.iter().map(|(source, n)| (source.as_str().to_owned(), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "nix_db": s.nix_db.as_ref().map(|v| json!({
            "db_path": v.cursor.db_path,
            "cursor": v.cursor.last_id,
            "moved_at": v.cursor.moved_at,
            "nix_last_row": v.nix_last,
        })),
        "spooled_requests": s.spooled,
        "rejected_spool_files": s.rejected.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "new_requests": s.status.new_requests,
        "oldest_new_request_at": s.status.oldest_new_request_at,
        "failing_request": s.status.failing_request.as_ref().map(|r| json!({"id": r.id, "last_error": r.last_error})),
        "targets": targets(s).iter().map(|t| {
            let n = |f: fn(&TargetStatus) -> u64| t.counts.map_or(0, f);
            json!({
                "target": t.id,
                "configured": t.configured,
                "pending": n(|c| c.never_tried),
                "failing": n(|c| c.failing),
                "in_flight": n(|c| c.in_flight),
                "skipped": n(|c| c.skipped),
                "skipped_paths": t.skips.iter().map(|c| json!({
                    "reason": c.reason,
                    "detail": c.detail,
                    "paths": c.paths,
                })).collect::<Vec<_>>(),
                "done": n(|c| c.done),
                "done_last_hour": t.done_last_hour,
                "uploading": t.uploading,
                "recent_failures": t.counts.iter().flat_map(|c| &c.recent_failures).map(|j| json!({
                    "path": j.path,
                    "attempts": j.attempts,
                    "last_error": j.last_error,
                    "next_attempt_at": j.next_attempt_at,
                    "next_attempt_in_secs": (j.next_attempt_at - s.now).max(0),
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploading_lines() {
        let j = InFlightJob {
            target: "file:///c".into(),
            path: "aaaa-foo".into(),
            started_at: 100,
            closure_paths: Some(7),
            to_upload: Some(5),
            nars_started: 4,
            nars_in_flight: 3,
            published: 2,
            in_flight_nar_bytes: 100 << 20,
            written: 20 << 20,
            bytes_per_second: 4 << 20,
        };
        assert_eq!(
            uploading_line(&j, 103),
            "aaaa-foo: 20.0 MiB written, 2 of 5 paths published, 3 NARs (100.0 MiB) going up, 4.0 MiB/s, for 3s"
        );
        let j = InFlightJob {
            to_upload: None,
            ..j
        };
        assert!(uploading_line(&j, 103).contains("computing the closure"));
    }
}
