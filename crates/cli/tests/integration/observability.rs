//! Metrics, `status` and `push --wait` against the real daemon: builds
//! through a private nix-daemon's hook, one healthy file:// target and one
//! whose directory vanishes (a permanent failure), then `/metrics` parsed
//! by the official Prometheus Python client's parsers (OpenMetrics and the
//! classic text format).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Outbox, build_via, graph_expr, http_get, metrics_address};
use serde_json::Value;

/// One parsed sample: metric sample name, labels, value.
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// Parses the exposition with `prometheus_client.openmetrics.parser`
/// (strict: it rejects a missing `# EOF`, bad names or escapes) and checks
/// the classic text parser accepts it too; returns the OpenMetrics samples.
fn parse(text: &str) -> Vec<Sample> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.txt");
    std::fs::write(&input, text).unwrap();
    let script = r##"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as classic
text = open(sys.argv[1]).read()
out = []
for fam in om(text):
    for s in fam.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
classic_count = sum(len(f.samples) for f in classic(text.replace("# EOF\n", "")))
assert classic_count > 0
print(json.dumps(out))
"##;
    // Debian's python3, where python3-prometheus-client is installed
    // (scripts/test.sh), not whatever python3 comes first on PATH.
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parsing /metrics failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_owned(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; panics if
/// there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

fn target<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == id)
        .unwrap_or_else(|| panic!("no target {id} in {status}"))
}

/// Polls `status --json` until `done` holds for it.
fn status_when(outbox: &Outbox, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = outbox.status_json();
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}: {s}\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn narinfos(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
        .count()
}

#[test]
fn metrics_status_and_push_progress() {
    let broken: PathBuf;
    let mut outbox = {
        let mut b = None;
        let o = Outbox::with_targets(
            |cache| {
                let dir = cache.parent().unwrap().join("broken");
                std::fs::create_dir(&dir).unwrap();
                b = Some(dir.clone());
                vec![
                    format!("file://{}?compression=zstd", cache.display()),
                    format!("file://{}?compression=none", dir.display()),
                ]
            },
            &[],
        );
        broken = b.unwrap();
        o
    };
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox.config)
        .unwrap();
    writeln!(cfg, "metrics-address = \"127.0.0.1:0\"").unwrap();
    drop(cfg);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let addr = metrics_address(&outbox);
    let before = parse(&http_get(&addr, "/metrics").1);
    let status = outbox.status_json();
    let (good, bad) = (
        status["targets"][0]["target"].as_str().unwrap().to_owned(),
        status["targets"][1]["target"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        value(
            &before,
            "nix_outbox_jobs_total",
            &[("target", &good), ("outcome", "done")]
        ),
        0.0
    );
    assert_eq!(value(&before, "nix_outbox_build_info", &[]), 1.0);

    // Both targets healthy: 2 groups = 6 builds (6 hook requests), 8 paths.
    let outs_a = build_via(&nix, &graph_expr("obs-a", 2, 1));
    assert_eq!(outs_a.len(), 6);
    // push --wait (one more socket request), output not a terminal: plain
    // progress lines, then wait's verdict.
    let mut push = vec!["push", "--wait", "--timeout", "180"];
    push.extend(outs_a.iter().map(String::as_str));
    let out = outbox.cli(&push);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", outbox.log());
    assert!(stderr.contains("uploads done"), "{stderr}");
    assert!(stderr.contains("is uploaded"), "wait's verdict: {stderr}");
    assert!(
        !stderr.contains('\r'),
        "no bar when not a terminal: {stderr}"
    );

    // The second target's directory vanishes: every upload to it fails
    // permanently ("create the cache directory"); the first is unaffected.
    std::fs::remove_dir_all(&broken).unwrap();
    let outs_b = build_via(&nix, &graph_expr("obs-b", 1, 1));
    assert_eq!(outs_b.len(), 3);
    let status = status_when(&outbox, "4 failing, the rest done", |s| {
        let (g, b) = (target(s, &good), target(s, &bad));
        g["done"] == 12 && g["pending"] == 0 && g["in_flight"] == 0 && b["failing"] == 4
    });

    // Metrics agree with what happened.
    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let m = parse(&body);
    let v = |name: &str, labels: &[(&str, &str)]| value(&m, name, labels);
    assert_eq!(
        v("nix_outbox_hook_requests_total", &[("outcome", "accepted")])
            + v(
                "nix_outbox_spool_requests_total",
                &[("outcome", "ingested")]
            ),
        6.0 + 1.0 + 3.0,
        "hook requests (builds and push)"
    );
    assert_eq!(
        v("nix_outbox_hook_requests_total", &[("outcome", "refused")]),
        0.0
    );
    assert_eq!(
        v("nix_outbox_hook_commit_latency_seconds_count", &[]),
        v("nix_outbox_hook_requests_total", &[("outcome", "accepted")])
    );
    let good_l = [("target", good.as_str())];
    let jobs = |id: &str, outcome: &str| {
        v(
            "nix_outbox_jobs_total",
            &[("target", id), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs(&good, "done"), 12.0);
    assert_eq!(jobs(&good, "failed"), 0.0);
    assert_eq!(jobs(&bad, "done"), 8.0);
    assert!(jobs(&bad, "failed") >= 4.0);
    assert_eq!(v("nix_outbox_upload_duration_seconds_count", &good_l), 12.0);
    // Every path was uploaded at least once (a closure may race another
    // job's and upload a path twice; never zero times).
    let uploaded = v("nix_outbox_paths_uploaded_total", &good_l);
    assert!(uploaded >= narinfos(&outbox.cache) as f64, "{uploaded}");
    assert_eq!(narinfos(&outbox.cache), 12);
    assert!(v("nix_outbox_uploaded_nar_bytes_total", &good_l) > 2.0 * 1024.0 * 1024.0);
    assert!(v("nix_outbox_uploaded_file_bytes_total", &good_l) > 0.0);
    for state in ["pending", "failing", "in_flight"] {
        assert_eq!(
            v(
                "nix_outbox_queue_jobs",
                &[("target", &good), ("state", state)]
            ),
            0.0,
            "{state}"
        );
    }
    assert_eq!(
        v(
            "nix_outbox_queue_jobs",
            &[("target", &bad), ("state", "failing")]
        ),
        4.0
    );
    assert!(
        v(
            "nix_outbox_upload_failures_total",
            &[
                ("target", &bad),
                ("class", "permanent"),
                ("kind", "target_io")
            ]
        ) >= 4.0
    );
    // Labels are bounded: configured targets and fixed words, never paths.
    for s in &m {
        for (k, val) in &s.labels {
            let val = val.as_str().unwrap();
            assert!(
                !val.contains("/nix/store") && !val.contains("-obs-"),
                "{}{{{k}={val}}}",
                s.name
            );
            if k == "target" {
                assert!(val == good || val == bad, "{k}={val}");
            }
        }
    }
    let (head, _) = http_get(&addr, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // status: human and JSON.
    let out = outbox.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("status:\n{text}");
    assert!(text.contains("daemon: running"), "{text}");
    assert!(
        text.contains(&format!("metrics: http://{addr}/metrics")),
        "{text}"
    );
    let bad_block = &text[text.find(&format!("\n{bad}\n")).expect("target block")..];
    assert!(bad_block.contains("failing 4"), "{text}");
    assert!(
        bad_block.contains("✗")
            && bad_block.contains("next try in ")
            && bad_block.contains("Create the cache directory"),
        "{text}"
    );
    assert!(text.contains("done 12 (12 in the last hour)"), "{text}");
    let t = target(&status, &bad);
    for key in [
        "target",
        "configured",
        "pending",
        "failing",
        "in_flight",
        "skipped",
        "done",
        "done_last_hour",
        "uploading",
        "recent_failures",
    ] {
        assert!(t.get(key).is_some(), "{key} missing in {t}");
    }
    let f = &t["recent_failures"][0];
    assert!(
        f["last_error"].as_str().unwrap().contains("needs fixing"),
        "{f}"
    );
    assert!(f["next_attempt_in_secs"].as_i64().unwrap() > 0, "{f}");
    assert_eq!(status["daemon"]["running"], true, "{status}");
    assert_eq!(
        status["daemon"]["metrics_address"],
        addr.as_str(),
        "{status}"
    );

    // With the daemon down, status says so and still shows the queue.
    outbox.kill();
    let out = outbox.cli(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daemon: NOT RUNNING") && text.contains("failing 4"),
        "{text}"
    );
    assert_eq!(outbox.status_json()["daemon"]["running"], false);
}
