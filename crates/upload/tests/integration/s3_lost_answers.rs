//! Multipart uploads we cannot abort ourselves are still not left behind:
//! when the answer to CreateMultipartUpload is cut off (the server created
//! the upload, we never learn its id), and when the abort itself fails.
//! Both are found by listing the key's uploads and aborted, in the
//! background. s3s-fs does not implement the listing; the fault proxy in
//! front of it fills it in from s3s-fs's records (after s3s-fs checked the
//! listing's signature), and the aborts are s3s-fs's own.
//!
//! One test per binary: it sets process environment variables, which is
//! only sound while no other thread runs.

use std::io::Write as _;
use std::time::{Duration, Instant};

use nix_outbox_core::Sha256Hash;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{Compression, NarDigest, NarWriter, Target, TargetConfig, open_target};
use tk::fault_proxy::{Fault, FaultProxy, Plan};

#[test]
fn s3_lost_answers() {
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
    let proxy = FaultProxy::start(&s3.endpoint());
    proxy.fill_in(s3.uploads_listing());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(&s3, &proxy));
}

async fn check(s3: &tk::s3::S3Server, proxy: &FaultProxy) {
    let url = format!(
        "s3://nix-cache?endpoint={}&scheme=http&multipart-chunk-size=5242880",
        proxy.endpoint()
    );
    let target = open_target(&TargetConfig::parse(&url).unwrap()).unwrap();
    let aborted = || s3.log().matches("multipart upload aborted").count();

    // The answer to the create is cut off after s3s-fs made the upload.
    proxy.set_plan(Plan::Targeted {
        matching: "?uploads".to_owned(),
        fault: Fault::TruncateResponse,
        times: 1,
    });
    let w = write_parts(target.as_ref(), 2).await;
    let e = w.finish(String::new()).await.unwrap_err();
    assert!(e.to_string().contains("cannot start uploading"), "{e}");
    assert_eq!(proxy.counts().truncated, 1, "{}", proxy.recent());
    no_pending_uploads(s3, proxy).await;
    assert_eq!(aborted(), 1, "{}", s3.log());

    // Our abort fails: its connection is reset on the first try and on
    // each of object_store's 6 retries (`RetryConfig` in src/target/object.rs).
    // The sweep after it aborts the upload.
    proxy.set_plan(Plan::Targeted {
        matching: "DELETE ".to_owned(),
        fault: Fault::Reset,
        times: 7,
    });
    let w = write_parts(target.as_ref(), 3).await;
    w.abort().await;
    assert_eq!(proxy.counts().reset, 7, "{}", proxy.recent());
    no_pending_uploads(s3, proxy).await;
    assert_eq!(aborted(), 2, "{}", s3.log());
    // The abort that worked came after a listing, so it was the sweep's.
    let log = proxy.recent();
    let reset = log.rfind("→ Reset").unwrap();
    let listed = reset + log[reset..].find("filled in").expect(&log);
    assert!(log[listed..].contains("DELETE "), "{log}");
}

/// A multipart writer that sent `parts` full parts (and has more).
async fn write_parts(target: &dyn Target, parts: usize) -> Box<dyn NarWriter> {
    let mut w = target.begin_nar().await.unwrap();
    let digest = NarDigest {
        hash: Sha256Hash::digest(b"a NAR"),
        size: 64 << 20,
    };
    w.prepare(&digest, Compression::Zstd).unwrap();
    tokio::task::spawn_blocking(move || {
        let chunk = vec![7u8; 1 << 20];
        // One MiB past the last full part, so that part is sent. A failed
        // write (the upload stopped) shows again in `finish`.
        for _ in 0..parts * 5 + 1 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
        w
    })
    .await
    .unwrap()
}

/// Waits (bounded: the cleanup runs in the background) until s3s-fs has no
/// upload in progress, then asserts it.
async fn no_pending_uploads(s3: &tk::s3::S3Server, proxy: &FaultProxy) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !s3.pending_uploads().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s3.pending_uploads(),
        Vec::<String>::new(),
        "proxy:\n{}\ns3s-fs:\n{}",
        proxy.recent(),
        s3.log()
    );
}
