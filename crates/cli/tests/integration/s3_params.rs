//! Nix 2.35's S3 URL parameters against a real S3 server (s3s-fs): a URL
//! written as Nix 2.35's documentation writes one, `storage-class` as the
//! server receives it, and `multipart-threshold` deciding between one
//! `PUT` and a multipart upload.

use std::path::Path;
use std::process::{Command, Output};

use nix_outbox_testkit as tk;

const BUCKET: &str = "nix-cache";

fn copy(config: &Path, creds: &Path, url: &str, paths: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nix-outbox"))
        .env_remove("NIX_REMOTE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", creds)
        .args(["copy", "--config"])
        .arg(config)
        .args(["--to", url])
        .args(paths)
        .output()
        .expect("run nix-outbox copy")
}

/// The NAR the narinfo of `path` names in `bucket`.
fn nar_of(bucket: &Path, path: &str) -> String {
    let hash = &Path::new(path).file_name().unwrap().to_str().unwrap()[..32];
    let info = std::fs::read_to_string(bucket.join(format!("{hash}.narinfo"))).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned()
}

/// The s3s-fs log lines of requests that carried `class` (s3s-fs logs
/// each request's parsed input at debug level).
fn lines_with(log: &str, class: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(&format!("storage_class: StorageClass(\"{class}\")")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_nix_2_35_url_with_storage_class_and_multipart_threshold() {
    let s3 = tk::s3::S3Server::start(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (config, pk) = crate::support::key_and_config(d, "s3-params-1");
    // A named profile, as in the documentation's example.
    let creds = d.join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[cache-upload]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    // Two outputs of 12 MiB of random bytes (zstd cannot shrink them).
    let n = tk::nonce();
    let big = |i: u32| {
        tk::sh_derivation(
            &format!("s3p-{i}-{n}"),
            &["out"],
            &format!("head -c {} /dev/urandom > $out", 12 * 1024 * 1024 + i),
        )
    };
    let outs = tk::nix_build(&format!("[ ({}) ({}) ]", big(0), big(1)));
    let bucket = s3.bucket_dir();

    // Nix 2.35's s3-binary-cache-store.md: `s3://example-nix-cache?profile=
    // cache-upload&scheme=https&endpoint=minio.example.com`, here with our
    // server's scheme and endpoint, and the new parameters: parts of
    // 5 MiB, but nothing up to 16 MiB in parts.
    let base = format!(
        "s3://{BUCKET}?profile=cache-upload&scheme=http&endpoint={}",
        s3.endpoint()
    );
    let url = format!(
        "{base}&addressing-style=path&storage-class=REDUCED_REDUNDANCY\
         &buffer-size=5M&multipart-threshold=16M"
    );
    let out = copy(&config, &creds, &url, &outs[..1]);
    assert!(out.status.success(), "{}\n{}", tk::describe(&out), s3.log());
    // Over 12 MiB, under the threshold: one PUT, no multipart upload.
    let log = s3.log();
    let nar = nar_of(&bucket, &outs[0]);
    assert!(
        !log.lines()
            .any(|l| l.contains("multipart etag") && l.contains(&nar)),
        "{nar} went up in parts\n{log}"
    );
    // Every object we wrote carried the class: nix-cache-info, the NAR,
    // the narinfo (s3s-fs logs each PutObject's input).
    let tagged = lines_with(&log, "REDUCED_REDUNDANCY");
    for key in ["nix-cache-info", nar.as_str(), ".narinfo"] {
        assert!(
            tagged.iter().any(|l| l.contains(key)),
            "no PutObject of {key} with the storage class\n{log}"
        );
    }

    // Without the threshold, the same size goes up in three 5 MiB parts.
    // s3s-fs does not log the request that starts them, so this one goes
    // through a proxy that records the header as sent: the class goes with
    // that request (and with every PUT of a whole object), not with the
    // parts, as Nix 2.35 sends it.
    let proxy = tk::fault_proxy::FaultProxy::start(&s3.endpoint());
    proxy.watch_header("x-amz-storage-class");
    let url = format!(
        "s3://{BUCKET}?profile=cache-upload&scheme=http&endpoint={}\
         &storage-class=REDUCED_REDUNDANCY&multipart-chunk-size=5242880",
        proxy.endpoint()
    );
    let out = copy(&config, &creds, &url, &outs[1..]);
    assert!(out.status.success(), "{}\n{}", tk::describe(&out), s3.log());
    let log = s3.log();
    let nar = nar_of(&bucket, &outs[1]);
    assert!(
        log.lines()
            .any(|l| l.contains("multipart etag") && l.contains(&nar) && l.contains("-3\"")),
        "{nar} was not three parts\n{log}"
    );
    let seen = proxy.seen();
    let class = Some("REDUCED_REDUNDANCY".to_owned());
    let start = seen
        .iter()
        .find(|r| {
            r.method == "POST"
                && (r.target.ends_with("?uploads") || r.target.ends_with("?uploads="))
        })
        .unwrap_or_else(|| panic!("no CreateMultipartUpload: {seen:?}"));
    assert_eq!(start.value, class, "{start:?}");
    let parts: Vec<_> = seen
        .iter()
        .filter(|r| r.target.contains("partNumber="))
        .collect();
    assert_eq!(parts.len(), 3, "{seen:?}");
    assert!(parts.iter().all(|p| p.value.is_none()), "{parts:?}");
    let whole: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "PUT" && !r.target.contains("partNumber="))
        .collect();
    assert!(!whole.is_empty(), "{seen:?}");
    assert!(whole.iter().all(|p| p.value == class), "{whole:?}");
    assert_eq!(s3.pending_uploads(), Vec::<String>::new());

    // A class this server does not offer is refused by the server, and
    // the error says so: the header reached it.
    let url = format!("{base}&storage-class=STANDARD_IA");
    let again = tk::nix_build(&big(2));
    let out = copy(&config, &creds, &url, &again);
    assert!(!out.status.success(), "{}", tk::describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidStorageClass"), "{stderr}");

    // And Nix accepts what went up (the bucket's directory, read as a
    // file:// cache).
    let cache = format!("file://{}", bucket.display());
    let key = std::fs::read_to_string(&pk).unwrap();
    let verify = tk::nix_store_verify_all(&cache, &key);
    assert!(verify.status.success(), "{}", tk::describe(&verify));
}
