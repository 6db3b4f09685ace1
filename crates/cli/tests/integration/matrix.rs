//! The Nix version matrix: each Nix version uploads through the hook and
//! the daemon, and every version substitutes and verifies what the others
//! uploaded. Run by `scripts/matrix.sh` on the host (Nix 2.8) and inside
//! the trixie and sid chroots (Nix 2.26, 2.34), in two phases sharing
//! `$NIX_OUTBOX_MATRIX_DIR`: first every version uploads, then every
//! version reads the others' caches. Hence `#[ignore]`: alone, a phase
//! proves nothing.
//!
//! Each version also builds a content-addressed derivation
//! (`ca-derivations`) whose inputs are content-addressed too, and every
//! other version substitutes it from the caches alone (`--max-jobs 0`).
//! That needs the realisation layout each reader reads: Nix ≤ 2.34 reads
//! `realisations/<hash>!out.doi`, Nix 2.35 only
//! `build-trace-v2/<drv>/out.doi`, and we write both, whichever Nix built.

use std::os::unix::fs::PermissionsExt as _;

use std::path::{Path, PathBuf};

use crate::support::*;
use nix_outbox_testkit as tk;

/// The compressions each version uploads with: every reader must handle
/// both.
const COMPRESSIONS: [&str; 2] = ["zstd", "xz"];

fn matrix_dir() -> PathBuf {
    let dir = std::env::var_os("NIX_OUTBOX_MATRIX_DIR")
        .expect("NIX_OUTBOX_MATRIX_DIR is not set: run scripts/matrix.sh");
    PathBuf::from(dir)
}

fn nix_version() -> String {
    let out = tk::run(tk::nix().arg("--version"));
    let text = tk::stdout_string(&out);
    text.split_whitespace().last().unwrap().to_owned()
}

#[test]
#[ignore = "a phase of scripts/matrix.sh"]
fn matrix_upload() {
    let version = nix_version();
    let dir = matrix_dir().join(&version);
    std::fs::create_dir_all(&dir).unwrap();
    let caches: Vec<PathBuf> = COMPRESSIONS.iter().map(|c| dir.join(c)).collect();
    for c in &caches {
        std::fs::create_dir_all(c).unwrap();
    }
    let targets: Vec<String> = COMPRESSIONS
        .iter()
        .zip(&caches)
        .map(|(c, d)| format!("file://{}?compression={c}", d.display()))
        .collect();
    let mut outbox = Outbox::with_targets(|_| targets.clone(), &[]);
    let nix = tk::PrivateDaemon::start_with_env(
        &format!(
            "post-build-hook = {}\nextra-experimental-features = ca-derivations",
            hook_bin().display()
        ),
        &[("NIX_OUTBOX_CONFIG", outbox.config.to_str().unwrap())],
    );
    outbox.start(Some(&nix.socket));
    let tag = format!("matrix-{}", version.replace('.', "-"));
    let outs = build_via(&nix, &graph_expr(&tag, 3, 1));
    let (ca_expr, ca_out) = build_ca(&nix, &dir);
    outbox.wait();
    for cache in &caches {
        for p in tk::closure(&outs)
            .into_iter()
            .chain(tk::closure(std::slice::from_ref(&ca_out)))
        {
            assert!(has_narinfo(cache, &p), "{p} not in {}", cache.display());
        }
        outbox.assert_cache_valid_at(cache);
        // Both layouts, for the realisations of both CA derivations.
        for layout in ["realisations", "build-trace-v2"] {
            let n = count_doi(&cache.join(layout));
            assert!(
                n >= 2,
                "{n} realisations under {layout} in {}",
                cache.display()
            );
        }
    }
    std::fs::write(dir.join("ca-expr"), &ca_expr).unwrap();
    std::fs::write(dir.join("ca-output"), &ca_out).unwrap();
    std::fs::write(dir.join("key.pub"), outbox.public_key.trim()).unwrap();
    std::fs::write(dir.join("outputs"), outs.join("\n")).unwrap();
    // Written last: a reader only trusts a finished upload phase.
    std::fs::write(dir.join("done"), &version).unwrap();
}

#[test]
#[ignore = "a phase of scripts/matrix.sh"]
fn matrix_read_others() {
    let version = nix_version();
    let expect: usize = std::env::var("NIX_OUTBOX_MATRIX_VERSIONS")
        .expect("NIX_OUTBOX_MATRIX_VERSIONS (how many versions uploaded) is not set")
        .parse()
        .unwrap();
    let mut others = Vec::new();
    for e in std::fs::read_dir(matrix_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            e.path().join("done").exists(),
            "{name} did not finish its upload phase"
        );
        if name != version {
            others.push((name, e.path()));
        }
    }
    assert_eq!(others.len() + 1, expect, "versions found: {others:?}");
    for (theirs, dir) in &others {
        let key = std::fs::read_to_string(dir.join("key.pub")).unwrap();
        let outputs = std::fs::read_to_string(dir.join("outputs")).unwrap();
        let outputs: Vec<&str> = outputs.lines().collect();
        for c in COMPRESSIONS {
            let cache = format!("file://{}", dir.join(c).display());
            let out = tk::nix_store_verify_all(&cache, &key);
            assert!(
                out.status.success(),
                "Nix {version} rejects {cache} written under Nix {theirs}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            substitute_and_check(&cache, &key, &outputs, &version, theirs);
            substitute_ca(&cache, &key, dir, &version, theirs);
        }
    }
}

/// Builds `realisations::expr` (a CA derivation with a CA and a
/// fixed-output input) through `nix`; returns the expression and its
/// output path.
fn build_ca(nix: &tk::PrivateDaemon, dir: &Path) -> (String, String) {
    // The builders run as nixbld users and append to the marker.
    let marker_dir = dir.join("ca-marker");
    std::fs::create_dir_all(&marker_dir).unwrap();
    std::fs::set_permissions(&marker_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = marker_dir.join("builds");
    std::fs::write(&marker, "").unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o666)).unwrap();
    let expr = crate::realisations::expr(&tk::nonce(), &marker);
    let out = tk::run(
        tk::nix_build_cmd(&expr)
            .args(["--extra-experimental-features", "ca-derivations"])
            .env("NIX_REMOTE", format!("unix://{}", nix.socket.display())),
    );
    let out = tk::stdout_string(&out).trim().to_owned();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "dep\ntop\n");
    (expr, out)
}

/// The `.doi` files anywhere under `dir`.
fn count_doi(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_doi(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "doi"))
            }
        })
        .sum()
}

/// Substitutes the other version's CA build into a fresh store from
/// `cache` alone: `--max-jobs 0` forbids building, so Nix must find the
/// realisations (of the inputs and of the resolved derivation) there.
fn substitute_ca(cache: &str, key: &str, dir: &Path, ours: &str, theirs: &str) {
    let expr = std::fs::read_to_string(dir.join("ca-expr")).unwrap();
    let want = std::fs::read_to_string(dir.join("ca-output")).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().to_str().unwrap();
    let out = tk::nix()
        .args([
            "--extra-experimental-features",
            "nix-command ca-derivations",
        ])
        .args(["--option", "substituters", cache])
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["build", "--store", root, "--no-link"])
        .args(["--max-jobs", "0", "--impure", "--expr", &expr])
        .env_remove("NIX_REMOTE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Nix {ours} cannot substitute the CA build of Nix {theirs} from {cache}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The output the other version built, with its contents.
    let content = std::fs::read_to_string(fresh.path().join(want.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("Nix {ours} did not substitute {want} from {cache}: {e}"));
    assert!(content.contains("ca-dep-"), "{content}");
}

/// Substitutes `outputs` (absent here: another store wrote them) from
/// `cache`, checks Nix recorded the hash the cache promised, and deletes
/// them again so the next cache is really read.
fn substitute_and_check(cache: &str, key: &str, outputs: &[&str], ours: &str, theirs: &str) {
    let out = tk::nix_store()
        .arg("-r")
        .args(outputs)
        .args(["--option", "substituters", cache])
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Nix {ours} cannot substitute from {cache} (written under Nix {theirs}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closure = tk::closure(&outputs.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let dir = Path::new(cache.strip_prefix("file://").unwrap());
    for p in &closure {
        let narinfo = std::fs::read_to_string(dir.join(format!("{}.narinfo", &base(p)[..32])))
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        let promised = narinfo
            .lines()
            .find_map(|l| l.strip_prefix("NarHash: "))
            .unwrap();
        let got = tk::stdout_string(&tk::run(tk::nix_store().args(["-q", "--hash", p])));
        assert_eq!(got.trim(), promised, "{p}");
    }
    let out = tk::nix_store()
        .arg("--delete")
        .args(&closure)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deleting {closure:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap()
}
