//! Closures uploaded to a `file://` cache with each compression are
//! verified by `nix store verify`, substituted back by `nix-store -r` after
//! being deleted, and come back with the same contents. Uploading again
//! is a no-op, and with `compression=none` our narinfo and NAR are
//! byte-identical to those `nix copy` writes with the same key.

use std::collections::BTreeMap;
use std::time::Instant;

use nix_outbox_core::keys::write_key_files;
use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{Compression, TargetConfig, open_target, upload_closure};

use crate::support::*;

async fn round_trip(name: &str, params: &str, compression: Compression) {
    let tag = unique_tag(name);
    let outs = build_graph(&tag);
    let closure = tk::closure(&outs);
    assert_eq!(closure.len(), 6);
    let hashes: BTreeMap<String, String> = closure
        .iter()
        .map(|p| (p.clone(), tk::query("--hash", p)))
        .collect();

    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let key = key();
    let pk = key.public_key().to_string();
    let keys = [key.clone()];
    let cache = tempfile::tempdir().unwrap();
    let url = file_url(cache.path(), params);
    let cfg = TargetConfig::parse(&url).unwrap();
    assert_eq!(cfg.compression, compression);
    let target = open_target(&cfg).unwrap();

    let started = Instant::now();
    let mut uploaded = 0;
    let (mut nar_bytes, mut file_bytes) = (0, 0);
    for root in &outs {
        let r = upload_closure(&pool, target.as_ref(), &cfg, &keys, &sp(root))
            .await
            .unwrap();
        assert!(r.missing.is_empty() && r.blocked.is_empty(), "{r:?}");
        uploaded += r.uploaded;
        nar_bytes += r.nar_bytes;
        file_bytes += r.file_bytes;
    }
    eprintln!(
        "{name}: {uploaded} paths, NAR {nar_bytes} B -> {file_bytes} B ({:.1}%) in {:?}",
        100.0 * file_bytes as f64 / nar_bytes as f64,
        started.elapsed()
    );
    assert_eq!(uploaded, 6, "each path uploaded exactly once");

    // (d) Everything is there now: uploading again changes nothing.
    let before = files_under(cache.path());
    for root in &outs {
        let r = upload_closure(&pool, target.as_ref(), &cfg, &keys, &sp(root))
            .await
            .unwrap();
        assert_eq!(r.uploaded, 0, "{r:?}");
        assert!(r.already_present >= 1, "{r:?}");
    }
    assert_eq!(files_under(cache.path()), before);

    // The cache's files: one narinfo and one NAR per path, nothing temporary.
    let ext = compression.extension();
    let narinfos: Vec<_> = before
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    assert_eq!(narinfos.len(), 6, "{before:?}");
    let nars = before.iter().filter(|p| p.starts_with("nar")).count();
    assert_eq!(nars, 6, "{before:?}");
    assert!(
        before.iter().all(|p| !p.to_string_lossy().contains(".tmp")),
        "{before:?}"
    );
    assert_eq!(
        std::fs::read_to_string(cache.path().join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    for ni in &narinfos {
        let text = std::fs::read(cache.path().join(ni)).unwrap();
        let info = NarInfo::parse(&sd(), &text).unwrap();
        assert_eq!(info.compression, compression.nix_name());
        assert!(info.url.starts_with("nar/") && info.url.ends_with(&format!(".nar{ext}")));
        let nar = std::fs::metadata(cache.path().join(&info.url)).unwrap();
        assert_eq!(Some(nar.len()), info.file_size);
        assert_eq!(
            info.valid_signers(&sd(), &[key.public_key()]),
            ["outbox-test-1"]
        );
        let full = sd().display(&info.store_path);
        assert_eq!(info.nar_hash.to_nix32_string(), hashes[&full], "{full}");
        if cfg.write_nar_listing {
            let ls = cache
                .path()
                .join(format!("{}.ls", info.store_path.hash_part()));
            let json = std::fs::read_to_string(&ls).unwrap();
            assert!(json.starts_with("{\"version\":1,\"root\":"), "{json}");
        }
    }

    // (a) Nix accepts every signature and every NAR's hash.
    let out = tk::nix_store_verify_all(&url, &pk);
    assert!(
        out.status.success(),
        "nix store verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A control: with another key trusted instead, verification fails, so
    // the pass above really checked our signatures.
    let other = key_named("someone-else").public_key().to_string();
    assert!(!tk::nix_store_verify_all(&url, &other).status.success());

    // (b) Delete the paths (referrers first) and substitute them back.
    drop(pool);
    drop(daemon);
    let mut order = closure_topological(&outs);
    order.reverse();
    delete_paths(&order);
    substitute(&outs, &url, &pk);
    for (p, h) in &hashes {
        assert_eq!(&tk::query("--hash", p), h, "{p}");
        verify_path(p);
    }
    let tree = outs.iter().find(|p| p.contains("-up-tree-")).unwrap();
    let hello = format!("{tree}/bin/hello");
    let meta = std::fs::metadata(&hello).unwrap();
    assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0);
    assert_eq!(
        std::fs::read_link(format!("{tree}/sub/rel-link")).unwrap(),
        std::path::Path::new("../empty")
    );
    assert_eq!(std::fs::metadata(format!("{tree}/empty")).unwrap().len(), 0);
    // Leave the store as we found it.
    delete_paths(&order);
}

fn key_named(name: &str) -> nix_outbox_core::keys::SecretKey {
    nix_outbox_core::keys::SecretKey::generate(name).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_round_trip() {
    round_trip("zstd", "", Compression::Zstd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_with_listing_round_trip() {
    round_trip(
        "zstd-ls",
        "compression-level=9&write-nar-listing=true",
        Compression::Zstd,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xz_round_trip() {
    round_trip("xz", "compression=xz", Compression::Xz).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xz_parallel_round_trip() {
    round_trip(
        "xz-mt",
        "compression=xz&parallel-compression=true",
        Compression::Xz,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn none_round_trip() {
    round_trip("none", "compression=none", Compression::None).await;
}

/// Without compression there is exactly one right NAR file and one right
/// narinfo; ours must equal what `nix copy` writes, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_output_is_identical_to_nix_copy() {
    let outs = build_graph(&unique_tag("vs-copy"));
    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let key = key();
    let keys = tempfile::tempdir().unwrap();
    let (skf, pkf) = (keys.path().join("sk"), keys.path().join("pk"));
    write_key_files(&key, &skf, &pkf, false).unwrap();

    let ours = tempfile::tempdir().unwrap();
    let cfg = TargetConfig::parse(&file_url(ours.path(), "compression=none")).unwrap();
    let target = open_target(&cfg).unwrap();
    upload_closure(&pool, target.as_ref(), &cfg, &[key], &sp(&outs[0]))
        .await
        .unwrap();

    let theirs = tempfile::tempdir().unwrap();
    let params = format!("compression=none&secret-key={}", skf.display());
    tk::nix_copy_to(&file_url(theirs.path(), &params), &outs[..1]);

    let (a, b) = (files_under(ours.path()), files_under(theirs.path()));
    assert_eq!(a, b, "same file names");
    for f in &a {
        let (x, y) = (
            std::fs::read(ours.path().join(f)).unwrap(),
            std::fs::read(theirs.path().join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{} differs:\nours:\n{}\nnix copy:\n{}",
            f.display(),
            String::from_utf8_lossy(&x[..x.len().min(2000)]),
            String::from_utf8_lossy(&y[..y.len().min(2000)])
        );
    }
    drop(pool);
    drop(daemon);
    let mut order = closure_topological(&outs);
    order.reverse();
    delete_paths(&order);
}
