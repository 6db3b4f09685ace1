//! Wrong S3 credentials give a permanent error that says the credentials
//! were rejected and where they came from (environment variables or which
//! profile of which file), without ever printing a secret.
//!
//! One test per binary: it sets process environment variables, which is
//! only sound while no other thread runs.

mod support;

use nix_outbox_testkit as tk;
use nix_outbox_upload::{RemoteErrorKind, TargetConfig, UploadError, open_target};

use support::*;

const WRONG_SECRET: &str = "not-the-secret-0123456789";

#[test]
fn s3_bad_credentials() {
    let s3 = tk::s3::S3Server::start("nix-cache");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[ci]\naws_access_key_id = {ak}\naws_secret_access_key = {WRONG_SECRET}\n\
             [good]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n",
            ak = s3.access_key,
            sk = s3.secret_key
        ),
    )
    .unwrap();
    // SAFETY: libtest runs this binary's only test on this thread while its
    // main thread just waits; no runtime exists yet, so nothing else reads
    // the environment concurrently.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", WRONG_SECRET);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &creds);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_PROFILE");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(&s3, &creds));
}

async fn check(s3: &tk::s3::S3Server, creds: &std::path::Path) {
    let base = format!("s3://nix-cache?endpoint={}&scheme=http", s3.endpoint());

    // Environment credentials with the wrong secret.
    let e = cache_info_error(&base).await;
    let msg = e.to_string();
    eprintln!("wrong secret in the environment gives:\n{msg}");
    assert!(
        msg.contains("rejected our credentials")
            && msg.contains("SignatureDoesNotMatch")
            && msg.contains("AWS_ACCESS_KEY_ID")
            && msg.contains("AWS_SECRET_ACCESS_KEY")
            && msg.contains(&s3.access_key),
        "{msg}"
    );

    // The URL's profile wins over the environment, and is named.
    let e = cache_info_error(&format!("{base}&profile=ci")).await;
    let msg = e.to_string();
    assert!(
        msg.contains("rejected our credentials")
            && msg.contains("profile [ci]")
            && msg.contains(&creds.display().to_string()),
        "{msg}"
    );

    // The right profile works.
    let good = TargetConfig::parse(&format!("{base}&profile=good")).unwrap();
    open_target(&good)
        .unwrap()
        .ensure_cache_info(&sd())
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s3.log()));

    // A profile that is not in the file fails when the target is opened.
    let Err(e) = open_target(&TargetConfig::parse(&format!("{base}&profile=nope")).unwrap()) else {
        panic!("a missing profile was accepted");
    };
    assert!(matches!(e, UploadError::TargetSetup { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(e.to_string().contains("[nope]"), "{e}");
}

/// Opens `url` and asks for `nix-cache-info`, which must fail with a
/// permanent credentials error that never shows a secret.
async fn cache_info_error(url: &str) -> UploadError {
    let t = open_target(&TargetConfig::parse(url).unwrap()).unwrap();
    let e = t.ensure_cache_info(&sd()).await.unwrap_err();
    assert!(
        matches!(
            e,
            UploadError::Remote {
                kind: RemoteErrorKind::Credentials,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_transient(), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(!text.contains(WRONG_SECRET), "{text}");
    e
}
