//! kill -9 of the daemon at random moments, many times, while builds of
//! hundreds of paths run and their hooks hand them over: afterwards not
//! one path is lost, no narinfo dangles (its NAR and its references are in
//! the cache), and Nix verifies the whole cache.
//!
//! The kills land wherever they land: while the hook is acknowledged,
//! while the spool is ingested, during expansion, mid-NAR, between NAR
//! and narinfo. The seed is printed so a failure can be replayed with
//! `CRASH_LOOP_SEED=…`.

use std::collections::BTreeSet;
use std::time::Duration;

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

const ROUNDS: usize = 30;

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
    while kills < ROUNDS || !build.is_finished() {
        outbox.start(Some(&nix.socket));
        std::thread::sleep(Duration::from_millis(20 + rng.below(600)));
        outbox.kill();
        kills += 1;
        // Sometimes stay down for a while: hooks then spool.
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        }
        assert!(kills < 10 * ROUNDS, "the builds never finished");
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
    // Every narinfo's NAR exists (checked by assert_cache_valid) and every
    // narinfo's references are in the cache too.
    let present: BTreeSet<String> = narinfo_hashes(&outbox.cache);
    for hash in &present {
        let text = std::fs::read_to_string(outbox.cache.join(format!("{hash}.narinfo"))).unwrap();
        let refs = text
            .lines()
            .find_map(|l| l.strip_prefix("References:"))
            .unwrap_or("");
        for r in refs.split_whitespace() {
            assert!(
                present.contains(&r[..32]),
                "{hash}.narinfo refers to {r}, which the cache lacks"
            );
        }
    }
    outbox.assert_cache_valid();
    eprintln!("{kills} kills, {} paths, all present", closure.len());
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
