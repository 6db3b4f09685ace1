//! `nix-outbox copy` against the host's real Nix: a closure copied to a
//! file:// cache passes `nix store verify`, copying again uploads nothing,
//! and bad arguments fail before anything is uploaded, naming the culprit.

use std::path::Path;
use std::process::{Command, Output};

use nix_outbox_testkit as tk;

/// `nix-outbox copy --config CONFIG ARGS…`, on the same store `tk::nix_build`
/// builds into.
fn copy(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nix-outbox"))
        .env_remove("NIX_REMOTE")
        .arg("copy")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run nix-outbox copy")
}

#[test]
fn copies_a_closure_once_and_refuses_non_store_paths() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nix's own key generator: what `copy` signs with must be what Nix checks.
    let (sk, pk) = tk::nix_generate_key(d, "copy-test-1");
    let cache = d.join("cache");
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state-dir = {:?}\nsecret-key-files = [{:?}]\ntargets = [\"file://{}?compression=zstd\"]\n",
            d.join("state"),
            sk,
            cache.display()
        ),
    )
    .unwrap();

    // A root referencing a dependency: the closure has two paths, and the
    // dependency must reach the cache too.
    let n = tk::nonce();
    let dep = tk::sh_derivation(&format!("copy-dep-{n}"), &["out"], "echo dep > $out");
    let root = tk::sh_derivation(
        &format!("copy-root-{n}"),
        &["out"],
        "echo ${dep} > $out; echo root >> $out",
    );
    let root_path = tk::nix_build(&format!("let dep = {dep}; in {root}")).remove(0);
    let closure = tk::closure(std::slice::from_ref(&root_path));
    assert_eq!(closure.len(), 2, "{closure:?}");

    let url = format!("file://{}?compression=zstd", cache.display());
    let first = copy(&config, &["--to", &url, &root_path]);
    assert!(first.status.success(), "{}", tk::describe(&first));
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&root_path) && stdout.contains("uploaded 2, already present 0"),
        "{}",
        tk::describe(&first)
    );
    for p in &closure {
        let base = Path::new(p).file_name().unwrap().to_str().unwrap();
        let narinfo = cache.join(format!("{}.narinfo", &base[..32]));
        assert!(narinfo.exists(), "{} missing", narinfo.display());
    }
    let public_key = std::fs::read_to_string(&pk).unwrap();
    let verify = tk::nix_store_verify_all(&format!("file://{}", cache.display()), &public_key);
    assert!(verify.status.success(), "{}", tk::describe(&verify));

    // Again, through the configured target this time: everything is there.
    let second = copy(&config, &[&root_path]);
    assert!(second.status.success(), "{}", tk::describe(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("uploaded 0, already present 2"),
        "{}",
        tk::describe(&second)
    );

    // A path outside the store fails, names it, and uploads nothing (not
    // even the valid path given with it).
    let outside = d.join("not-in-the-store");
    std::fs::write(&outside, "x").unwrap();
    let outside = outside.to_str().unwrap();
    let nars_before = std::fs::read_dir(cache.join("nar")).unwrap().count();
    let bad = copy(&config, &[&root_path, outside]);
    assert!(!bad.status.success(), "{}", tk::describe(&bad));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(outside) && stderr.contains("not directly inside the store"),
        "{}",
        tk::describe(&bad)
    );
    assert!(bad.stdout.is_empty(), "{}", tk::describe(&bad));
    assert_eq!(
        std::fs::read_dir(cache.join("nar")).unwrap().count(),
        nars_before
    );

    // A well-formed store path that is not valid fails with its name.
    let gone = format!("/nix/store/{}-copy-never-built-{n}", "0".repeat(32));
    let invalid = copy(&config, &[&gone]);
    assert!(!invalid.status.success(), "{}", tk::describe(&invalid));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains(&gone) && stderr.contains("not valid"),
        "{}",
        tk::describe(&invalid)
    );

    // A bad --to URL fails before anything else happens.
    let bad_url = copy(&config, &["--to", "ftp://example.invalid/x", &root_path]);
    assert!(!bad_url.status.success(), "{}", tk::describe(&bad_url));
    assert!(
        String::from_utf8_lossy(&bad_url.stderr).contains("ftp://example.invalid/x"),
        "{}",
        tk::describe(&bad_url)
    );

    // Tidy up the store: referrer first.
    let _ = tk::nix_store()
        .env_remove("NIX_REMOTE")
        .args(["--delete", &root_path])
        .output();
    let _ = tk::nix_store()
        .env_remove("NIX_REMOTE")
        .arg("--delete")
        .args(&closure)
        .output();
}
