//! Helpers shared by the upload tests: a small graph of real store paths,
//! a private daemon's pool, keys, and Nix commands that substitute from a
//! cache. Each test binary (`integration`, and each S3 test that runs in
//! a process of its own) uses a subset, hence the dead-code allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix_outbox_core::keys::SecretKey;
use nix_outbox_core::{StoreDir, StorePath};
use nix_outbox_store::{PathInfo, StoreAddress, StorePool};
use nix_outbox_testkit as tk;

pub fn sd() -> StoreDir {
    StoreDir::default()
}

pub fn sp(s: &str) -> StorePath {
    sd().parse_path(s).unwrap()
}

/// Makes this run's derivations differ from every earlier run's, so the
/// paths are fresh and deleting them cannot disturb anything else.
pub fn unique_tag(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Builds: a leaf; a tree with an empty file, an executable, relative,
/// absolute (referencing the leaf) and dangling symlinks, nested and empty
/// directories, a self-reference, and some compressible and random data; a
/// three-output derivation whose `out` refers to the tree and `dev` to
/// `out`; and a top path referring to `dev`, `doc` and the leaf. Returns all
/// six outputs, top first.
pub fn build_graph(tag: &str) -> Vec<String> {
    let leaf = tk::sh_derivation(&format!("up-leaf-{tag}"), &["out"], "echo leaf > $out");
    let tree = tk::sh_derivation(
        &format!("up-tree-{tag}"),
        &["out"],
        "mkdir -p $out/sub/deeper $out/bin $out/empty-dir
         : > $out/empty
         : > $out/sub/deeper/empty2
         printf '#!/bin/sh\\necho hi\\n' > $out/bin/hello; chmod +x $out/bin/hello
         ln -s ../empty $out/sub/rel-link
         ln -s LEAF $out/abs-link
         ln -s /nonexistent/target $out/dangling
         echo $out > $out/self-ref
         seq 1 300000 > $out/compressible
         head -c 1048576 /dev/urandom > $out/random",
    )
    .replace("LEAF", &format!("${{{leaf}}}"));
    let multi = tk::sh_derivation(
        &format!("up-multi-{tag}"),
        &["out", "dev", "doc"],
        "mkdir -p $out; echo TREE > $out/tree-ref; echo $out > $dev; echo doc > $doc",
    )
    .replace("TREE", &format!("${{{tree}}}"));
    let top = tk::sh_derivation(
        &format!("up-top-{tag}"),
        &["out"],
        "echo DEV DOC LEAF > $out",
    )
    .replace("DEV", "${m.dev}")
    .replace("DOC", "${m.doc}")
    .replace("LEAF", &format!("${{{leaf}}}"));
    let expr = format!("let m = {multi}; t = {top}; in [ t m.out m.dev m.doc ({tree}) ({leaf}) ]");
    let outs = tk::nix_build(&expr);
    assert_eq!(outs.len(), 6, "{outs:?}");
    outs
}

pub fn pool(daemon: &tk::PrivateDaemon) -> StorePool {
    StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd(), 2)
}

pub async fn path_info(pool: &StorePool, path: &str) -> PathInfo {
    let mut conn = pool.get().await.unwrap();
    conn.query_path_info(&sd(), &sp(path))
        .await
        .unwrap()
        .unwrap()
}

pub fn key() -> SecretKey {
    SecretKey::generate("outbox-test-1").unwrap()
}

pub fn file_url(dir: &Path, params: &str) -> String {
    if params.is_empty() {
        format!("file://{}", dir.display())
    } else {
        format!("file://{}?{params}", dir.display())
    }
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Deletes `paths` from the store; pass referrers before references.
pub fn delete_paths(paths: &[String]) {
    tk::run(
        tk::nix_store()
            .env_remove("NIX_REMOTE")
            .arg("--delete")
            .args(paths),
    );
    for p in paths {
        assert!(!Path::new(p).exists(), "{p} still exists after deletion");
    }
}

/// `nix-store -r` substituting only from `cache_url`, trusting only
/// `public_key`.
pub fn substitute(paths: &[String], cache_url: &str, public_key: &str) {
    tk::run(
        Command::new("nix-store")
            .env_remove("NIX_REMOTE")
            .arg("-r")
            .args(paths)
            .args(["--option", "substituters", cache_url])
            .args(["--option", "trusted-public-keys", public_key])
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            .args(["--option", "narinfo-cache-positive-ttl", "0"]),
    );
}

/// Re-hashes `path` on disk against its database record.
pub fn verify_path(path: &str) {
    tk::run(tk::nix_store().args(["--verify-path", path]));
}

/// The closure of `roots`, references before referrers, from Nix itself.
pub fn closure_topological(roots: &[String]) -> Vec<String> {
    let out = tk::run(tk::nix_store().arg("-qR").args(roots));
    let paths = tk::stdout_string(&out);
    let paths: Vec<&str> = paths.lines().collect();
    let refs: BTreeMap<&str, Vec<String>> = paths
        .iter()
        .map(|p| {
            let r = tk::stdout_string(&tk::run(tk::nix_store().args(["-q", "--references", p])));
            (*p, r.lines().map(str::to_owned).collect())
        })
        .collect();
    let mut done: Vec<String> = Vec::new();
    while done.len() < paths.len() {
        for p in &paths {
            let ready = refs[p].iter().all(|r| r == p || done.contains(r));
            if !done.iter().any(|d| d == p) && ready {
                done.push((*p).to_owned());
            }
        }
    }
    done
}

/// Builds a closure of three paths: a small leaf; a path with `mib` MiB of
/// random (incompressible) data, so its compressed NAR is about as large,
/// plus an executable and a symlink; and a top path referring to both.
/// Returns (top, big).
pub fn build_big(tag: &str, mib: u32) -> (String, String) {
    let leaf = tk::sh_derivation(&format!("up-bigleaf-{tag}"), &["out"], "echo leaf > $out");
    let big = tk::sh_derivation(
        &format!("up-big-{tag}"),
        &["out"],
        &format!(
            "mkdir -p $out/bin; head -c {} /dev/urandom > $out/random;
             printf '#!/bin/sh\\n' > $out/bin/x; chmod +x $out/bin/x; ln -s bin/x $out/link",
            u64::from(mib) * 1024 * 1024
        ),
    );
    let top = tk::sh_derivation(
        &format!("up-bigtop-{tag}"),
        &["out"],
        "echo BIG LEAF > $out",
    )
    .replace("BIG", &format!("${{{big}}}"))
    .replace("LEAF", &format!("${{{leaf}}}"));
    let outs = tk::nix_build(&format!("[ ({top}) ({big}) ]"));
    assert_eq!(outs.len(), 2, "{outs:?}");
    (outs[0].clone(), outs[1].clone())
}

/// Every store path in the closure of `roots` has the NAR hash it had
/// before (`hashes`) and passes `nix-store --verify-path`.
pub fn check_restored(hashes: &BTreeMap<String, String>) {
    for (p, h) in hashes {
        assert_eq!(&tk::query("--hash", p), h, "{p}");
        verify_path(p);
    }
}

/// NAR hashes of the closure of `roots`, from Nix.
pub fn closure_hashes(roots: &[String]) -> BTreeMap<String, String> {
    tk::closure(roots)
        .into_iter()
        .map(|p| {
            let h = tk::query("--hash", &p);
            (p, h)
        })
        .collect()
}
