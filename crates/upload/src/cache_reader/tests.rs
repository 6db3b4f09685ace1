//! Key checks, decompressors and file:// reading, including what an
//! untrusted cache may hold: links, FIFOs, oversized files, bombs.

use super::*;

#[test]
fn keys_that_leave_the_cache_are_refused() {
    for good in ["nar/abc.nar.zst", "x.narinfo", "a/b/c"] {
        assert!(is_cache_key(good), "{good}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "nar/../../x",
        "nar//x",
        "./x",
        "http://evil/x",
        "nar/x?y",
        "nar\\x",
    ] {
        assert!(!is_cache_key(bad), "{bad}");
    }
}

#[test]
fn decompressors_round_trip() {
    let data = b"nix-archive-1 and then some".repeat(100);
    let zst = zstd::encode_all(&data[..], 3).unwrap();
    let mut xz = Vec::new();
    liblzma::read::XzEncoder::new(&data[..], 6)
        .read_to_end(&mut xz)
        .unwrap();
    let mut bz = Vec::new();
    bzip2::read::BzEncoder::new(&data[..], bzip2::Compression::default())
        .read_to_end(&mut bz)
        .unwrap();
    for (name, bytes) in [("none", &data), ("zstd", &zst), ("xz", &xz), ("bzip2", &bz)] {
        let mut out = Vec::new();
        decompressor(name, Box::new(&bytes[..]))
            .unwrap()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data, "{name}");
    }
    assert!(decompressor("br", Box::new(&data[..])).is_none());
}

#[tokio::test]
async fn file_cache_lists_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let hash = "0".repeat(32);
    std::fs::write(dir.path().join(format!("{hash}.narinfo")), "x").unwrap();
    std::fs::write(dir.path().join("junk.narinfo"), "x").unwrap();
    std::fs::write(dir.path().join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let cfg = TargetConfig::parse(&format!("file://{}", dir.path().display())).unwrap();
    let r = CacheReader::open(&cfg).unwrap();
    assert!(r.can_list());
    let (good, odd) = r.list_narinfos().await.unwrap();
    assert_eq!(good, vec![hash.clone()]);
    assert_eq!(odd, vec!["junk.narinfo".to_owned()]);
    assert_eq!(
        r.get("nix-cache-info", MAX_NARINFO).await.unwrap().unwrap(),
        b"StoreDir: /nix/store\n"
    );
    assert!(
        r.get("missing.narinfo", MAX_NARINFO)
            .await
            .unwrap()
            .is_none()
    );
    assert!(r.get("../etc", MAX_NARINFO).await.is_err());
}

#[test]
fn xz_reads_concatenated_streams_within_a_memory_limit() {
    let xz = |data: &[u8]| {
        let mut out = Vec::new();
        liblzma::read::XzEncoder::new(data, 6)
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut both = xz(b"first ");
    both.extend(xz(b"second"));
    let mut out = Vec::new();
    decompressor("xz", Box::new(&both[..]))
        .unwrap()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, b"first second");
    // Preset 6 asks for an 8 MiB dictionary: over a 1 MiB limit, refused
    // instead of allocated.
    let err = xz_decoder(Box::new(&both[..]), 1024 * 1024)
        .unwrap()
        .read_to_end(&mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("memory"), "{err}");
}

/// A file:// cache in a temp dir, with `secret` outside it.
fn cache_with_secret() -> (tempfile::TempDir, CacheReader) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    std::fs::write(dir.path().join("secret"), "StorePath: top secret\n").unwrap();
    let cfg = TargetConfig::parse(&format!("file://{}/cache", dir.path().display())).unwrap();
    (dir, CacheReader::open(&cfg).unwrap())
}

#[tokio::test]
async fn oversized_small_files_are_refused() {
    let (dir, r) = cache_with_secret();
    let cache = dir.path().join("cache");
    let max = usize::try_from(MAX_NARINFO).unwrap();
    std::fs::write(cache.join("big.narinfo"), vec![b'x'; max + 1]).unwrap();
    std::fs::write(cache.join("ok.narinfo"), vec![b'x'; max]).unwrap();
    let err = r.get("big.narinfo", MAX_NARINFO).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    assert_eq!(
        r.get("ok.narinfo", MAX_NARINFO)
            .await
            .unwrap()
            .unwrap()
            .len(),
        max
    );
    // A listing may be bigger.
    assert!(r.get("big.narinfo", MAX_LISTING).await.unwrap().is_some());
}

#[tokio::test]
async fn symlinks_are_not_followed() {
    let (dir, r) = cache_with_secret();
    let cache = dir.path().join("cache");
    std::os::unix::fs::symlink(dir.path().join("secret"), cache.join("x.narinfo")).unwrap();
    let err = r
        .get("x.narinfo", MAX_NARINFO)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.narinfo is a symbolic link"), "{err}");
    assert!(!err.contains("top secret"), "{err}");
    std::os::unix::fs::symlink("/dev/zero", cache.join("zero.narinfo")).unwrap();
    let err = r
        .get("zero.narinfo", MAX_NARINFO)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("symbolic link"), "{err}");

    // A linked directory on the way, too.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("a.nar"), "nar").unwrap();
    std::os::unix::fs::symlink(&elsewhere, cache.join("nar")).unwrap();
    let err = r.open_blob("nar/a.nar").await.err().unwrap().to_string();
    assert!(err.contains("nar is a symbolic link"), "{err}");

    // Real directories work, and a plain file on the way means missing.
    std::fs::create_dir_all(cache.join("log/sub")).unwrap();
    std::fs::write(cache.join("log/sub/l"), "log").unwrap();
    assert_eq!(
        r.get("log/sub/l", MAX_NARINFO).await.unwrap().unwrap(),
        b"log"
    );
    assert!(r.get("log/sub/l/x", MAX_NARINFO).await.unwrap().is_none());
    assert!(r.get("log/nope/l", MAX_NARINFO).await.unwrap().is_none());
}

#[tokio::test]
async fn fifos_and_directories_are_refused_without_blocking() {
    let (dir, r) = cache_with_secret();
    let cache = dir.path().join("cache");
    let fifo =
        std::ffi::CString::new(cache.join("f.narinfo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path alive for the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // No writer ever opens the FIFO: a blocking open would hang here.
    let err = r
        .get("f.narinfo", MAX_NARINFO)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    std::fs::create_dir(cache.join("d.narinfo")).unwrap();
    let err = r
        .get("d.narinfo", MAX_NARINFO)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("a directory, not a regular file"), "{err}");
}
