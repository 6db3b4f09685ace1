//! What Nix reads from a cache besides NARs and narinfos, read back by a
//! stock Nix 2.8: build logs (`nix log --store`), what `nix store ls
//! --store` lists against our `.ls` listing, and our signatures recorded
//! in the local store (`nix path-info --sigs`).

use std::path::Path;

use crate::support::{Outbox, build_via};
use nix_outbox_testkit as tk;

/// An outbox whose file:// target writes listings and build logs (off by
/// default), with `extra` appended to its config, and a private nix-daemon
/// keeping build logs in `logs`.
fn setup(extra: &str, logs: &Path, nix_conf: &str) -> (Outbox, tk::PrivateDaemon) {
    setup_with(
        |cache| {
            vec![format!(
                "file://{}?compression=zstd&write-nar-listing=true",
                cache.display()
            )]
        },
        extra,
        logs,
        nix_conf,
    )
}

/// [`setup`] with the targets `targets(cache)` returns.
fn setup_with(
    targets: impl FnOnce(&Path) -> Vec<String>,
    extra: &str,
    logs: &Path,
    nix_conf: &str,
) -> (Outbox, tk::PrivateDaemon) {
    setup_with_env(targets, extra, logs, nix_conf, &[])
}

/// [`setup_with`], with `env` for the nix-outbox daemon (S3 credentials).
fn setup_with_env(
    targets: impl FnOnce(&Path) -> Vec<String>,
    extra: &str,
    logs: &Path,
    nix_conf: &str,
    env: &[(&str, &str)],
) -> (Outbox, tk::PrivateDaemon) {
    let mut outbox = Outbox::with_targets(targets, env);
    let mut config = std::fs::read_to_string(&outbox.config).unwrap();
    config.push_str(&format!(
        "upload-build-logs = true\nbuild-log-dir = {logs:?}\n{extra}"
    ));
    std::fs::write(&outbox.config, config).unwrap();
    let nix = tk::PrivateDaemon::start_with_env(
        &format!(
            "post-build-hook = {}\n{nix_conf}",
            crate::support::hook_bin().display()
        ),
        &[
            ("NIX_OUTBOX_CONFIG", outbox.config.to_str().unwrap()),
            ("NIX_LOG_DIR", logs.to_str().unwrap()),
        ],
    );
    outbox.start(Some(&nix.socket));
    (outbox, nix)
}

fn deriver(out: &str) -> String {
    tk::query("--deriver", out)
}

fn sigs(path: &str) -> String {
    tk::stdout_string(&tk::run(tk::nix().args(["path-info", "--sigs", path])))
}

#[test]
fn build_log_listing_and_local_signature_reach_stock_nix() {
    let logs = tempfile::tempdir().unwrap();
    let (outbox, nix) = setup("sign-local-store = true\n", logs.path(), "");
    let nonce = tk::nonce();
    let marker = format!("LOG-MARKER-{nonce}");
    let expr = tk::sh_derivation(
        &format!("extras-{nonce}"),
        &["out", "dev"],
        &format!(
            "echo {marker}; echo second line >&2; mkdir -p $out/sub; echo hi > $out/sub/file; \
             chmod +x $out/sub/file; ln -s sub/file $out/link; echo dev > $dev"
        ),
    );
    // nix-build prints only the default output of a bare derivation.
    let outs = build_via(&nix, &format!("(let d = {expr}; in [ d.out d.dev ])"));
    assert_eq!(outs.len(), 2, "{outs:?}");
    outbox.wait();
    outbox.assert_cache_valid();
    let drv = deriver(&outs[0]);
    let drv_base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    // Nix kept it compressed (compress-build-log defaults to true) ...
    assert!(
        logs.path()
            .join(format!("drvs/{}/{}.bz2", &drv_base[..2], &drv_base[2..]))
            .exists()
    );
    // ... and the cache has it as plain text, as BinaryCacheStore writes it.
    let cached = std::fs::read_to_string(outbox.cache.join("log").join(drv_base)).unwrap();
    assert!(cached.contains(&marker), "{cached:?}");
    assert!(cached.contains("second line"), "{cached:?}");

    // Stock Nix reads it from the cache, for either output: it finds the
    // deriver in the output's narinfo, then fetches `log/<drv>`. (Nix 2.8
    // refuses the `.drv` itself as an installable: the cache holds no
    // `.drv`, so it is not a valid path there.)
    let cache = outbox.cache_url();
    for out in &outs {
        let shown = tk::stdout_string(&tk::run(tk::nix().args(["log", "--store", &cache, out])));
        assert!(shown.contains(&marker), "nix log {out} printed {shown:?}");
    }

    // `nix store ls --store <cache>` lists what we uploaded. (Nix 2.8
    // reads the NAR for this, not the `.ls`; nix-index and Hydra-style
    // tools read the `.ls`, so it must say the same, checked below.)
    let listed = tk::stdout_string(&tk::run(
        tk::nix().args(["store", "ls", "--store", &cache, "-lR", &outs[0]]),
    ));
    let line = |suffix: &str| {
        listed
            .lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no line ending in {suffix:?}: {listed}"))
            .to_owned()
    };
    assert!(line("/sub/file").starts_with("-r-xr-xr-x"), "{listed}");
    assert!(
        line("/link -> sub/file").starts_with("lrwxrwxrwx"),
        "{listed}"
    );
    assert!(line("/sub").starts_with("dr-xr-xr-x"), "{listed}");
    let hash = &Path::new(&outs[0]).file_name().unwrap().to_str().unwrap()[..32];
    let ls: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outbox.cache.join(format!("{hash}.ls"))).unwrap())
            .unwrap();
    assert_eq!(ls["version"], 1);
    let root = &ls["root"]["entries"];
    assert_eq!(
        root["link"],
        serde_json::json!({"type": "symlink", "target": "sub/file"})
    );
    let file = &root["sub"]["entries"]["file"];
    assert_eq!(file["type"], "regular");
    assert_eq!(file["size"], 3);
    assert_eq!(file["executable"], true);
    assert!(file["narOffset"].as_u64().unwrap() > 0, "{ls}");

    // Our key's signature is in the local store's records of both outputs.
    let key_name = outbox.public_key.split(':').next().unwrap().to_owned();
    for out in &outs {
        let s = sigs(out);
        assert!(s.contains(&format!("{key_name}:")), "{out}: {s}");
    }
}

#[test]
fn a_build_without_a_kept_log_uploads_fine_and_signs_nothing_locally() {
    let logs = tempfile::tempdir().unwrap();
    // keep-build-log = false: Nix writes no log; sign-local-store is off
    // by default.
    let (outbox, nix) = setup("", logs.path(), "keep-build-log = false");
    let nonce = tk::nonce();
    let outs = build_via(
        &nix,
        &tk::sh_derivation(&format!("nolog-{nonce}"), &["out"], "echo x > $out"),
    );
    outbox.wait();
    outbox.assert_cache_valid();
    assert!(outbox.has(&outs[0]));
    let drv = deriver(&outs[0]);
    let drv_base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    assert!(!outbox.cache.join("log").join(drv_base).exists());
    let status = outbox.status_json().to_string();
    assert!(!status.contains("build log"), "{status}");
    let key_name = outbox.public_key.split(':').next().unwrap().to_owned();
    let s = sigs(&outs[0]);
    assert!(!s.contains(&format!("{key_name}:")), "{s}");
}

#[test]
fn build_log_reaches_an_http_cache() {
    let web = tk::webdav::WebDavServer::start();
    let base = web.url("cache");
    let logs = tempfile::tempdir().unwrap();
    let (outbox, nix) = setup_with(|_| vec![base.clone()], "", logs.path(), "");
    let nonce = tk::nonce();
    let marker = format!("HTTP-LOG-{nonce}");
    let outs = build_via(
        &nix,
        &tk::sh_derivation(
            &format!("httplog-{nonce}"),
            &["out"],
            &format!("echo {marker}; echo x > $out"),
        ),
    );
    outbox.wait();
    let drv = deriver(&outs[0]);
    let drv_base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    let stored = web.root().join("cache/log").join(drv_base);
    let text = std::fs::read_to_string(&stored)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}\n{}", stored.display(), outbox.log(), web.log()));
    assert!(text.contains(&marker), "{text:?}");
    let shown = tk::stdout_string(&tk::run(tk::nix().args([
        "log",
        "--store",
        &base,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        &outs[0],
    ])));
    assert!(shown.contains(&marker), "nix log printed {shown:?}");
}

#[test]
fn build_log_reaches_an_s3_cache() {
    let s3 = tk::s3::S3Server::start("nix-cache");
    let url = format!(
        "s3://nix-cache?endpoint={}&scheme=http&region=us-east-1",
        s3.endpoint()
    );
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
    ];
    let (outbox, nix) = setup_with_env(|_| vec![url.clone()], "", logs.path(), "", &env);
    let nonce = tk::nonce();
    let marker = format!("S3-LOG-{nonce}");
    let outs = build_via(
        &nix,
        &tk::sh_derivation(
            &format!("s3log-{nonce}"),
            &["out"],
            &format!("echo {marker}; echo x > $out"),
        ),
    );
    outbox.wait();
    let drv = deriver(&outs[0]);
    let drv_base = Path::new(&drv).file_name().unwrap().to_str().unwrap();
    let stored = s3.bucket_dir().join("log").join(drv_base);
    let text = std::fs::read_to_string(&stored)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}\n{}", stored.display(), outbox.log(), s3.log()));
    assert!(text.contains(&marker), "{text:?}");
    // Nix reads the bucket's directory as a file:// cache, as in the other
    // S3 tests: the log is where `nix log` looks for it.
    let bucket = format!("file://{}", s3.bucket_dir().display());
    let shown = tk::stdout_string(&tk::run(tk::nix().args([
        "log",
        "--store",
        &bucket,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        &outs[0],
    ])));
    assert!(shown.contains(&marker), "nix log printed {shown:?}");
}

/// CA realisations, first step: our protocol client's QueryRealisation
/// (op 43) returns the realisation a real Nix 2.8 daemon recorded for a
/// content-addressed derivation's output, as `nix realisation info` shows
/// it. (Uploading `realisations/<id>.doi`: see tests/realisations.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn query_realisation_returns_what_nix_recorded_for_a_ca_output() {
    use nix_outbox_core::StoreDir;
    use nix_outbox_store::{StoreAddress, StorePool};

    let nix = tk::PrivateDaemon::start("extra-experimental-features = ca-derivations");
    let remote = format!("unix://{}", nix.socket.display());
    let nonce = tk::nonce();
    let expr = format!(
        r#"derivation {{ name = "ca-{nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
             __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
             args = [ "-c" "echo {nonce} > $out" ]; }}"#
    );
    let out = tk::run(
        tk::nix_build_cmd(&expr)
            .args(["--extra-experimental-features", "ca-derivations"])
            .env("NIX_REMOTE", &remote),
    );
    let out_path = tk::stdout_string(&out).trim().to_owned();
    let drv = tk::query("--deriver", &out_path);
    let shown = tk::run(
        tk::nix()
            .args(["--extra-experimental-features", "ca-derivations"])
            .args(["realisation", "info", "--json", &drv])
            .env("NIX_REMOTE", &remote),
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let id = shown[0]["id"].as_str().unwrap().to_owned();
    assert!(id.ends_with("!out"), "{shown}");

    let pool = StorePool::new(
        StoreAddress::Socket(nix.socket.clone()),
        StoreDir::default(),
        1,
    );
    let mut conn = pool.get().await.unwrap();
    let json = conn.query_realisation(&id).await.unwrap().unwrap();
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(got["id"], id, "{json}");
    let base = Path::new(&out_path).file_name().unwrap().to_str().unwrap();
    assert_eq!(got["outPath"], base, "{json}");
    assert!(
        got["signatures"].is_array() && got["dependentRealisations"].is_object(),
        "{json}"
    );
    // An output nobody built: no realisation, and the connection is fine.
    let unknown = format!("sha256:{}!out", "0".repeat(64));
    assert_eq!(conn.query_realisation(&unknown).await.unwrap(), None);
    assert!(conn.query_realisation("not an id").await.is_err());
    assert!(!conn.is_broken());
}
