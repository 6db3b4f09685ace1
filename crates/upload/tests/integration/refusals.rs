//! What must not be uploaded is not: a path whose contents do not match its
//! store record is neither signed nor published (and leaves no partial
//! files); paths that are gone are reported, not failed on; caches that
//! cannot be used give errors saying what to fix.

use nix_outbox_core::Sha256Hash;
use nix_outbox_core::StorePath;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{
    FileTarget, PathOutcome, Target, TargetConfig, UploadError, open_target, upload_closure,
    upload_path,
};

use crate::support::*;

fn build_one(tag: &str) -> String {
    let drv = tk::sh_derivation(
        &format!("up-refuse-{tag}"),
        &["out"],
        "mkdir -p $out/d; seq 1 100000 > $out/d/data; : > $out/empty; ln -s d/data $out/link",
    );
    tk::nix_build(&drv).remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_mismatch_is_refused_without_a_trace() {
    let out = build_one(&unique_tag("mismatch"));
    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let keys = [key()];
    let good = path_info(&pool, &out).await;

    for params in [
        "write-nar-listing=true",
        "compression=xz&write-nar-listing=true",
        "compression=none&write-nar-listing=true",
    ] {
        let cache = tempfile::tempdir().unwrap();
        let cfg = TargetConfig::parse(&file_url(cache.path(), params)).unwrap();
        let target = open_target(&cfg).unwrap();
        target.ensure_cache_info(&sd()).await.unwrap();

        let mut bad_hash = good.clone();
        bad_hash.nar_hash = Sha256Hash::digest(b"not this NAR");
        let mut bad_size = good.clone();
        bad_size.nar_size += 8;
        for (what, info) in [("hash", &bad_hash), ("size", &bad_size)] {
            let e = upload_path(&pool, target.as_ref(), &cfg, &keys, info)
                .await
                .unwrap_err();
            let UploadError::HashMismatch {
                path,
                expected,
                actual,
            } = &e
            else {
                panic!("{params} {what}: expected HashMismatch, got {e:?}");
            };
            assert_eq!(path, &out);
            assert_eq!(expected.hash, info.nar_hash);
            assert_eq!(actual.hash, good.nar_hash, "the real NAR was hashed");
            assert_eq!(actual.size, good.nar_size);
            assert!(!e.is_transient());
            let msg = e.to_string();
            assert!(
                msg.contains(&out)
                    && msg.contains("corrupt")
                    && msg.contains("nix-store --verify --check-contents --repair"),
                "{msg}"
            );
            // No narinfo, no listing, no NAR, no temporary file.
            assert_eq!(
                files_under(cache.path()),
                [std::path::PathBuf::from("nix-cache-info")],
                "{params} {what}"
            );
        }

        // The same path with its true record uploads fine, and the pool's
        // connections survived the refusals.
        let ok = upload_path(&pool, target.as_ref(), &cfg, &keys, &good)
            .await
            .unwrap();
        assert!(
            matches!(ok, PathOutcome::Uploaded { nar_size, .. } if nar_size == good.nar_size),
            "{ok:?}"
        );
        assert_eq!(
            files_under(cache.path()).len(),
            4,
            "narinfo, .ls, NAR, cache info"
        );
    }
    // Leave the store as we found it.
    drop(pool);
    drop(daemon);
    delete_paths(&[out]);
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_that_are_gone_are_reported_not_failed() {
    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let cache = tempfile::tempdir().unwrap();
    let cfg = TargetConfig::parse(&file_url(cache.path(), "")).unwrap();
    let target = open_target(&cfg).unwrap();
    let gone =
        StorePath::from_base_name("00000000000000000000000000000000-up-never-built").unwrap();

    let report = upload_closure(&pool, target.as_ref(), &cfg, &[key()], &gone)
        .await
        .unwrap();
    assert_eq!(report.missing, vec![gone.clone()]);
    assert_eq!((report.uploaded, report.already_present), (0, 0));

    // A record that was valid when queried but is gone at upload time.
    let out = build_one(&unique_tag("gone"));
    let mut info = path_info(&pool, &out).await;
    info.path = gone;
    let outcome = upload_path(&pool, target.as_ref(), &cfg, &[key()], &info)
        .await
        .unwrap();
    assert_eq!(outcome, PathOutcome::NotValid);
    assert_eq!(
        files_under(cache.path()),
        [std::path::PathBuf::from("nix-cache-info")]
    );
    drop(pool);
    drop(daemon);
    delete_paths(&[out]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_cache_roots_say_what_to_fix() {
    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();

    // A root below a regular file.
    let under_file = file.join("cache");
    let cfg = TargetConfig::parse(&file_url(&under_file, "")).unwrap();
    let target = open_target(&cfg).unwrap();
    let root = sp(&build_one(&unique_tag("unusable")));
    let e = upload_closure(&pool, target.as_ref(), &cfg, &[key()], &root)
        .await
        .unwrap_err();
    assert!(matches!(e, UploadError::TargetIo { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains(&under_file.display().to_string()) && msg.contains("not a directory"),
        "{msg}"
    );

    // A root that does not exist is not created (it may be an unmounted
    // mount point), by any operation.
    let missing = dir.path().join("not-there");
    let t = FileTarget::new(missing.clone());
    let e = t.ensure_cache_info(&sd()).await.unwrap_err();
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains("not-there") && msg.contains("Create the cache directory"),
        "{msg}"
    );
    let Err(e) = t.begin_nar().await else {
        panic!("begin_nar succeeded without a cache directory");
    };
    assert!(e.to_string().contains("Create the cache directory"), "{e}");
    assert!(!missing.exists());

    // A cache made for another store directory.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("nix-cache-info"),
        "StoreDir: /gnu/store\n",
    )
    .unwrap();
    let t = FileTarget::new(other.path().to_owned());
    let e = t.ensure_cache_info(&sd()).await.unwrap_err();
    assert!(matches!(e, UploadError::StoreDirMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("/gnu/store"), "{e}");
    drop(pool);
    drop(daemon);
    delete_paths(&[sd().display(&root)]);
}
