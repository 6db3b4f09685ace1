//! Closures uploaded to an HTTP server that takes WebDAV-style PUTs (a
//! private nginx) are verified by `nix store verify` over http://, and Nix
//! substitutes the deleted paths back over http:// from them.

use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_testkit as tk;
use nix_outbox_upload::{TargetConfig, open_target, upload_closure};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn http_round_trip() {
    let web = tk::webdav::WebDavServer::start();
    let tag = unique_tag("http");
    let graph = build_graph(&tag);
    let (big_top, _) = build_big(&tag, 3);
    let roots = vec![graph[0].clone(), big_top];
    let hashes = closure_hashes(&roots);
    assert_eq!(hashes.len(), 9);

    let daemon = tk::PrivateDaemon::start("");
    let pool = pool(&daemon);
    let key = key();
    let pk = key.public_key().to_string();
    let base = web.url("cache");
    let cfg =
        TargetConfig::parse(&format!("{base}/?compression=xz&write-nar-listing=true")).unwrap();
    let target = open_target(&cfg).unwrap();
    assert_eq!(target.id(), base);
    for (round, want) in [(1, 9), (2, 0)] {
        // The first round uploads the 9 paths; the second finds everything
        // present (HEAD) and is a no-op.
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
            .unwrap_or_else(|e| panic!("{e}\nnginx: {}", web.log()));
            assert!(r.missing.is_empty() && r.blocked.is_empty(), "{r:?}");
            uploaded += r.uploaded;
        }
        assert_eq!(uploaded, want, "round {round}");
    }

    // The served directory is laid out as `nix copy` lays out a cache, NARs
    // named after the hash of their compressed bytes (so the two leaves,
    // both `leaf\n`, share one).
    let root = web.root().join("cache");
    let files = files_under(&root);
    assert_eq!(files.len(), 1 + 9 + 9 + 8, "{files:?}");
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "narinfo"))
    {
        let info = NarInfo::parse(&sd(), &std::fs::read(root.join(f)).unwrap()).unwrap();
        let file_hash = info.file_hash.unwrap().to_nix32_string();
        assert_eq!(
            format!("nar/{}.nar.xz", file_hash.strip_prefix("sha256:").unwrap()),
            info.url
        );
        assert_eq!(
            std::fs::metadata(root.join(&info.url)).unwrap().len(),
            info.file_size.unwrap()
        );
    }

    // An http:// store cannot list its paths, so `--all` is refused there:
    // name every path instead.
    let paths: Vec<&String> = hashes.keys().collect();
    let out = tk::nix()
        .args([
            "store",
            "verify",
            "--store",
            &base,
            "--trusted-public-keys",
            &pk,
        ])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix store verify over http failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A control: trusting another key, the same check fails.
    let other = nix_outbox_core::keys::SecretKey::generate("other").unwrap();
    let out = tk::nix()
        .args(["store", "verify", "--store", &base, "--trusted-public-keys"])
        .arg(other.public_key().to_string())
        .args(&paths)
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(pool);
    drop(daemon);
    let mut order = closure_topological(&roots);
    order.reverse();
    delete_paths(&order);
    substitute(&roots, &base, &pk);
    check_restored(&hashes);
    delete_paths(&order);
}
