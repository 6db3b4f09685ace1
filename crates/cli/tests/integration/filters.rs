//! What is uploaded, against the host's real Nix through the hook: paths
//! validly signed by an upstream key are skipped (a forged signature with
//! the same key name is not enough), paths an upstream cache has are
//! skipped while an unreachable upstream blocks nothing, include/exclude
//! patterns apply to requested paths only (a reference is uploaded with its
//! referrer whatever its name), skipped paths are reported as left out by
//! `wait`, `push --wait` and `copy`, and a bad pattern is a configuration
//! error naming it.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::support::{Outbox, build_via, delete_and_substitute};
use nix_outbox_testkit as tk;

/// Appends TOML lines to the outbox's configuration.
fn configure(outbox: &Outbox, lines: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox.config)
        .unwrap();
    writeln!(f, "{lines}").unwrap();
}

/// `nix store sign -k SK PATH` on the local store (as the manual's hook does).
fn sign(sk: &Path, path: &str) {
    tk::run(
        tk::nix()
            .env_remove("NIX_REMOTE")
            .args(["store", "sign", "-k"])
            .arg(sk)
            .arg(path),
    );
}

/// The `skipped_paths` entries of the only target in `status --json`, as
/// (reason, detail, paths).
fn skipped_paths(outbox: &Outbox) -> Vec<(String, String, u64)> {
    let status = outbox.status_json();
    let target = &status["targets"][0];
    target["skipped_paths"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped_paths in {status}"))
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
                e["paths"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn paths_validly_signed_by_an_upstream_key_are_skipped_forged_ones_are_not() {
    let mut outbox = Outbox::new("zstd");
    let keys = tempfile::tempdir().unwrap();
    for d in ["up", "forger"] {
        std::fs::create_dir(keys.path().join(d)).unwrap();
    }
    let (up_sk, up_pk) = tk::nix_generate_key(&keys.path().join("up"), "upstream-test-1");
    // The same key name with another key: what anyone can write.
    let (forged_sk, _) = tk::nix_generate_key(&keys.path().join("forger"), "upstream-test-1");
    let up_pk = std::fs::read_to_string(&up_pk).unwrap();
    configure(&outbox, &format!("upstream-keys = [{:?}]", up_pk.trim()));

    let n = tk::nonce();
    let dep = tk::sh_derivation(&format!("sig-dep-{n}"), &["out"], "echo dep > $out");
    let forged = tk::sh_derivation(&format!("sig-forged-{n}"), &["out"], "echo f > $out");
    let deps = tk::nix_build(&format!("[ ({dep}) ({forged}) ]"));
    let (dep_path, forged_path) = (&deps[0], &deps[1]);
    sign(&up_sk, dep_path);
    sign(&forged_sk, forged_path);

    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let root = tk::sh_derivation(
        &format!("sig-root-{n}"),
        &["out"],
        "echo ${dep} ${forged} > $out",
    );
    let root_path = build_via(
        &nix,
        &format!("let dep = {dep}; forged = {forged}; in {root}"),
    )
    .remove(0);
    outbox.wait();

    assert!(outbox.has(&root_path), "{}", outbox.log());
    assert!(
        !outbox.has(dep_path),
        "the upstream-signed dependency was uploaded"
    );
    assert!(
        outbox.has(forged_path),
        "a path with a forged upstream signature must be uploaded: {}",
        outbox.log()
    );
    assert_eq!(
        skipped_paths(&outbox),
        [("upstream-key".into(), "upstream-test-1".into(), 1)]
    );
    let status = outbox.status_json();
    assert_eq!(status["targets"][0]["failing"], 0, "{status}");
    outbox.assert_cache_valid();
}

#[test]
fn paths_an_upstream_cache_has_are_skipped_and_an_unreachable_upstream_blocks_nothing() {
    let mut outbox = Outbox::new("zstd");
    let up = tempfile::tempdir().unwrap();
    let (up_sk, up_pk) = tk::nix_generate_key(up.path(), "upstream-cache-test-1");
    let up_pk = std::fs::read_to_string(&up_pk).unwrap();
    let up_cache = up.path().join("cache");
    let up_url = format!("file://{}", up_cache.display());
    // An upstream that accepts connections and never answers (we hold the
    // listener and never accept): asked first, it must cost a timeout,
    // not the upload.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    configure(
        &outbox,
        &format!("upstream-keys = []\nupstream-caches = [{hung_url:?}, {up_url:?}]"),
    );

    let n = tk::nonce();
    let dep = tk::sh_derivation(&format!("upc-dep-{n}"), &["out"], "echo dep > $out");
    let dep_path = tk::nix_build(&dep).remove(0);
    sign(&up_sk, &dep_path);
    tk::nix_copy_to(&up_url, &[&dep_path]);

    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let root = tk::sh_derivation(&format!("upc-root-{n}"), &["out"], "echo ${dep} > $out");
    let root_path = build_via(&nix, &format!("let dep = {dep}; in {root}")).remove(0);
    // A second build while the hung upstream counts as down.
    let other = tk::sh_derivation(&format!("upc-other-{n}"), &["out"], "echo o > $out");
    let other_path = build_via(&nix, &other).remove(0);
    outbox.wait();

    assert!(outbox.has(&root_path), "{}", outbox.log());
    assert!(outbox.has(&other_path), "{}", outbox.log());
    assert!(
        !outbox.has(&dep_path),
        "the dependency upstream serves was uploaded"
    );
    assert_eq!(
        skipped_paths(&outbox),
        [("upstream-cache".into(), up_url.clone(), 1)]
    );
    let log = outbox.log();
    assert_eq!(
        log.matches("cannot be asked").count(),
        1,
        "one warning per outage:\n{log}"
    );
    outbox.assert_cache_valid();
    drop(hung);

    // Clients substitute from our cache and the upstream together.
    delete_and_substitute(
        &format!("{} {up_url}", outbox.cache_url()),
        &format!("{} {}", outbox.public_key.trim(), up_pk.trim()),
        &[root_path],
    );
}

/// `nix-outbox copy` without the daemon's NIX_REMOTE (the host's store).
fn copy(outbox: &Outbox, args: &[&str]) -> std::process::Output {
    Command::new(crate::support::outbox_bin())
        .env_remove("NIX_REMOTE")
        .arg("copy")
        .arg("--config")
        .arg(&outbox.config)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The line of `text` naming `path`, asserting there is one.
fn line_of<'a>(text: &'a str, path: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(path))
        .unwrap_or_else(|| panic!("{path} not named in:\n{text}"))
}

#[test]
fn name_patterns_apply_to_requested_paths_and_references_are_uploaded_anyway() {
    let mut outbox = Outbox::new("zstd");
    configure(
        &outbox,
        "upstream-keys = []\ninclude = [\"pat-*\"]\nexclude = [\"*-skipme\"]",
    );
    let n = tk::nonce();
    // Built before the daemon's Nix sees them, so no hook: they have no
    // job of their own and reach the cache only as references.
    let dep = tk::sh_derivation(&format!("pat-dep-{n}-skipme"), &["out"], "echo d > $out");
    let lib = tk::sh_derivation(&format!("lib-{n}"), &["out"], "echo l > $out");
    let xdep = tk::sh_derivation(&format!("pat-xdep-{n}"), &["out"], "echo x > $out");
    let deps = tk::nix_build(&format!("[ ({dep}) ({lib}) ({xdep}) ]"));
    let (dep_path, lib_path, xdep_path) = (&deps[0], &deps[1], &deps[2]);

    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let root = tk::sh_derivation(
        &format!("pat-root-{n}"),
        &["out"],
        "echo ${dep} ${lib} > $out",
    );
    let xroot = tk::sh_derivation(
        &format!("pat-x-{n}-skipme"),
        &["out"],
        "echo ${xdep} > $out",
    );
    let other = tk::sh_derivation(&format!("other-{n}"), &["out"], "echo o > $out");
    let outs = build_via(
        &nix,
        &format!(
            "let dep = {dep}; lib = {lib}; xdep = {xdep}; in [ ({root}) ({xroot}) ({other}) ]"
        ),
    );
    let (root_path, xroot_path, other_path) = (&outs[0], &outs[1], &outs[2]);
    let wait = outbox.cli(&["wait", "--timeout", "120"]);
    assert!(wait.status.success(), "{}\n{}", text(&wait), outbox.log());

    assert!(outbox.has(root_path), "{}", outbox.log());
    // References nothing else serves go with their referrer, whatever
    // their names: the cache must be complete.
    assert!(outbox.has(dep_path), "excluded dependency left out");
    assert!(outbox.has(lib_path), "not-included dependency left out");
    // Requested paths the patterns reject are left out, with their
    // closures (nothing uploaded needs them).
    assert!(!outbox.has(xroot_path), "an excluded output was uploaded");
    assert!(
        !outbox.has(xdep_path),
        "an excluded output's closure was uploaded"
    );
    assert!(
        !outbox.has(other_path),
        "a path no include matches was uploaded"
    );
    outbox.assert_cache_valid();

    let mut skips = skipped_paths(&outbox);
    skips.sort();
    assert_eq!(
        skips,
        [
            ("excluded".into(), "*-skipme".into(), 1),
            ("not-included".into(), String::new(), 1)
        ]
    );
    let status = outbox.status_json();
    assert_eq!(status["targets"][0]["skipped"], 2, "{status}");
    assert_eq!(status["targets"][0]["failing"], 0, "{status}");
    let st = String::from_utf8_lossy(&outbox.cli(&["status"]).stdout).into_owned();
    assert!(
        st.contains("1 excluded by \"*-skipme\"") && st.contains("1 matching no include"),
        "{st}"
    );

    // `wait` says what was left out, and why, never that it was uploaded.
    let said = String::from_utf8_lossy(&wait.stderr).into_owned();
    assert!(said.contains("except 2 path(s) left out"), "{said}");
    let x = line_of(&said, xroot_path);
    assert!(
        x.contains("not uploaded: excluded by pattern \"*-skipme\""),
        "{said}"
    );
    let o = line_of(&said, other_path);
    assert!(
        o.contains("not uploaded: matches no include pattern"),
        "{said}"
    );
    assert!(!said.contains(root_path.as_str()), "{said}");

    // So does `push --wait`, for its own paths only.
    let push = outbox.cli(&["push", "--wait", "--timeout", "120", other_path]);
    assert!(push.status.success(), "{}", text(&push));
    let said = String::from_utf8_lossy(&push.stderr).into_owned();
    assert!(said.contains("except 1 path(s) left out"), "{said}");
    assert!(
        line_of(&said, other_path).contains("not uploaded: matches no include pattern"),
        "{said}"
    );
    assert!(!said.contains(xroot_path.as_str()), "{said}");

    // `copy` of a rejected path: exit 0, but unmistakably not uploaded.
    let out = copy(&outbox, &[other_path, xroot_path]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for (path, why) in [
        (other_path, "matches no include pattern"),
        (xroot_path, "excluded by pattern \"*-skipme\""),
    ] {
        let l = line_of(&said, path);
        assert!(
            l.starts_with(&format!("NOT uploaded: {path}: {why}"))
                && l.contains("use --no-filters"),
            "{}",
            text(&out)
        );
        assert!(!outbox.has(path));
    }
    assert!(!said.contains("uploaded 0"), "{}", text(&out));
    let forced = copy(&outbox, &["--no-filters", other_path]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(outbox.has(other_path), "{}", text(&forced));
    outbox.assert_cache_valid();
}

#[test]
fn copy_to_a_cache_that_is_also_an_upstream_is_refused() {
    let outbox = Outbox::new("zstd");
    let up = tempfile::tempdir().unwrap();
    let up_url = format!("file://{}", up.path().display());
    configure(&outbox, &format!("upstream-caches = [{up_url:?}]"));
    let out = copy(
        &outbox,
        &["--to", &format!("{up_url}?compression=xz"), "/nix/store/x"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("also listed in upstream-caches") && stderr.contains(&up_url),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(up.path()).unwrap().count(), 0);
}

#[test]
fn a_bad_pattern_is_a_configuration_error_naming_it() {
    let outbox = Outbox::new("zstd");
    configure(&outbox, "exclude = [\"*.drv\", \"[oops\"]");
    let out = outbox.cli(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exclude pattern \"[oops\"")
            && stderr.contains(&outbox.config.display().to_string()),
        "{stderr}"
    );
}
