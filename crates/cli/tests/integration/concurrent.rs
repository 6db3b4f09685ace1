//! The concurrent upload engine (issue 15), through `nix-outbox copy` to a
//! real HTTP cache (nginx) behind the fault proxy, 20 ms away:
//! - a snapshot of the cache taken over and over while a wide closure goes
//!   up never shows a narinfo whose NAR or references are missing;
//! - requests in flight never exceed `max-connections`, and the paths do
//!   go up concurrently;
//! - a path whose narinfo PUT keeps failing blocks only its referrer: every
//!   other path lands, the copy fails naming it, and a second copy, once
//!   the fault is gone, completes the closure.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix_outbox_testkit as tk;
use tk::fault_proxy::{Fault, FaultProxy, Plan};
use tk::webdav::WebDavServer;

const LEAVES: usize = 40;
const LIMIT: u64 = 4;

/// A closure made without building anything: `LEAVES` files of 8 KiB
/// (`builtins.toFile`) and a root that references them all. Returns the
/// root and the leaves.
fn wide_closure(tag: &str) -> (String, Vec<String>) {
    let n = tk::nonce();
    let expr = format!(
        r#"let
          leaf = i: builtins.toFile "{tag}-leaf-${{toString i}}"
            (builtins.concatStringsSep "" (builtins.genList
              (j: builtins.hashString "sha256" "{n}-${{toString i}}-${{toString j}}") 128));
        in builtins.toFile "{tag}-root"
          (builtins.concatStringsSep "\n" (builtins.genList leaf {LEAVES}))"#
    );
    let out = tk::run(
        Command::new("nix-instantiate")
            .env_remove("NIX_REMOTE")
            .args(["--eval", "--read-write-mode", "--json", "-E", &expr]),
    );
    let root: String = serde_json::from_slice(&out.stdout).expect("a path as JSON");
    let leaves: Vec<String> = tk::closure(std::slice::from_ref(&root))
        .into_iter()
        .filter(|p| p != &root)
        .collect();
    assert_eq!(leaves.len(), LEAVES, "{leaves:?}");
    (root, leaves)
}

/// Every problem of the cache in `dir` as a client would meet it now: a
/// narinfo whose NAR file or a reference's narinfo is not there.
fn violations(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let names: BTreeSet<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in names.iter().filter(|n| n.ends_with(".narinfo")) {
        // Written by nginx with a rename: a narinfo is whole or absent.
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        for line in text.lines() {
            if let Some(url) = line.strip_prefix("URL: ")
                && !dir.join(url).exists()
            {
                found.push(format!("{name} names {url}, which is missing"));
            }
            if let Some(refs) = line.strip_prefix("References: ") {
                for r in refs.split_whitespace() {
                    let hash = &r[..32];
                    if !names.contains(&format!("{hash}.narinfo")) {
                        found.push(format!("{name} references {r}, whose narinfo is missing"));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn a_wide_closure_goes_up_concurrently_within_its_limit_and_consistent_at_every_instant() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (config, pk) = crate::support::key_and_config(d, "concurrent-1");
    let server = WebDavServer::start();
    let upstream = server.url("");
    let proxy = FaultProxy::start(upstream.trim_start_matches("http://").trim_end_matches('/'));
    proxy.set_latency(Duration::from_millis(20));
    let (root, leaves) = wide_closure("concurrent");
    let victim = &leaves[7];
    let victim_hash = &victim["/nix/store/".len()..][..32];
    // Its narinfo PUT fails every time (the client's own retries too).
    proxy.set_plan(Plan::Targeted {
        matching: format!("PUT /{victim_hash}.narinfo"),
        fault: Fault::Reset,
        times: 1000,
    });
    let url = format!("{}?compression=zstd&max-connections={LIMIT}", proxy.url(""));
    let url = url.replacen("/?", "?", 1);

    // Snapshots of the cache while the copy runs.
    let cache = server.root();
    let running = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (running, cache) = (running.clone(), cache.clone());
        std::thread::spawn(move || {
            let (mut seen, mut snapshots) = (Vec::new(), 0u32);
            while running.load(Ordering::SeqCst) {
                seen.extend(violations(&cache));
                snapshots += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (seen, snapshots)
        })
    };
    let copy = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_nix-outbox"))
            .env_remove("NIX_REMOTE")
            .args(["copy", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let first = copy(&["--to", &url, &root]);
    running.store(false, Ordering::SeqCst);
    let (seen, snapshots) = watcher.join().unwrap();
    assert!(snapshots > 0);
    assert_eq!(
        seen,
        Vec::<String>::new(),
        "the cache was inconsistent mid-upload"
    );
    assert!(!first.status.success(), "{}", tk::describe(&first));
    let has = |p: &str| {
        cache
            .join(format!("{}.narinfo", &p["/nix/store/".len()..][..32]))
            .exists()
    };
    let landed = leaves.iter().filter(|l| has(l)).count();
    assert_eq!(landed, LEAVES - 1, "every leaf but the failing one lands");
    assert!(
        !has(victim) && !has(&root),
        "the failed leaf's referrer must wait"
    );

    let counts = proxy.counts();
    assert!(
        counts.max_in_flight <= LIMIT,
        "{} requests in flight at once, over max-connections={LIMIT}",
        counts.max_in_flight
    );
    assert!(
        counts.max_in_flight >= 2,
        "the paths went up one at a time: {counts:?}"
    );

    proxy.set_plan(Plan::Pass);
    let second = copy(&["--to", &url, &root]);
    assert!(second.status.success(), "{}", tk::describe(&second));
    assert!(has(victim) && has(&root));
    assert_eq!(violations(&cache), Vec::<String>::new());
    let verify = tk::nix_store_verify_all(
        &format!("file://{}", cache.display()),
        std::fs::read_to_string(pk).unwrap().trim(),
    );
    assert!(verify.status.success(), "{}", tk::describe(&verify));
}
