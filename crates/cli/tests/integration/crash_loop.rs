//! kill -9 of the daemon at random moments, many times, while builds of
//! hundreds of paths run and their hooks hand them over: after every kill,
//! before the restart, no narinfo dangles (its NAR and its references are
//! in the cache: the invariant must hold at every instant, not only once
//! everything has healed); afterwards not one path is lost, and Nix
//! verifies the whole cache.
//!
//! The kills land wherever they land: while the hook is acknowledged,
//! while the spool is ingested, during expansion, mid-NAR, between NAR
//! and narinfo. The seed is printed so a failure can be replayed with
//! `CRASH_LOOP_SEED=…`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::*;
use nix_outbox_testkit as tk;

/// A small xorshift generator: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// At least this many kills, as long as [`BUDGET`] lasts (and in any case
/// until the builds are done).
const KILLS: usize = 100;
const BUDGET: Duration = Duration::from_secs(300);
/// Only a hang comes near this.
const HANG: Duration = Duration::from_secs(1200);

#[test]
fn random_sigkills_lose_nothing() {
    let seed = std::env::var("CRASH_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_str_radix(&tk::nonce()[..12], 16).unwrap() | 1);
    eprintln!("crash loop seed: {seed} (replay with CRASH_LOOP_SEED={seed})");
    let mut rng = Rng(seed);

    let mut outbox = Outbox::new("zstd");
    let nix = outbox.nix_daemon();
    // 60 groups of 4 paths (a leaf, a two-output middle, a top holding
    // 1 MiB and change): 240 paths with references between them.
    let expr = graph_expr("crash", 60, 1);
    let socket = nix.socket.clone();
    let build = std::thread::spawn(move || {
        tk::run(tk::nix_build_cmd(&expr).env("NIX_REMOTE", format!("unix://{}", socket.display())))
    });

    let mut kills = 0;
    let started = Instant::now();
    while (kills < KILLS && started.elapsed() < BUDGET) || !build.is_finished() {
        outbox.start(Some(&nix.socket));
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        outbox.kill();
        kills += 1;
        assert_nothing_dangles(&outbox.cache, &format!("after kill {kills} (seed {seed})"));
        // Sometimes stay down for a while: hooks then spool.
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        }
        assert!(started.elapsed() < HANG, "the builds never finished");
    }
    let out = build.join().unwrap();
    let outs: Vec<String> = tk::stdout_string(&out).lines().map(str::to_owned).collect();
    assert_eq!(outs.len(), 180, "every build succeeded");

    outbox.start(Some(&nix.socket));
    outbox.wait();
    let closure = tk::closure(&outs);
    assert!(closure.len() >= 240, "{}", closure.len());
    let missing: Vec<&String> = closure.iter().filter(|p| !outbox.has(p)).collect();
    assert!(
        missing.is_empty(),
        "lost after {kills} kills (seed {seed}): {missing:?}\n{}",
        outbox.log()
    );
    assert_nothing_dangles(&outbox.cache, "at the end");
    outbox.assert_cache_valid();
    eprintln!("{kills} kills, {} paths, all present", closure.len());
}

/// Every narinfo's NAR file exists, and every narinfo's references have
/// narinfos too.
fn assert_nothing_dangles(cache: &std::path::Path, when: &str) {
    let present: BTreeSet<String> = narinfo_hashes(cache);
    for hash in &present {
        let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
        let url = field("URL: ").expect("every narinfo has a URL");
        assert!(
            cache.join(url).exists(),
            "{when}: {hash}.narinfo names {url}, which the cache lacks"
        );
        for r in field("References:").unwrap_or("").split_whitespace() {
            assert!(
                present.contains(&r[..32]),
                "{when}: {hash}.narinfo refers to {r}, which the cache lacks"
            );
        }
    }
}

fn narinfo_hashes(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".narinfo").map(str::to_owned)
        })
        .collect()
}
