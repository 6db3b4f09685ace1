//! A file:// cache is swept of the temporary files that killed uploads
//! leave behind, and of nothing else.

use std::time::{Duration, SystemTime};

use nix_outbox_core::StoreDir;
use nix_outbox_upload::{FileTarget, Target};

fn file_aged(path: &std::path::Path, age: Duration) {
    let f = std::fs::File::create(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[tokio::test]
async fn stale_temporaries_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("nar")).unwrap();
    let trace_dir = "build-trace-v2/0123456789abcdfghijklmnpqrsvwxyz-x.drv";
    std::fs::create_dir_all(root.join(trace_dir)).unwrap();
    let two_hours = Duration::from_secs(7200);
    let minute = Duration::from_secs(60);
    let stale = [
        "nar/.tmp-123-0",
        ".0123456789abcdfghijklmnpqrsvwxyz.narinfo.tmp.123.4",
        "build-trace-v2/0123456789abcdfghijklmnpqrsvwxyz-x.drv/.out.doi.tmp.123.5",
    ];
    let kept = [
        // Written to a minute ago: an upload may still be running.
        "nar/.tmp-456-1",
        // Real objects, however old.
        "nar/0123456789abcdfghijklmnpqrsvwxyz0123456789abcdfghi.nar.zst",
        "0123456789abcdfghijklmnpqrsvwxyz.narinfo",
        "build-trace-v2/0123456789abcdfghijklmnpqrsvwxyz-x.drv/out.doi",
        // Someone else's hidden file.
        ".keep",
    ];
    for p in stale {
        file_aged(&root.join(p), two_hours);
    }
    file_aged(&root.join(kept[0]), minute);
    for p in &kept[1..] {
        file_aged(&root.join(p), two_hours);
    }

    let target = FileTarget::new(root.to_owned());
    target
        .ensure_cache_info(&StoreDir::default())
        .await
        .unwrap();
    for p in stale {
        assert!(!root.join(p).exists(), "{p} should be gone");
    }
    for p in kept {
        assert!(root.join(p).exists(), "{p} should be kept");
    }
    assert!(root.join("nix-cache-info").exists());
}
