//! The protocol client against a real Nix: a private `nix-daemon` on its own
//! socket, and `nix-daemon --stdio`. Every answer is compared with what
//! `nix-store` itself reports.

use std::collections::BTreeSet;
use std::io::Write;

use nix_outbox_core::hash::HashingCounter;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_core::narinfo::fingerprint;
use nix_outbox_core::{Sha256Hash, StoreDir, StorePath};
use nix_outbox_store::{StoreAddress, StorePool, build_outputs, closure};
use nix_outbox_testkit as tk;

fn sd() -> StoreDir {
    StoreDir::default()
}

fn sp(s: &str) -> StorePath {
    sd().parse_path(s).unwrap()
}

/// A leaf, and a three-output derivation referring to it; returns
/// (drv path, its output paths).
fn build_graph(tag: &str) -> (String, Vec<String>) {
    let leaf = tk::sh_derivation(&format!("st-leaf-{tag}"), &["out"], "echo leaf > $out");
    let multi = tk::sh_derivation(
        &format!("st-multi-{tag}"),
        &["out", "dev", "doc"],
        "mkdir -p $out; echo LEAF > $out/ref; ln -s $out $out/self; echo $out > $dev; echo doc > $doc",
    )
    .replace("LEAF", &format!("${{{leaf}}}"));
    let outs = tk::nix_build(&format!("let m = {multi}; in [ m.out m.dev m.doc ]"));
    let drv = tk::query("--deriver", &outs[0]);
    (drv, outs)
}

fn pools(daemon: &tk::PrivateDaemon) -> Vec<(&'static str, StorePool)> {
    vec![
        (
            "daemon",
            StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 3),
        ),
        (
            "stdio",
            StorePool::new(StoreAddress::Stdio { nix_remote: None }, sd(), 2),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn path_info_and_closure_match_nix_store() {
    let daemon = tk::PrivateDaemon::start("");
    let (_, outs) = build_graph("info");
    let expected_closure: BTreeSet<String> = tk::closure(&outs).into_iter().collect();
    for (how, pool) in pools(&daemon) {
        let roots: Vec<StorePath> = outs.iter().map(|p| sp(p)).collect();
        let c = closure(&pool, &roots).await.unwrap();
        assert!(c.missing.is_empty(), "{how}");
        let got: BTreeSet<String> = c.paths.iter().map(|i| sd().display(&i.path)).collect();
        assert_eq!(got, expected_closure, "{how}: closure equals nix-store -qR");
        // Topological: every reference appears before its referrer.
        for (i, info) in c.paths.iter().enumerate() {
            for r in info.references.iter().filter(|r| **r != info.path) {
                let pos = c.paths.iter().position(|x| &x.path == r).unwrap();
                assert!(pos < i, "{how}: {r} must come before {}", info.path);
            }
        }
        for info in &c.paths {
            let full = sd().display(&info.path);
            assert_eq!(
                info.nar_hash,
                Sha256Hash::parse(&tk::query("--hash", &full)).unwrap(),
                "{how} {full}"
            );
            assert_eq!(
                info.nar_size.to_string(),
                tk::query("--size", &full),
                "{how} {full}"
            );
            let refs: BTreeSet<String> = tk::query("--references", &full)
                .lines()
                .map(str::to_owned)
                .collect();
            let ours: BTreeSet<String> = info.references.iter().map(|r| sd().display(r)).collect();
            assert_eq!(ours, refs, "{how} {full}");
            let deriver = tk::query("--deriver", &full);
            assert_eq!(
                info.deriver
                    .as_ref()
                    .map(|d| sd().display(d))
                    .unwrap_or("unknown-deriver".into()),
                deriver
            );
        }
        let mut conn = pool.get().await.unwrap();
        assert!(conn.is_valid_path(&sd(), &sp(&outs[0])).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_from_path_equals_nix_store_dump() {
    let daemon = tk::PrivateDaemon::start("");
    // A NAR of several MiB, so it spans many socket reads.
    let big = tk::nix_build(&tk::sh_derivation(
        "st-big",
        &["out"],
        "mkdir -p $out/d; head -c 6000000 /dev/zero | tr '\\0' x > $out/d/big; echo small > $out/s; chmod +x $out/s",
    ));
    let (_, outs) = build_graph("nar");
    for (how, pool) in pools(&daemon) {
        for p in outs.iter().chain(&big) {
            let dump = tk::run(tk::nix_store().args(["--dump", p])).stdout;
            let mut conn = pool.get().await.unwrap();
            let (sink, n) = conn.nar_from_path(&sd(), &sp(p), Vec::new()).await.unwrap();
            assert_eq!(n as usize, dump.len(), "{how} {p}");
            assert!(
                sink == dump,
                "{how}: NarFromPath bytes of {p} equal nix-store --dump"
            );
            // The connection stays usable after a NAR: the next op works.
            assert!(conn.is_valid_path(&sd(), &sp(p)).await.unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_out_paths_are_resolved_from_drv_path() {
    // Nix 2.8.0 runs the post-build-hook with OUT_PATHS empty (nix#6446).
    let daemon = tk::PrivateDaemon::start("");
    let (drv, outs) = build_graph("outs");
    let expected: BTreeSet<String> = tk::query("--outputs", &drv)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(expected.len(), 3);
    assert_eq!(expected, outs.iter().cloned().collect());
    for (how, pool) in pools(&daemon) {
        let got = build_outputs(&pool, &sp(&drv), &[]).await.unwrap();
        let valid: BTreeSet<String> = got.valid.iter().map(|p| sd().display(p)).collect();
        assert_eq!(valid, expected, "{how}");
        assert!(got.invalid.is_empty());
        // Given OUT_PATHS, only those (valid) are returned.
        let one = build_outputs(&pool, &sp(&drv), &[sp(&outs[1])])
            .await
            .unwrap();
        assert_eq!(one.valid, vec![sp(&outs[1])]);
    }
    // The .drv fallback agrees with the daemon's output map.
    let from_file = nix_outbox_store::outputs_from_drv_file(&sd(), &sp(&drv))
        .await
        .unwrap();
    assert_eq!(
        from_file
            .iter()
            .map(|p| sd().display(p))
            .collect::<BTreeSet<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_signatures_shows_in_nix_path_info() {
    let daemon = tk::PrivateDaemon::start("");
    let p = tk::nix_build(&tk::sh_derivation("st-sig", &["out"], "echo sig > $out")).remove(0);
    let key = SecretKey::generate("st-test-1").unwrap();
    let pool = StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 1);
    let mut conn = pool.get().await.unwrap();
    let info = conn.query_path_info(&sd(), &sp(&p)).await.unwrap().unwrap();
    let sig = key.sign(
        fingerprint(
            &sd(),
            &info.path,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        )
        .as_bytes(),
    );
    conn.add_signatures(&sd(), &sp(&p), &[sig.to_string()])
        .await
        .unwrap();
    let shown = tk::stdout_string(&tk::run(tk::nix().args(["path-info", "--sigs", &p])));
    assert!(shown.contains(&sig.to_string()), "{shown}");
    let again = conn.query_path_info(&sd(), &sp(&p)).await.unwrap().unwrap();
    assert!(again.sigs.contains(&sig.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_collected_paths_are_not_errors() {
    let daemon = tk::PrivateDaemon::start("");
    let p = tk::nix_build(&tk::sh_derivation(
        "st-gc",
        &["out"],
        "echo gc-$RANDOM-$$ > $out",
    ))
    .remove(0);
    tk::run(tk::nix_store().args(["--delete", &p]));
    let never = sp("/nix/store/00000000000000000000000000000000-never-built");
    let pool = StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 2);
    let mut conn = pool.get().await.unwrap();
    assert!(
        conn.query_path_info(&sd(), &sp(&p))
            .await
            .unwrap()
            .is_none()
    );
    assert!(conn.query_path_info(&sd(), &never).await.unwrap().is_none());
    assert!(!conn.is_valid_path(&sd(), &never).await.unwrap());
    drop(conn);
    let c = closure(&pool, &[sp(&p), never.clone()]).await.unwrap();
    assert!(c.paths.is_empty());
    assert_eq!(c.missing.len(), 2);
    // NarFromPath of a missing path is a clean error naming it.
    let mut conn = pool.get().await.unwrap();
    let e = conn
        .nar_from_path(&sd(), &never, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("never-built") && e.contains("not valid"), "{e}");
    assert!(
        !conn.is_broken(),
        "an error reply leaves the connection in sync"
    );
    assert!(!conn.is_valid_path(&sd(), &never).await.unwrap());
}

/// A sink that kills the daemon worker serving us once the NAR has started.
struct KillingSink {
    worker: u32,
    killed: bool,
    hash: HashingCounter,
}

impl Write for KillingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.killed {
            tk::run(std::process::Command::new("kill").args(["-9", &self.worker.to_string()]));
            self.killed = true;
        }
        self.hash.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_dying_mid_nar_is_a_clean_error_and_the_pool_recovers() {
    let daemon = tk::PrivateDaemon::start("");
    let big = tk::nix_build(&tk::sh_derivation(
        "st-big-kill",
        &["out"],
        "head -c 64000000 /dev/zero | tr '\\0' y > $out",
    ))
    .remove(0);
    let pool = StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 1);
    let mut conn = pool.get().await.unwrap();
    assert!(conn.is_valid_path(&sd(), &sp(&big)).await.unwrap());
    let workers = daemon.worker_pids();
    assert_eq!(workers.len(), 1, "one connection, one worker: {workers:?}");
    let sink = KillingSink {
        worker: workers[0],
        killed: false,
        hash: HashingCounter::new(),
    };
    let Err(e) = conn.nar_from_path(&sd(), &sp(&big), sink).await else {
        panic!("NAR from a killed worker must fail")
    };
    let e = e.to_string();
    assert!(e.contains("NAR of") && e.contains("input ends"), "{e}");
    assert!(conn.is_broken());
    drop(conn);
    // The broken connection was discarded; a fresh one works.
    let mut conn = pool.get().await.unwrap();
    assert!(conn.is_valid_path(&sd(), &sp(&big)).await.unwrap());
}

/// The protocol each Nix speaks with us, and realisations read the way
/// that Nix keys them (docs/design.md, "The daemon protocol"): 1.34 for
/// Nix 2.8–2.14, 1.35 to 2.19, 1.37 to 2.23, 1.38 from 2.24 (with a
/// feature exchange), and from 2.35 the `realisation-with-path-not-hash`
/// feature, without which Nix 2.35 cannot answer QueryRealisation.
#[tokio::test(flavor = "multi_thread")]
async fn negotiation_and_realisations_follow_the_daemons_version() {
    let daemon = tk::PrivateDaemon::start("extra-experimental-features = ca-derivations");
    let version = tk::stdout_string(&tk::run(tk::nix().arg("--version")));
    let minor: u64 = version
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no version in {version:?}"));
    let want = match minor {
        ..=14 => 34,
        15..=19 => 35,
        20..=23 => 37,
        _ => 38,
    };
    let by_path = minor >= 35;
    for (how, pool) in pools(&daemon) {
        let conn = pool.get().await.unwrap();
        assert_eq!(conn.protocol_minor(), want, "{how}, {version}");
        assert_eq!(
            conn.keys_realisations_by_path(),
            by_path,
            "{how}, {version}"
        );
    }

    // A floating content-addressed derivation, built through the daemon.
    let expr = format!(
        r#"derivation {{ name = "st-ca-{}"; system = builtins.currentSystem;
            builder = "/bin/sh"; args = [ "-c" "echo ca > $out" ];
            __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}"#,
        tk::nonce()
    );
    let remote = format!("unix://{}", daemon.socket.display());
    let built = tk::run(
        tk::nix_build_cmd(&expr)
            .args(["--extra-experimental-features", "ca-derivations"])
            .env("NIX_REMOTE", &remote),
    );
    let out = sp(tk::stdout_string(&built).trim());
    let drv = tk::run(
        std::process::Command::new("nix-instantiate")
            .args([
                "--extra-experimental-features",
                "ca-derivations",
                "--expr",
                &expr,
            ])
            .env("NIX_REMOTE", &remote),
    );
    let drv = sp(tk::stdout_string(&drv).trim());
    let pool = StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 1);
    // Hashing reads the .drv through the pool: before taking its one
    // connection for the queries.
    let ids = nix_outbox_store::ca_realisation_ids(&pool, &drv)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let mut conn = pool.get().await.unwrap();
    if by_path {
        let trace = conn.query_build_trace(&sd(), &drv, "out").await.unwrap();
        assert_eq!(trace.map(|t| t.out_path), Some(out.clone()), "{version}");
        let none = conn.query_build_trace(&sd(), &drv, "dev").await.unwrap();
        assert_eq!(none, None, "an output the derivation lacks");
    } else {
        let json = conn.query_realisation(&ids[0].1).await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["outPath"], out.as_str(), "{json}");
    }
    // The stream is still in step: the next request is answered.
    assert!(conn.is_valid_path(&sd(), &out).await.unwrap());
}
