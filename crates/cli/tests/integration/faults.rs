//! The daemon end to end through a faulty network: builds through a private
//! nix-daemon whose post-build-hook feeds `nix-outbox daemon`, uploading to
//! S3 (s3s-fs) or HTTP (nginx) behind the fault proxy, which throttles,
//! stalls, resets, truncates and answers `503 SlowDown` at random, or goes
//! down altogether. Whatever happens on the way, every path must land
//! intact: Nix verifies the cache, no narinfo points at a missing NAR, no
//! multipart upload is left behind, and no build ever fails.
//!
//! The plans are seeded (`FAULTS_SEED` overrides the seed, to explore):
//! request n always gets the same fault, though which request is n-th
//! depends on timing. Deadlines only turn a hang into a failure that shows
//! the daemon's log; nothing here asserts how long anything takes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Outbox, build_via, delete_and_substitute, graph_expr, has_narinfo};
use nix_outbox_testkit as tk;
use tk::fault_proxy::{Counts, Fault, FaultProxy, Plan};

const BUCKET: &str = "nix-cache";

/// `nix-outbox wait` gives up after this; only a hang should come near it
/// (the retry backoff stays short unless faults pile up on one path; these
/// tests take well under a minute each).
const WAIT_SECS: &str = "300";

fn seed() -> u64 {
    std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_240_601)
}

/// Every kind of fault, at rates the daemon must ride out: per request,
/// 20% SlowDown (Retry-After 1 s), 10% Reset, 10% TruncateResponse,
/// 5% Stall (3 s), 5% Throttle (4 MiB/s), else pass.
fn random_faults() -> Plan {
    Plan::random(
        seed(),
        &[
            (
                0.20,
                Fault::SlowDown {
                    retry_after_secs: 1,
                },
            ),
            (0.10, Fault::Reset),
            (0.10, Fault::TruncateResponse),
            (0.05, Fault::Stall { secs: 3 }),
            (
                0.05,
                Fault::Throttle {
                    bytes_per_sec: 4 << 20,
                },
            ),
        ],
    )
}

/// How many requests it takes for `plan` to have injected every kind of
/// fault at least once (faults depend only on a request's number).
fn requests_for_every_kind(plan: &Plan) -> u64 {
    let kind = |f: Fault| std::mem::discriminant(&f);
    let mut seen = Vec::new();
    for n in 0..10_000 {
        let Some(k) = plan.fault_for(n).map(kind) else {
            continue;
        };
        if !seen.contains(&k) {
            seen.push(k);
            if seen.len() == 5 {
                return n + 1;
            }
        }
    }
    panic!("seed {} never injects every kind of fault", seed());
}

fn assert_every_kind_injected(c: &Counts, needed: u64) {
    assert!(
        c.requests >= needed,
        "only {} requests reached the proxy; {needed} are needed for every kind of fault: {c:?}",
        c.requests
    );
    assert!(
        c.slow_down > 0 && c.reset > 0 && c.truncated > 0 && c.stall > 0 && c.throttled > 0,
        "{c:?}"
    );
    assert_eq!(c.upstream_errors, 0, "the upstream itself failed: {c:?}");
}

/// ~20 builds: 6 groups of small derivations with references and two
/// outputs, then one group whose top holds 12 MiB of random bytes (a
/// multipart upload of three parts on S3). Returns every built output.
fn build_all(nix: &tk::PrivateDaemon, tag: &str) -> Vec<String> {
    let mut outs = build_via(nix, &graph_expr(&format!("{tag}-small"), 6, 0));
    outs.extend(build_via(nix, &graph_expr(&format!("{tag}-big"), 1, 12)));
    assert_eq!(outs.len(), 21);
    outs
}

/// `nix-outbox wait`; on failure the message carries the daemon's log and
/// what the proxy did lately.
fn wait_for_uploads(outbox: &Outbox, proxy: &FaultProxy) {
    let out = outbox.cli(&["wait", "--timeout", WAIT_SECS]);
    assert!(
        out.status.success(),
        "wait failed: {}\n--- proxy: {:?}\n{}\n--- daemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.counts(),
        proxy.recent(),
        outbox.log()
    );
}

/// The `status --json` entry of the only target.
fn target_status(outbox: &Outbox) -> serde_json::Value {
    let json = outbox.status_json();
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{json}");
    targets[0].clone()
}

fn assert_all_done(outbox: &Outbox, done: usize) {
    let t = target_status(outbox);
    for key in ["pending", "failing", "in_flight", "skipped"] {
        assert_eq!(t[key], 0, "{key} in {t}");
    }
    assert_eq!(t["done"], done, "{t}");
}

/// Every path of the closure is in the cache in `dir`, which Nix verifies
/// (signatures, hashes), and no narinfo names a missing NAR.
fn assert_cache_complete(outbox: &Outbox, dir: &Path, closure: &[String], proxy: &FaultProxy) {
    for p in closure {
        assert!(
            has_narinfo(dir, p),
            "{p} missing from the cache\n--- proxy: {:?}\n--- daemon log:\n{}",
            proxy.counts(),
            outbox.log()
        );
    }
    outbox.assert_cache_valid_at(dir);
}

fn s3_url(endpoint: &str) -> String {
    // The smallest part size S3 allows, so the 12 MiB NAR (random bytes,
    // incompressible) goes up in three parts.
    format!(
        "s3://{BUCKET}?endpoint={endpoint}&scheme=http&region=us-east-1&compression=zstd&multipart-chunk-size=5242880"
    )
}

/// A fault proxy in front of `s3`. s3s-fs does not implement
/// ListMultipartUploads, by which the outbox finds uploads whose id it lost
/// (to abort them); the proxy fills it in from s3s-fs's own records, after
/// s3s-fs checked the request's signature.
fn s3_proxy(s3: &tk::s3::S3Server) -> FaultProxy {
    let proxy = FaultProxy::start(&s3.endpoint());
    proxy.fill_in(s3.uploads_listing());
    proxy
}

/// An outbox uploading to the S3 bucket of `s3` through `proxy`. The
/// client signs for the proxy's address, which the proxy passes on as the
/// `Host` header, so s3s-fs checks the very signature that was made.
fn s3_outbox(s3: &tk::s3::S3Server, proxy: &FaultProxy) -> Outbox {
    let url = s3_url(&proxy.endpoint());
    Outbox::with_targets(
        |_| vec![url],
        &[
            ("AWS_ACCESS_KEY_ID", &s3.access_key),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret_key),
        ],
    )
}

#[test]
fn s3_through_random_faults() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    let proxy = s3_proxy(&s3);
    let plan = random_faults();
    let needed = requests_for_every_kind(&plan);
    proxy.set_plan(plan);
    let mut outbox = s3_outbox(&s3, &proxy);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    let outs = build_all(&nix, "faults-s3");
    wait_for_uploads(&outbox, &proxy);
    let counts = proxy.counts();
    eprintln!("s3 through random faults (every kind by request {needed}): {counts:?}");
    proxy.set_plan(Plan::Pass);

    let closure = tk::closure(&outs);
    assert_cache_complete(&outbox, &s3.bucket_dir(), &closure, &proxy);
    assert_all_done(&outbox, closure.len());
    assert_every_kind_injected(&counts, needed);
    eprintln!(
        "NARs no narinfo names (answers lost after the upload was done): {}",
        unreferenced_nars(&s3.bucket_dir()).len()
    );
    assert_no_pending_uploads(&s3, &outbox, &proxy);
}

/// No multipart upload was left incomplete (s3s-fs keeps the parts of
/// each as `.upload*` files until it is completed or aborted). Uploads
/// whose id was lost are found and aborted in the background, within
/// minutes at most, so this waits (a hang shows as a failure) before it
/// asserts.
fn assert_no_pending_uploads(s3: &tk::s3::S3Server, outbox: &Outbox, proxy: &FaultProxy) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !s3.pending_uploads().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        s3.pending_uploads(),
        Vec::<String>::new(),
        "incomplete multipart uploads left in s3s-fs\n--- proxy:\n{}\n--- daemon log:\n{}",
        proxy.recent(),
        outbox.log()
    );
}

/// NAR files in the cache directory `dir` that no narinfo points to.
fn unreferenced_nars(dir: &Path) -> Vec<String> {
    let mut urls = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".narinfo") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            urls.extend(
                text.lines()
                    .find_map(|l| l.strip_prefix("URL: ").map(str::to_owned)),
            );
        }
    }
    let nars = std::fs::read_dir(dir.join("nar")).unwrap().flatten();
    nars.map(|e| format!("nar/{}", e.file_name().to_string_lossy()))
        .filter(|n| !urls.contains(n))
        .collect()
}

/// The answer to CreateMultipartUpload is lost (the server created the
/// upload; the client never learns its id). The path must still land,
/// and the upload the client could not name must not be left behind.
#[test]
fn lost_create_multipart_answer_leaves_no_upload_behind() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    let proxy = s3_proxy(&s3);
    proxy.set_plan(Plan::Targeted {
        matching: "?uploads".to_owned(),
        fault: Fault::TruncateResponse,
        times: 1,
    });
    let mut outbox = s3_outbox(&s3, &proxy);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    let outs = build_via(&nix, &graph_expr("faults-lost-create", 1, 12));
    wait_for_uploads(&outbox, &proxy);
    assert_eq!(proxy.counts().truncated, 1, "{}", proxy.recent());
    let closure = tk::closure(&outs);
    assert_cache_complete(&outbox, &s3.bucket_dir(), &closure, &proxy);
    assert_all_done(&outbox, closure.len());
    assert_no_pending_uploads(&s3, &outbox, &proxy);
}

#[test]
fn http_through_random_faults() {
    let web = tk::webdav::WebDavServer::start();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", web.port));
    let plan = random_faults();
    let needed = requests_for_every_kind(&plan);
    proxy.set_plan(plan);
    let base = proxy.url("cache");
    let mut outbox = Outbox::with_targets(|_| vec![format!("{base}?compression=zstd")], &[]);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    let outs = build_all(&nix, "faults-http");
    wait_for_uploads(&outbox, &proxy);
    let counts = proxy.counts();
    eprintln!("http through random faults (every kind by request {needed}): {counts:?}");
    proxy.set_plan(Plan::Pass);

    let closure = tk::closure(&outs);
    assert_cache_complete(&outbox, &web.root().join("cache"), &closure, &proxy);
    assert_all_done(&outbox, closure.len());
    assert_every_kind_injected(&counts, needed);

    // Nix reads the cache back over http://, through the proxy.
    let big: Vec<String> = outs
        .iter()
        .filter(|p| p.contains("-big-top"))
        .cloned()
        .collect();
    assert_eq!(big.len(), 1, "{outs:?}");
    delete_and_substitute(&base, &outbox.public_key, &big);
}

/// Polls `status` until `done(target)` holds; panics with the daemon's log
/// after `limit` (a hang, not a slow run).
fn poll_status(outbox: &Outbox, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let t = target_status(outbox);
        if done(&t) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "status never got there: {t}\n--- daemon log:\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn cache_down_during_builds_then_up() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    let proxy = s3_proxy(&s3);
    let mut outbox = s3_outbox(&s3, &proxy);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    proxy.down();
    // The daemon may have asked something before: only what comes after
    // counts.
    let before = proxy.counts().requests;

    // Every build succeeds (build_via asserts it, and that no hook failed).
    let outs = build_all(&nix, "faults-down");
    let closure = tk::closure(&outs);
    assert_eq!(outbox.spooled(), 0, "the hook could not reach the daemon");
    // Every path is queued, and the failures show, while the cache is down.
    poll_status(&outbox, Duration::from_secs(300), |t| {
        let n = |key: &str| t[key].as_u64().unwrap_or(0);
        n("failing") > 0 && n("failing") + n("pending") + n("in_flight") == closure.len() as u64
    });
    let t = target_status(&outbox);
    assert_eq!(t["done"], 0, "{t}");
    let error = t["recent_failures"][0]["last_error"].as_str().unwrap_or("");
    assert!(!error.is_empty(), "no error shown: {t}");
    eprintln!("status while the cache is down: {t}");
    let out = outbox.cli(&["wait", "--timeout", "1"]);
    assert!(!out.status.success(), "wait succeeded with the cache down");
    assert_eq!(proxy.counts().requests, before, "requests got through");

    proxy.up();
    wait_for_uploads(&outbox, &proxy);
    assert_cache_complete(&outbox, &s3.bucket_dir(), &closure, &proxy);
    assert_no_pending_uploads(&s3, &outbox, &proxy);
    assert_all_done(&outbox, closure.len());
}
