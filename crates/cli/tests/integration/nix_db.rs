//! The `nix-db` source (issue 16) against the host's real Nix: no
//! post-build-hook anywhere, yet what is built lands in the cache; what
//! was not built here (added from files) does not; a first start begins at
//! the end of Nix's table; and builds made while the daemon is stopped are
//! uploaded once it starts again.

use std::io::Write as _;
use std::time::{Duration, Instant};

use nix_outbox_testkit as tk;

use crate::support::*;

fn nix_db_outbox() -> Outbox {
    let outbox = Outbox::new("zstd");
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox.config)
        .unwrap();
    cfg.write_all(b"ingest = [\"nix-db\"]\nmetrics-address = \"127.0.0.1:0\"\n")
        .unwrap();
    outbox
}

fn build(tag: &str) -> String {
    tk::nix_build(&tk::sh_derivation(
        &format!("nixdb-{tag}"),
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    ))
    .remove(0)
}

/// Waits (bounded) until the cache has `path`.
fn until_uploaded(outbox: &Outbox, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !outbox.has(path) {
        assert!(
            Instant::now() < deadline,
            "{path} never reached the cache: {}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn built_paths_reach_the_cache_without_a_hook_and_builds_made_while_down_follow() {
    // Built before the daemon ever ran: the first start begins at the end.
    let before = build("before");
    let mut outbox = nix_db_outbox();
    outbox.start(None);
    let built = build("built");
    // Added from a file, not built: a hook would never have seen it.
    let file = outbox.dir.path().join("added.txt");
    std::fs::write(&file, tk::nonce()).unwrap();
    let added = tk::stdout_string(&tk::run(tk::nix_store().arg("--add").arg(&file)))
        .trim()
        .to_owned();
    until_uploaded(&outbox, &built);
    let (_, metrics) = http_get(&metrics_address(&outbox), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("nix_outbox_nix_db_requests_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    let status = outbox.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("nix-db: ")
            && text.contains("read up to row")
            && text.contains("behind Nix's last"),
        "{text}"
    );
    assert!(
        text.contains("requests in the last hour: ") && text.contains("nix-db "),
        "{text}"
    );
    let json = outbox.status_json();
    assert!(json["nix_db"]["cursor"].as_i64().unwrap() > 0, "{json}");
    assert!(
        json["requests_last_hour"]["nix-db"].as_u64().unwrap() >= 1,
        "{json}"
    );

    // Down: builds go on, and are uploaded after the start.
    assert!(outbox.terminate().success(), "{}", outbox.log());
    let while_down = build("while-down");
    outbox.start(None);
    until_uploaded(&outbox, &while_down);
    outbox.wait();
    assert!(
        !outbox.has(&before),
        "a first start must not push the store"
    );
    assert!(!outbox.has(&added), "a path nobody built here was queued");
    outbox.assert_cache_valid();
}

#[test]
fn an_unreadable_nix_database_stops_the_start_with_advice() {
    let mut outbox = nix_db_outbox();
    let out = std::process::Command::new(outbox_bin())
        .args(["daemon", "--config"])
        .arg(&outbox.config)
        .env("NIX_STATE_DIR", outbox.dir.path().join("no-such-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nix-db") && err.contains("NIX_STATE_DIR") && err.contains("hook"),
        "{err}"
    );
    outbox.kill();
}

#[test]
fn backfill_queues_what_was_built_since_a_date() {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = build("backfill");
    let mut outbox = Outbox::new("zstd");
    let out = outbox.cli(&["backfill", "--since", &format!("@{since}")]);
    assert!(out.status.success(), "{}", tk::describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("queued ") && said.contains("`nix-outbox wait` covers them"),
        "{said}"
    );
    // Other tests build meanwhile: at least ours was queued.
    let queued: usize = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {said:?}"));
    assert!(queued >= 1, "{said}");
    outbox.start(None);
    // Not `wait` (see above): what other tests built since then is queued
    // too.
    until_uploaded(&outbox, &old);

    let bad = outbox.cli(&["backfill", "--since", "last week"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not a date"),
        "{bad:?}"
    );
    let neither = outbox.cli(&["backfill"]);
    assert!(!neither.status.success(), "{neither:?}");
}

/// What `nix-db-paths = "built"` picks, from the rows real Nix registers:
/// exactly what a post-build-hook is called for (the outputs of local
/// builds, fixed-output ones included), and nothing substituted, copied in
/// or added from a file.
#[test]
fn the_built_predicate_matches_what_nix_runs_a_hook_for() {
    use nix_outbox_store::nix_db::{NixDb, state_dir_from_env};
    let db = NixDb::open(&state_dir_from_env()).expect("the host's Nix database");
    let picked = |p: &str| {
        db.row_of(p)
            .unwrap()
            .unwrap_or_else(|| panic!("{p} is not valid"))
            .built_here()
    };
    let n = tk::nonce();

    let built = build("predicate-built");
    assert!(picked(&built), "a local build's output");
    // A fixed-output derivation is built too (and runs the hook).
    let fod = tk::nix_build(&format!(
        r#"derivation {{ name = "nixdb-fod-{n}"; system = builtins.currentSystem;
             builder = "/bin/sh"; args = [ "-c" "printf {n} > $out" ];
             outputHashMode = "flat"; outputHashAlgo = "sha256";
             outputHash = builtins.hashString "sha256" "{n}"; }}"#
    ))
    .remove(0);
    assert!(picked(&fod), "a fixed-output build's output");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("added");
    std::fs::write(&file, &n).unwrap();
    let added = tk::stdout_string(&tk::run(tk::nix_store().arg("--add").arg(&file)))
        .trim()
        .to_owned();
    assert!(!picked(&added), "nix-store --add");
    let to_file = tk::stdout_string(&tk::run(
        std::process::Command::new("nix-instantiate")
            .env_remove("NIX_REMOTE")
            .args(["--eval", "--read-write-mode", "-E"])
            .arg(format!("builtins.toFile \"nixdb-tofile-{n}\" \"{n}\"")),
    ))
    .trim()
    .trim_matches('"')
    .to_owned();
    assert!(!picked(&to_file), "builtins.toFile");
    let drv = tk::query("--deriver", &built);
    assert!(!picked(&drv), "the .drv itself");

    // Substituted from a cache: valid again, but not built here.
    let cache = format!("file://{}", dir.path().join("cache").display());
    let subst = build("predicate-substituted");
    tk::nix_copy_to(&cache, &[&subst]);
    tk::run(tk::nix_store().args(["--delete", &subst]));
    tk::run(tk::nix_store().args([
        "--realise",
        &subst,
        "--option",
        "substituters",
        &cache,
        "--option",
        "require-sigs",
        "false",
    ]));
    assert!(!picked(&subst), "a substituted path");
}

/// kill -9 of the daemon again and again while builds go on: every built
/// path is queued exactly once (the cursor moves with its requests) and
/// reaches the cache.
#[test]
fn kill_9_during_a_stream_of_builds_loses_nothing_and_queues_nothing_twice() {
    let mut outbox = nix_db_outbox();
    outbox.start(None);
    let builder = std::thread::spawn(|| {
        (0..24)
            .map(|i| build(&format!("kill-{i}")))
            .collect::<Vec<_>>()
    });
    let mut kills = 0;
    while !builder.is_finished() {
        std::thread::sleep(Duration::from_millis(150));
        outbox.kill();
        kills += 1;
        outbox.start(None);
    }
    let built = builder.join().unwrap();
    assert!(kills > 0);
    for p in &built {
        until_uploaded(&outbox, p);
    }
    // Each path in exactly one nix-db request.
    let q = rusqlite::Connection::open(outbox.dir.path().join("state/queue.sqlite")).unwrap();
    let mut stmt = q
        .prepare("SELECT out_paths FROM requests WHERE source = 'nix-db'")
        .unwrap();
    let lists: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for p in &built {
        let n = lists
            .iter()
            .filter(|l| l.split(' ').any(|x| x == p))
            .count();
        assert_eq!(n, 1, "{p} queued {n} times after {kills} kills");
    }
}
