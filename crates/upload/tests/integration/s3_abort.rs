//! A NAR whose contents do not match the store's record is refused after
//! its parts went up: the multipart upload is aborted, so the bucket gets
//! neither a NAR nor a narinfo and the server keeps no parts. A writer
//! dropped mid-stream is abandoned the same way.
//!
//! One test per binary: it sets process environment variables, which is
//! only sound while no other thread runs.

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use nix_outbox_core::Sha256Hash;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{
    Compression, NarDigest, PathOutcome, TargetConfig, UploadError, open_target, upload_path,
};

use support::*;

#[test]
fn s3_abort() {
    let s3 = tk::s3::S3Server::start("nix-cache");
    // SAFETY: libtest runs this binary's only test on this thread while its
    // main thread just waits; no runtime exists yet, so nothing else reads
    // the environment concurrently.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(&s3));
}

async fn check(s3: &tk::s3::S3Server) {
    let (top, big) = build_big(&unique_tag("s3-abort"), 13);
    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let keys = [key()];
    let url = format!(
        "s3://nix-cache?endpoint={}&scheme=http&multipart-chunk-size=5242880&write-nar-listing=true",
        s3.endpoint()
    );
    let cfg = TargetConfig::parse(&url).unwrap();
    let target = open_target(&cfg).unwrap();
    target.ensure_cache_info(&sd()).await.unwrap();
    let bucket = s3.bucket_dir();
    let only_cache_info = || {
        assert_eq!(
            files_under(&bucket),
            [std::path::PathBuf::from("nix-cache-info")],
            "server log:\n{}",
            s3.log()
        );
        assert_eq!(s3.pending_uploads(), Vec::<String>::new());
    };

    // The whole NAR (three parts) is streamed and hashed before the
    // mismatch shows; nothing of it may remain.
    let good = path_info(&pool, &big).await;
    let mut bad = good.clone();
    bad.nar_hash = Sha256Hash::digest(b"not this NAR");
    let e = upload_path(&pool, target.as_ref(), &cfg, &keys, &bad)
        .await
        .unwrap_err();
    assert!(matches!(e, UploadError::HashMismatch { .. }), "{e:?}");
    assert!(!e.is_transient());
    only_cache_info();
    let aborted = || s3.log().matches("multipart upload aborted").count();
    assert_eq!(aborted(), 1, "{}", s3.log());

    // A writer dropped after two parts went up (as when the store's NAR
    // stream breaks) aborts in the background.
    let mut w = target.begin_nar().await.unwrap();
    w.prepare(
        &NarDigest {
            hash: good.nar_hash,
            size: good.nar_size,
        },
        Compression::Zstd,
    )
    .unwrap();
    let chunk = vec![7u8; 1024 * 1024];
    let w = tokio::task::spawn_blocking(move || {
        for _ in 0..12 {
            w.write_all(&chunk).unwrap();
        }
        w
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.pending_uploads().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !s3.pending_uploads().is_empty(),
        "parts were being uploaded"
    );
    drop(w);
    while !s3.pending_uploads().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    only_cache_info();
    assert_eq!(aborted(), 2);

    // With its true record the same path goes up, parts and all.
    let ok = upload_path(&pool, target.as_ref(), &cfg, &keys, &good)
        .await
        .unwrap();
    assert!(matches!(ok, PathOutcome::Uploaded { .. }), "{ok:?}");
    assert_eq!(
        files_under(&bucket).len(),
        4,
        "NAR, narinfo, .ls, cache info"
    );
    assert_eq!(s3.pending_uploads(), Vec::<String>::new());

    drop(pool);
    drop(daemon);
    delete_paths(&[top, big]);
}
