//! The narinfo we render for real built paths equals what `nix copy` writes,
//! and a cache we write ourselves passes `nix store verify`.

use std::collections::BTreeSet;
use std::path::Path;

use nix_outbox_core::keys::{SecretKey, read_secret_key_file};
use nix_outbox_core::nar::write_nar;
use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_core::{Sha256Hash, StoreDir, StorePath};
use nix_outbox_testkit as tk;

/// Builds a small graph: a leaf, a multi-output derivation that refers to
/// the leaf and to itself, and a path with an empty-file and symlink tree.
fn build_paths() -> Vec<String> {
    let leaf = tk::sh_derivation("niv-leaf", &["out"], "echo leaf > $out");
    let multi = tk::sh_derivation(
        "niv-multi",
        &["out", "dev"],
        "mkdir -p $out/bin; echo ${leaf} > $out/bin/x; chmod +x $out/bin/x; ln -s $out $out/self; : > $out/empty; echo $out > $dev",
    )
    .replace("${leaf}", &format!("${{{leaf}}}"));
    let paths = tk::nix_build(&format!("let m = {multi}; in [ m.out m.dev ]"));
    assert_eq!(paths.len(), 2, "{paths:?}");
    tk::closure(&paths)
}

/// Our narinfo for `path`, from the store's record (as `nix-store -q` reports
/// it) and our own NAR of the path, which must hash to that record.
fn our_narinfo(sd: &StoreDir, path: &str, nar: &mut Vec<u8>) -> NarInfo {
    nar.clear();
    let size = write_nar(Path::new(path), &mut *nar).unwrap();
    let nar_hash = Sha256Hash::digest(nar);
    assert_eq!(
        nar_hash,
        Sha256Hash::parse(&tk::query("--hash", path)).unwrap(),
        "NarHash of {path}"
    );
    assert_eq!(size.to_string(), tk::query("--size", path));
    let references: BTreeSet<StorePath> = tk::query("--references", path)
        .lines()
        .map(|r| sd.parse_path(r).unwrap())
        .collect();
    let deriver = match tk::query("--deriver", path).as_str() {
        "unknown-deriver" => None,
        d => Some(sd.parse_path(d).unwrap()),
    };
    NarInfo {
        store_path: sd.parse_path(path).unwrap(),
        url: String::new(),
        compression: String::new(),
        file_hash: None,
        file_size: None,
        nar_hash,
        nar_size: size,
        references,
        deriver,
        system: None,
        sigs: BTreeSet::new(),
        ca: None,
    }
}

fn with_file(
    mut ni: NarInfo,
    compression: &str,
    ext: &str,
    file: &[u8],
    key: &SecretKey,
    sd: &StoreDir,
) -> NarInfo {
    let fh = Sha256Hash::digest(file);
    ni.url = format!("nar/{}.nar{ext}", &fh.to_nix32_string()["sha256:".len()..]);
    ni.compression = compression.to_owned();
    ni.file_hash = Some(fh);
    ni.file_size = Some(file.len() as u64);
    ni.sign(sd, key);
    ni
}

fn read_nix_narinfo(cache: &Path, sd: &StoreDir, path: &str) -> String {
    let p = sd.parse_path(path).unwrap();
    std::fs::read_to_string(cache.join(format!("{}.narinfo", p.hash_part()))).unwrap()
}

#[test]
fn narinfo_equals_nix_copy_for_none_and_zstd() {
    let sd = StoreDir::default();
    let d = tempfile::tempdir().unwrap();
    let (sk_file, _) = tk::nix_generate_key(d.path(), "niv-1");
    let key = read_secret_key_file(&sk_file).unwrap().key;
    let paths = build_paths();
    let (none, zst) = (d.path().join("none"), d.path().join("zstd"));
    tk::nix_copy_to(
        &format!(
            "file://{}?compression=none&secret-key={}",
            none.display(),
            sk_file.display()
        ),
        &paths,
    );
    tk::nix_copy_to(
        &format!(
            "file://{}?compression=zstd&secret-key={}",
            zst.display(),
            sk_file.display()
        ),
        &paths,
    );

    let mut nar = Vec::new();
    let mut zstd_identical = 0;
    for path in &paths {
        let base = our_narinfo(&sd, path, &mut nar);

        // compression=none: the file is the NAR, so every line must match.
        let ours = with_file(base.clone(), "none", "", &nar, &key, &sd).render(&sd);
        assert_eq!(
            ours,
            read_nix_narinfo(&none, &sd, path),
            "compression=none narinfo of {path}"
        );

        // compression=zstd: Nix 2.8 compresses through libarchive's zstd
        // filter, we through libzstd at level 3; the frames may differ
        // (block boundaries, content-size header) while decoding to the same
        // NAR. So URL/FileHash/FileSize must match exactly only when the
        // compressed bytes are identical; from NarHash down they always must.
        let nix_text = read_nix_narinfo(&zst, &sd, path);
        let nix_ni = NarInfo::parse(&sd, nix_text.as_bytes()).unwrap();
        let nix_file = std::fs::read(zst.join(&nix_ni.url)).unwrap();
        assert_eq!(
            zstd::decode_all(&nix_file[..]).unwrap(),
            nar,
            "Nix's .nar.zst decodes to our NAR"
        );
        let our_file = zstd::encode_all(&nar[..], 3).unwrap();
        let ours = with_file(base, "zstd", ".zst", &our_file, &key, &sd).render(&sd);
        let tail = |s: &str| s[s.find("NarHash:").unwrap()..].to_owned();
        assert_eq!(
            tail(&ours),
            tail(&nix_text),
            "zstd narinfo of {path}, from NarHash down"
        );
        assert_eq!(ours.lines().next(), nix_text.lines().next());
        assert_eq!(ours.lines().nth(2), Some("Compression: zstd"));
        if our_file == nix_file {
            assert_eq!(
                ours, nix_text,
                "identical compressed bytes must give an identical narinfo"
            );
            zstd_identical += 1;
        }
    }
    eprintln!(
        "zstd files byte-identical to Nix's: {zstd_identical}/{}",
        paths.len()
    );
}

#[test]
fn cache_written_by_us_passes_nix_store_verify() {
    let sd = StoreDir::default();
    let d = tempfile::tempdir().unwrap();
    let key = SecretKey::generate("niv-ours-1").unwrap();
    let cache = d.path().join("cache");
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    let mut nar = Vec::new();
    let paths = build_paths();
    for path in &paths {
        let base = our_narinfo(&sd, path, &mut nar);
        let ni = with_file(base, "none", "", &nar, &key, &sd);
        std::fs::write(cache.join(&ni.url), &nar).unwrap();
        std::fs::write(
            cache.join(format!("{}.narinfo", ni.store_path.hash_part())),
            ni.render(&sd),
        )
        .unwrap();
    }
    let url = format!("file://{}", cache.display());
    let ok = tk::nix_store_verify_all(&url, &key.public_key().to_string());
    assert!(
        ok.status.success(),
        "nix store verify rejected our cache: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The same cache with a wrong trusted key must fail: the check above can fail.
    let other = SecretKey::generate("niv-ours-1")
        .unwrap()
        .public_key()
        .to_string();
    assert!(!tk::nix_store_verify_all(&url, &other).status.success());

    // A tampered fingerprint (NarSize) is caught by Nix and by us.
    let victim = sd.parse_path(&paths[0]).unwrap();
    let ni_path = cache.join(format!("{}.narinfo", victim.hash_part()));
    let mut ni = NarInfo::parse(&sd, &std::fs::read(&ni_path).unwrap()).unwrap();
    ni.nar_size += 8;
    assert!(ni.valid_signers(&sd, &[key.public_key()]).is_empty());
    std::fs::write(&ni_path, ni.render(&sd)).unwrap();
    assert!(
        !tk::nix_store_verify_all(&url, &key.public_key().to_string())
            .status
            .success()
    );
}
