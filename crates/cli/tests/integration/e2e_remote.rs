//! The daemon end to end with remote targets on real servers: builds
//! through a private nix-daemon whose post-build-hook feeds `nix-outbox
//! daemon` (a separate process), uploading to S3 (s3s-fs, which checks
//! SigV4 and S3's 5 MiB part minimum) and to HTTP (nginx taking WebDAV
//! PUTs); then Nix itself verifies the caches and substitutes from them.
//!
//! S3 credentials reach only the daemon process, through its environment
//! or a credentials file it is pointed at, never this test process's
//! environment (tests here run in parallel threads, and a credential in
//! our own environment would also hide a daemon that ignored its own).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Outbox, build_via, delete_and_substitute, graph_expr, has_narinfo};
use nix_outbox_testkit as tk;

/// The bucket every test's s3s-fs serves.
const BUCKET: &str = "nix-cache";

/// A URL for the test's s3s-fs: path-style over plain http on 127.0.0.1.
fn s3_url(s3: &tk::s3::S3Server, extra: &str) -> String {
    format!(
        "s3://{BUCKET}?endpoint={}&scheme=http&region=us-east-1{extra}",
        s3.endpoint()
    )
}

/// The `status --json` entry of the target whose id starts with `prefix`,
/// if it has jobs yet.
fn find_target(json: &serde_json::Value, prefix: &str) -> Option<serde_json::Value> {
    json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"].as_str().unwrap().starts_with(prefix))
        .cloned()
}

fn target_status(json: &serde_json::Value, prefix: &str) -> serde_json::Value {
    find_target(json, prefix).unwrap_or_else(|| panic!("no target {prefix}… in {json}"))
}

/// Asserts the target's jobs are all uploaded: `done` of them, nothing
/// pending, failing, in flight or skipped.
fn assert_all_done(t: &serde_json::Value, done: usize) {
    for key in ["pending", "failing", "in_flight", "skipped"] {
        assert_eq!(t[key], 0, "{key} in {t}");
    }
    assert_eq!(t["done"], done, "{t}");
}

#[test]
fn s3_and_file_targets_at_once() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    // zstd on S3, none on file:// (xz would spend most of the test
    // compressing random bytes), and S3's smallest part size, so that a
    // 12 MiB NAR of random bytes (incompressible) goes up in three parts.
    let s3_target = s3_url(
        &s3,
        "&compression=zstd&multipart-chunk-size=5242880&write-nar-listing=true",
    );
    let mut outbox = Outbox::with_targets(
        |cache| {
            vec![
                s3_target.clone(),
                format!("file://{}?compression=none", cache.display()),
            ]
        },
        &[
            ("AWS_ACCESS_KEY_ID", &s3.access_key),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret_key),
        ],
    );
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    // 2 groups × (leaf, mid with out+dev, top with a 12 MiB blob).
    let outs = build_via(&nix, &graph_expr("remote", 2, 12));
    assert_eq!(outs.len(), 6);
    outbox.wait();
    let bucket = s3.bucket_dir();
    let closure = tk::closure(&outs);
    assert_eq!(closure.len(), 8, "{closure:?}");
    for p in &closure {
        let log = || format!("{}\n--- s3s-fs:\n{}", outbox.log(), s3.log());
        assert!(has_narinfo(&bucket, p), "{p} missing from S3\n{}", log());
        assert!(outbox.has(p), "{p} missing from file://\n{}", log());
        // write-nar-listing applies to the S3 target only.
        let hash = &Path::new(p).file_name().unwrap().to_str().unwrap()[..32];
        assert!(bucket.join(format!("{hash}.ls")).exists(), "{p}: no .ls");
        assert!(!outbox.cache.join(format!("{hash}.ls")).exists(), "{p}");
    }
    outbox.assert_cache_valid_at(&bucket);
    outbox.assert_cache_valid();
    // Each target got its own compression: none here, zstd on S3 (below).
    let file_nars = std::fs::read_dir(outbox.cache.join("nar")).unwrap();
    let names: Vec<_> = file_nars.flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|n| n.to_string_lossy().ends_with(".nar")));
    // S3 NAR keys are `<NarHash>-<random>.nar.zst`. Workers whose closures
    // share a path (mid.out is in mid.dev's closure too) take turns on it,
    // so it goes up once: no orphan NAR that no narinfo names.
    let referenced: Vec<String> = std::fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            assert!(text.contains("\nCompression: zstd\n"), "{text}");
            let url = text.lines().find_map(|l| l.strip_prefix("URL: nar/"));
            url.unwrap().split('-').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(referenced.len(), 8);
    let mut nars = Vec::new();
    for e in std::fs::read_dir(bucket.join("nar")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name.ends_with(".nar.zst"), "{name}");
        let nar_hash = name.split('-').next().unwrap();
        assert!(referenced.iter().any(|r| r == nar_hash), "stray {name}");
        nars.push(name);
    }
    assert_eq!(nars.len(), 8, "each path uploaded once: {nars:?}");
    // Each big NAR (12 MiB) went up as a multipart upload of three 5 MiB
    // parts: s3s-fs logs the assembled object's ETag, which S3 ends in
    // `-<parts>`. No upload was left incomplete (s3s-fs would keep its parts
    // as `.upload*` files).
    let log = s3.log();
    let multipart: Vec<(&str, &str)> = log
        .lines()
        .filter_map(|l| {
            l.split_once("multipart etag, e_tag: \"")?
                .1
                .split_once("\", path: ")
        })
        .collect();
    for top in outs.iter().filter(|p| p.contains("-remote-top")) {
        let hash = &Path::new(top).file_name().unwrap().to_str().unwrap()[..32];
        let info = std::fs::read_to_string(bucket.join(format!("{hash}.narinfo"))).unwrap();
        let url = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        let size = std::fs::metadata(bucket.join(url)).unwrap().len();
        assert!(size > 12 * 1024 * 1024, "{url}: {size} bytes");
        let etag = multipart.iter().find(|(_, p)| p.ends_with(url));
        let Some((etag, _)) = etag else {
            panic!("{url} was not a multipart upload\n{log}")
        };
        assert!(etag.ends_with("-3"), "{url}: ETag {etag}");
    }
    assert_eq!(s3.pending_uploads(), Vec::<String>::new());

    // Every built path is one job per target, and all are done.
    let json = outbox.status_json();
    assert_eq!(json["targets"].as_array().unwrap().len(), 2, "{json}");
    assert_all_done(&target_status(&json, "s3://"), closure.len());
    assert_all_done(&target_status(&json, "file://"), closure.len());
    assert_eq!(json["new_requests"], 0, "{json}");

    // Nix substitutes from each cache on its own.
    let s3_cache = format!("file://{}", bucket.display());
    delete_and_substitute(&s3_cache, &outbox.public_key, &outs);
    delete_and_substitute(&outbox.cache_url(), &outbox.public_key, &outs);
}

#[test]
fn http_target_end_to_end() {
    let web = tk::webdav::WebDavServer::start();
    let base = web.url("cache");
    let mut outbox = Outbox::with_targets(|_| vec![format!("{base}?compression=xz")], &[]);
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    let outs = build_via(&nix, &graph_expr("http", 2, 1));
    assert_eq!(outs.len(), 6);
    outbox.wait();
    let closure = tk::closure(&outs);
    for p in &closure {
        assert!(
            has_narinfo(&web.root().join("cache"), p),
            "{p} missing\n{}\n--- nginx:\n{}",
            outbox.log(),
            web.log()
        );
    }
    let json = outbox.status_json();
    assert_all_done(&target_status(&json, &base), closure.len());

    // An http:// store cannot list its paths (`--all` is refused there):
    // name each one. Nix fetches every narinfo and NAR over http and checks
    // signatures and hashes.
    let verify = |key: &str| {
        tk::nix()
            .args(["store", "verify", "--store", &base])
            .args(["--trusted-public-keys", key])
            .args(["--option", "narinfo-cache-negative-ttl", "0"])
            .args(&closure)
            .output()
            .unwrap()
    };
    let out = verify(&outbox.public_key);
    assert!(
        out.status.success(),
        "nix store verify over http: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A control: trusting only another key, the same check fails.
    let other = nix_outbox_core::keys::SecretKey::generate("other-1").unwrap();
    assert!(!verify(&other.public_key().to_string()).status.success());

    delete_and_substitute(&base, &outbox.public_key, &outs);
}

const WRONG_SECRET: &str = "wrong-secret-e2e-0123456789abcdef";

/// A credentials file with one profile, `[outbox]`.
fn write_credentials(file: &Path, access_key: &str, secret: &str) {
    std::fs::write(
        file,
        format!("[outbox]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
}

#[test]
fn wrong_s3_credentials_show_in_status_and_nothing_is_lost() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    let creds_dir = tempfile::tempdir().unwrap();
    let creds = creds_dir.path().join("credentials");
    write_credentials(&creds, &s3.access_key, WRONG_SECRET);
    let url = s3_url(&s3, "&profile=outbox");
    let mut outbox = Outbox::with_targets(
        |_| vec![url.clone()],
        &[("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap())],
    );
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let expr = tk::sh_derivation(
        "badcreds",
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    );
    let path = build_via(&nix, &expr).remove(0);
    let base = Path::new(&path).file_name().unwrap().to_str().unwrap();

    // The first attempt fails at once; poll until status shows it. The
    // deadline only bounds a hang: the failure comes within a second or two.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failing = loop {
        // The hook's request may not be expanded into a job yet.
        let t = find_target(&outbox.status_json(), "s3://");
        if let Some(t) = t.as_ref().filter(|t| t["failing"] == 1) {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no failure shown after 60 s: {t:?}\n--- daemon log:\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Still queued, not dropped: pending after a failed attempt.
    for key in ["pending", "in_flight", "done", "skipped"] {
        assert_eq!(failing[key], 0, "{key}: {failing}");
    }
    let job = &failing["recent_failures"][0];
    assert_eq!(job["path"], base, "{failing}");
    assert_eq!(job["attempts"], 1, "{failing}");
    let json_text = failing.to_string();

    let out = outbox.cli(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("status with wrong credentials:\n{text}");
    assert!(
        text.contains(base)
            && text.contains("rejected our credentials")
            && text.contains("SignatureDoesNotMatch")
            && text.contains("needs fixing")
            && text.contains("profile [outbox]")
            && text.contains(creds.to_str().unwrap()),
        "{text}"
    );
    // The secret appears nowhere a user (or a log collector) would see it.
    for (what, shown) in [
        ("status", &text),
        ("status --json", &json_text),
        ("daemon log", &outbox.log()),
    ] {
        assert!(!shown.contains(WRONG_SECRET), "{what} shows the secret");
    }
    assert!(!has_narinfo(&s3.bucket_dir(), &path));
    // `wait` does not pretend: it times out naming the path and its error.
    let out = outbox.cli(&["wait", "--timeout", "1"]);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains(base) && msg.contains("needs fixing"), "{msg}");

    // `retry` makes the waiting job due now rather than after its backoff
    // (15–30 s after the first failure): the daemon tries it again at once
    // (and fails again: the credentials are still wrong).
    let out = outbox.cli(&["retry", "--target", &url, &path]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 waiting job(s) are due now"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = target_status(&outbox.status_json(), "s3://");
        if t["recent_failures"][0]["attempts"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second attempt after `retry`: {t}\n--- daemon log:\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = outbox.cli(&["retry", "--target", "s3://elsewhere", &path]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("not a configured target"),
        "{said}"
    );

    // Fix the credentials and restart the daemon: the restart makes every
    // waiting job due at once, and the same job goes up. The long `wait`
    // timeout only bounds a hang.
    outbox.kill();
    write_credentials(&creds, &s3.access_key, &s3.secret_key);
    outbox.start(Some(&nix.socket));
    let out = outbox.cli(&["wait", "--timeout", "400"]);
    assert!(
        out.status.success(),
        "wait after fixing credentials: {}\n--- daemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        outbox.log()
    );
    assert!(has_narinfo(&s3.bucket_dir(), &path), "{}", outbox.log());
    assert!(
        outbox.log().contains("retried now, at start"),
        "{}",
        outbox.log()
    );
    outbox.assert_cache_valid_at(&s3.bucket_dir());
    let t = target_status(&outbox.status_json(), "s3://");
    assert_all_done(&t, 1);
    assert!(
        !outbox.log().contains(&s3.secret_key),
        "log shows the secret"
    );
}
