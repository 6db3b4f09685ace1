//! CA realisations end to end, against a real Nix 2.8 with
//! `ca-derivations`: our hash modulo gives the ids Nix gives, the daemon
//! publishes `realisations/<id>.doi` signed with our key, and a fresh
//! store substitutes a content-addressed output from our cache alone.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use crate::support::Outbox;
use nix_outbox_core::StoreDir;
use nix_outbox_core::derivation::hash_modulo;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_testkit as tk;

const FEATURES: &str = "nix-command ca-derivations";

/// A content-addressed derivation `top` using a content-addressed `dep`
/// and a fixed-output `fod`, its output referencing both (so its
/// realisation depends on theirs). Every build appends a line to
/// `marker`.
pub(crate) fn expr(nonce: &str, marker: &Path) -> String {
    let m = marker.display();
    format!(
        r#"let
  sys = builtins.currentSystem;
  fod = derivation {{ name = "fod-{nonce}"; system = sys; builder = "/bin/sh";
    args = [ "-c" "printf hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"; }};
  ca = name: script: derivation {{ inherit name; system = sys; builder = "/bin/sh";
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" script ]; }};
  dep = ca "ca-dep-{nonce}" "echo dep >> {m}; echo dep-{nonce} > $out";
in ca "ca-top-{nonce}" "echo top >> {m}; echo ${{dep}} ${{fod}} > $out""#
    )
}

/// The `.drv` of `expr`, instantiated through `remote`.
fn instantiate(remote: &str, expr: &str) -> String {
    let out = tk::run(
        Command::new("nix-instantiate")
            .args(["--extra-experimental-features", "ca-derivations"])
            .args(["--expr", expr])
            .env("NIX_REMOTE", remote),
    );
    tk::stdout_string(&out).trim().to_owned()
}

/// `nix realisation info --json` of the output of `drv`, in `store` (a
/// daemon socket URL or a local store root).
fn realisation_info(store: &str, drv: &str) -> serde_json::Value {
    let out = tk::run(
        tk::nix()
            .args(["--extra-experimental-features", FEATURES])
            .args(["realisation", "info", "--json", "--store", store, drv])
            .env_remove("NIX_REMOTE"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_outputs_are_published_with_signed_realisations_and_substituted() {
    let marker_dir = tempfile::tempdir().unwrap();
    // The builders run as nixbld users.
    std::fs::set_permissions(marker_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = marker_dir.path().join("builds");
    // Each build may run as a different nixbld user (which one is free
    // depends on what else builds at the time): the first builder's
    // umask would leave the file unwritable to the others, whose `echo`
    // then fails silently and the marker misses their build.
    std::fs::write(&marker, "").unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o666)).unwrap();

    let mut outbox = Outbox::with_targets(|cache| vec![format!("file://{}", cache.display())], &[]);
    let nix = tk::PrivateDaemon::start_with_env(
        &format!(
            "post-build-hook = {}\nextra-experimental-features = ca-derivations",
            crate::support::hook_bin().display()
        ),
        &[("NIX_OUTBOX_CONFIG", outbox.config.to_str().unwrap())],
    );
    outbox.start(Some(&nix.socket));
    let remote = format!("unix://{}", nix.socket.display());

    let nonce = tk::nonce();
    let expr = expr(&nonce, &marker);
    let outs = tk::run(
        tk::nix_build_cmd(&expr)
            .args(["--extra-experimental-features", "ca-derivations"])
            .env("NIX_REMOTE", &remote),
    );
    let outs: Vec<String> = tk::stdout_string(&outs)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(outs.len(), 1, "{outs:?}");
    let built = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(built, "dep\ntop\n");
    outbox.wait();
    outbox.assert_cache_valid();

    // Golden ids: ours, computed from the .drv files read through the
    // daemon, against what Nix itself recorded. Nix 2.8 builds a CA
    // derivation with CA inputs by first *resolving* it (inputs replaced
    // by their outputs) and records a realisation for both the original
    // and the resolved `.drv`; the output's deriver is the resolved one.
    let sd = StoreDir::default();
    let pool = StorePool::new(StoreAddress::Socket(nix.socket.clone()), sd.clone(), 1);
    let orig_drv = instantiate(&remote, &expr);
    let resolved_drv = tk::query("--deriver", &outs[0]);
    assert_ne!(orig_drv, resolved_drv);
    let mut ids = Vec::new();
    for drv in [&orig_drv, &resolved_drv] {
        let nix_id = realisation_info(&remote, drv)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let ours = nix_outbox_store::ca_realisation_ids(&pool, &sd.parse_path(drv).unwrap())
            .await
            .unwrap();
        assert_eq!(ours, vec![("out".to_owned(), nix_id.clone())], "{drv}");
        ids.push(nix_id);
    }
    let resolved_id = ids[1].clone();
    let orig = nix_outbox_store::read_derivation(&pool, &sd.parse_path(&orig_drv).unwrap())
        .await
        .unwrap();
    assert_eq!(orig.input_drvs.len(), 2);
    let mut dep_id = None;
    for input in &orig.input_drvs {
        let shown = sd.display(&input.path);
        let nix_id = realisation_info(&remote, &shown)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let d = nix_outbox_store::read_derivation(&pool, &input.path)
            .await
            .unwrap();
        let fixed = d.outputs[0].path.is_some();
        // The fixed-output one has no floating output: no id of ours to
        // upload, but the pure function still gives Nix's.
        let ids = nix_outbox_store::ca_realisation_ids(&pool, &input.path)
            .await
            .unwrap();
        assert_eq!(ids.is_empty(), fixed, "{shown}");
        let hashes = hash_modulo::hash_derivation_modulo(&d, &shown, &sd, true, |_| {
            Err("has no inputs".into())
        })
        .unwrap();
        assert_eq!(hash_modulo::drv_output_ids(&hashes)[0].1, nix_id);
        if !fixed {
            dep_id = Some(nix_id);
        }
    }
    let dep_id = dep_id.unwrap();

    // The cache has the realisations of the derivations the hook named
    // (each output's job publishes its own), signed by our key.
    let key_name = outbox.public_key.split(':').next().unwrap().to_owned();
    // The original `.drv`'s realisation is not published: Nix 2.8 runs the
    // hook for the resolved `.drv` first, and the original's later request
    // joins the job that request already owns (see the report/README).
    for id in [&resolved_id, &dep_id] {
        let file = outbox.cache.join(format!("realisations/{id}.doi"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", file.display(), outbox.log()));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], id.as_str());
        let sigs = v["signatures"].as_array().unwrap();
        assert!(
            sigs.iter()
                .any(|s| s.as_str().unwrap().starts_with(&format!("{key_name}:"))),
            "{text}"
        );
    }

    // A fresh store substitutes the CA output from our cache alone:
    // `--max-jobs 0` forbids building, and the marker shows nothing ran.
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().to_str().unwrap();
    let cache = outbox.cache_url();
    let from_cache = |cmd: &mut Command| {
        cmd.args(["--extra-experimental-features", FEATURES])
            .args(["--option", "substituters", &cache])
            .args(["--option", "trusted-public-keys", &outbox.public_key])
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            .env_remove("NIX_REMOTE");
    };
    let mut build = tk::nix();
    from_cache(&mut build);
    tk::run(build.args([
        "build",
        "--store",
        root,
        "--no-link",
        "--max-jobs",
        "0",
        "--impure",
        "--expr",
        &expr,
    ]));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), built);
    let out_base = Path::new(&outs[0]).file_name().unwrap().to_str().unwrap();
    // The resolved derivation's realisation came from our cache, with our
    // signature (Nix re-signs nothing it substitutes).
    let got = realisation_info(root, &resolved_drv);
    assert_eq!(got["id"], resolved_id.as_str(), "{got}");
    assert_eq!(got["outPath"], out_base, "{got}");
    let sigs = got["signatures"].as_array().unwrap();
    assert!(
        sigs.iter()
            .any(|s| s.as_str().unwrap().starts_with(&format!("{key_name}:"))),
        "{got}"
    );
    // Nix itself checks our signature when a realisation is added to a
    // store that requires signatures (Nix 2.8 checks none when
    // substituting): copying it on from the fresh store succeeds when our
    // key is trusted and is refused when only another key is.
    let copy_on = |trusted: &str| {
        let to = tempfile::tempdir().unwrap();
        tk::nix()
            .args(["--extra-experimental-features", FEATURES])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "trusted-public-keys", trusted])
            .args(["copy", "--from", root, "--to", to.path().to_str().unwrap()])
            .arg(&resolved_drv)
            .env_remove("NIX_REMOTE")
            .output()
            .unwrap()
    };
    let ok = copy_on(&outbox.public_key);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let other = SecretKey::generate("someone-else-1").unwrap().public_key();
    let refused = copy_on(&other.to_string());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("lacks a valid signature"),
        "{stderr}"
    );
    let content = std::fs::read_to_string(fresh.path().join(outs[0].trim_start_matches('/')));
    assert!(content.unwrap().contains(&format!("ca-dep-{nonce}")));
}

/// The same through an HTTP (WebDAV) target: the realisation is PUT as
/// `realisations/<id>.doi`, and a fresh store substitutes from there.
#[test]
fn a_ca_realisation_reaches_an_http_cache() {
    let web = tk::webdav::WebDavServer::start();
    let base = web.url("cache");
    realisation_through(&base, &[], &web.root().join("cache"), &base, &|| web.log());
}

/// And through S3 (s3s-fs); Nix reads the bucket's directory as a file://
/// cache, as in the other S3 tests.
#[test]
fn a_ca_realisation_reaches_an_s3_cache() {
    let s3 = tk::s3::S3Server::start("nix-cache");
    let url = format!(
        "s3://nix-cache?endpoint={}&scheme=http&region=us-east-1",
        s3.endpoint()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
    ];
    let bucket = s3.bucket_dir();
    let substituter = format!("file://{}", bucket.display());
    realisation_through(&url, &env, &bucket, &substituter, &|| s3.log());
}

/// Builds a CA derivation through the hook with `target` as the only
/// cache (whose files end up under `cache_root`), checks the signed
/// realisation is there, and that a fresh store substitutes the output
/// from `substituter` without building.
fn realisation_through(
    target: &str,
    env: &[(&str, &str)],
    cache_root: &Path,
    substituter: &str,
    server_log: &dyn Fn() -> String,
) {
    let mut outbox = Outbox::with_targets(|_| vec![target.to_owned()], env);
    let nix = tk::PrivateDaemon::start_with_env(
        &format!(
            "post-build-hook = {}\nextra-experimental-features = ca-derivations",
            crate::support::hook_bin().display()
        ),
        &[("NIX_OUTBOX_CONFIG", outbox.config.to_str().unwrap())],
    );
    outbox.start(Some(&nix.socket));
    let remote = format!("unix://{}", nix.socket.display());
    let nonce = tk::nonce();
    let expr = format!(
        r#"derivation {{ name = "ca-remote-{nonce}"; system = builtins.currentSystem;
             builder = "/bin/sh"; __contentAddressed = true;
             outputHashMode = "recursive"; outputHashAlgo = "sha256";
             args = [ "-c" "echo {nonce} > $out" ]; }}"#
    );
    let out = tk::run(
        tk::nix_build_cmd(&expr)
            .args(["--extra-experimental-features", "ca-derivations"])
            .env("NIX_REMOTE", &remote),
    );
    let out = tk::stdout_string(&out).trim().to_owned();
    outbox.wait();
    let drv = tk::query("--deriver", &out);
    let id = realisation_info(&remote, &drv)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = cache_root.join(format!("realisations/{id}.doi"));
    let text = std::fs::read_to_string(&stored).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{}\n{}",
            stored.display(),
            outbox.log(),
            server_log()
        )
    });
    let key_name = outbox.public_key.split(':').next().unwrap().to_owned();
    assert!(text.contains(&format!("\"{key_name}:")), "{text}");

    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().to_str().unwrap();
    tk::run(
        tk::nix()
            .args(["--extra-experimental-features", FEATURES])
            .args(["--option", "substituters", substituter])
            .args(["--option", "trusted-public-keys", &outbox.public_key])
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            .args(["build", "--store", root, "--no-link", "--max-jobs", "0"])
            .args(["--impure", "--expr", &expr])
            .env_remove("NIX_REMOTE"),
    );
    let got = realisation_info(root, &drv);
    assert_eq!(got["id"], id.as_str(), "{got}");
    assert!(fresh.path().join(out.trim_start_matches('/')).exists());
}
