//! Closures uploaded to a real S3 server (s3s-fs, which checks SigV4 and
//! S3's part-size rules) with credentials from the AWS_* environment
//! variables: a NAR larger than two 5 MiB parts goes up as a multipart
//! upload, the small ones in single PUTs, each object with Nix's content
//! type. The bucket directory is then a file:// cache: `nix store verify`
//! accepts it, and Nix substitutes the deleted paths back from it.
//!
//! One test per binary: it sets process environment variables, which is
//! only sound while no other thread runs.

mod support;

use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{TargetConfig, open_target, upload_closure};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ClientOptions, GetOptions, ObjectStore};

use support::*;

#[test]
fn s3_round_trip() {
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
        .block_on(round_trip(&s3));
}

async fn round_trip(s3: &tk::s3::S3Server) {
    let tag = unique_tag("s3");
    let graph = build_graph(&tag);
    let (big_top, big) = build_big(&tag, 13);
    let roots = vec![graph[0].clone(), big_top.clone()];
    let hashes = closure_hashes(&roots);
    assert_eq!(hashes.len(), 9, "{hashes:?}");

    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let key = key();
    let pk = key.public_key().to_string();
    let url = format!(
        "s3://nix-cache?endpoint={}&scheme=http&region=us-east-1&multipart-chunk-size=5242880\
         &write-nar-listing=true",
        s3.endpoint()
    );
    let cfg = TargetConfig::parse(&url).unwrap();
    let target = open_target(&cfg).unwrap();
    assert_eq!(
        target.id(),
        format!("s3://nix-cache?endpoint={}", s3.endpoint())
    );

    let mut uploaded = 0;
    for root in &roots {
        let r = upload_closure(
            &pool,
            target.as_ref(),
            &cfg,
            std::slice::from_ref(&key),
            &sp(root),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", s3.log()));
        assert!(r.missing.is_empty() && r.blocked.is_empty(), "{r:?}");
        uploaded += r.uploaded;
    }
    assert_eq!(uploaded, 9);
    // Everything is there now (found with HEAD): uploading again is a no-op.
    for root in &roots {
        let r = upload_closure(
            &pool,
            target.as_ref(),
            &cfg,
            std::slice::from_ref(&key),
            &sp(root),
        )
        .await
        .unwrap();
        assert_eq!(r.uploaded, 0, "{r:?}");
    }
    assert_eq!(s3.pending_uploads(), Vec::<String>::new());

    // The bucket holds exactly what `nix copy` would put there, NARs named
    // after their NarHash plus a random suffix.
    let bucket = s3.bucket_dir();
    let files = files_under(&bucket);
    let count = |ext: &str| {
        files
            .iter()
            .filter(|f| f.to_string_lossy().ends_with(ext))
            .count()
    };
    assert_eq!(
        (count(".narinfo"), count(".ls"), count(".nar.zst")),
        (9, 9, 9),
        "{files:?}"
    );
    assert_eq!(files.len(), 28, "{files:?}");
    assert_eq!(
        std::fs::read_to_string(bucket.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let big_info = NarInfo::parse(
        &sd(),
        &std::fs::read(bucket.join(format!("{}.narinfo", sp(&big).hash_part()))).unwrap(),
    )
    .unwrap();
    let nar_name = big_info.url.strip_prefix("nar/").unwrap();
    let (hash, rest) = nar_name.split_once('-').unwrap();
    assert_eq!(
        format!("sha256:{hash}"),
        big_info.nar_hash.to_nix32_string(),
        "{nar_name}"
    );
    assert!(rest.len() == 16 + ".nar.zst".len(), "{nar_name}");
    let nar_file = std::fs::metadata(bucket.join(&big_info.url)).unwrap();
    assert_eq!(Some(nar_file.len()), big_info.file_size);
    assert!(nar_file.len() > 12 * 1024 * 1024, "{}", nar_file.len());

    // Ask the server itself: the big NAR was assembled from three parts
    // (S3's multipart ETag ends in -<parts>), and content types are Nix's.
    let client = AmazonS3Builder::new()
        .with_bucket_name("nix-cache")
        .with_region("us-east-1")
        .with_endpoint(format!("http://{}", s3.endpoint()))
        .with_access_key_id(&s3.access_key)
        .with_secret_access_key(&s3.secret_key)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .build()
        .unwrap();
    let head = |key: String| {
        let client = &client;
        async move {
            let path = ObjectPath::from(key.as_str());
            let r = client
                .get_opts(&path, GetOptions::new().with_head(true))
                .await
                .unwrap_or_else(|e| panic!("HEAD {key}: {e}"));
            let ctype = r
                .attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string());
            (r.meta.e_tag, ctype)
        }
    };
    let (etag, ctype) = head(big_info.url.clone()).await;
    assert!(
        etag.as_deref()
            .is_some_and(|e| e.trim_matches('"').ends_with("-3")),
        "{etag:?}"
    );
    assert_eq!(ctype.as_deref(), Some("application/x-nix-nar"));
    let hp = sp(&big).hash_part().to_owned();
    for (key, want) in [
        ("nix-cache-info".to_owned(), "text/x-nix-cache-info"),
        (format!("{hp}.narinfo"), "text/x-nix-narinfo"),
        (format!("{hp}.ls"), "application/json"),
    ] {
        assert_eq!(head(key.clone()).await.1.as_deref(), Some(want), "{key}");
    }

    // Nix accepts every signature and NAR hash, and substitutes from it.
    let cache = format!("file://{}", bucket.display());
    let out = tk::nix_store_verify_all(&cache, &pk);
    assert!(
        out.status.success(),
        "nix store verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(pool);
    drop(daemon);
    let mut order = closure_topological(&roots);
    order.reverse();
    delete_paths(&order);
    substitute(&roots, &cache, &pk);
    check_restored(&hashes);
    delete_paths(&order);
}
