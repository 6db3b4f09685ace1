use super::*;
use proptest::prelude::*;

const TOP_NONE: &str = include_str!("../../tests/data/narinfo/top-none.narinfo");
const DEP_NONE: &str = include_str!("../../tests/data/narinfo/dep-none.narinfo");
const TOP_ZSTD: &str = include_str!("../../tests/data/narinfo/top-zstd.narinfo");
// The key that signed the fixtures (see tests/data/narinfo/README.md).
const SK: &str = "test-1:D804M/umUR5GKx67ZYgxUGKC3Hd2qLSy0GIbPuA1+BHDqyRQNiAp9vcEPcAxWR5HZEzLZkWlobfDdu8aL8v2Qw==";

fn sd() -> StoreDir {
    StoreDir::default()
}

#[test]
fn nix_written_narinfos_round_trip_byte_for_byte() {
    for text in [TOP_NONE, DEP_NONE, TOP_ZSTD] {
        let ni = NarInfo::parse(&sd(), text.as_bytes()).unwrap();
        assert_eq!(ni.render(&sd()), text);
    }
    let dep = NarInfo::parse(&sd(), DEP_NONE.as_bytes()).unwrap();
    assert!(dep.references.is_empty());
    assert!(DEP_NONE.contains("References: \n"));
    let top = NarInfo::parse(&sd(), TOP_ZSTD.as_bytes()).unwrap();
    assert_eq!(top.compression, "zstd");
    assert_eq!(top.nar_size, 760);
    assert_eq!(top.file_size, Some(251));
    assert_eq!(top.references.len(), 2);
    assert_eq!(
        top.deriver.as_ref().unwrap().as_str(),
        "b916gggw0ydvlhz4pmw8mwibclyzdik3-top.drv"
    );
}

#[test]
fn our_signature_equals_nixs_and_verifies() {
    let sk = SecretKey::parse(SK).unwrap();
    let pk = sk.public_key();
    for text in [TOP_NONE, DEP_NONE] {
        let nix = NarInfo::parse(&sd(), text.as_bytes()).unwrap();
        assert_eq!(
            nix.valid_signers(&sd(), std::slice::from_ref(&pk)),
            vec!["test-1"]
        );
        let mut ours = nix.clone();
        ours.sigs.clear();
        ours.sign(&sd(), &sk);
        // ed25519 is deterministic: the same key over the same fingerprint gives Nix's bytes.
        assert_eq!(ours.sigs, nix.sigs);
        assert_eq!(ours.render(&sd()), text);
    }
}

#[test]
fn tampered_fingerprint_is_rejected() {
    let pk = SecretKey::parse(SK).unwrap().public_key();
    let good = NarInfo::parse(&sd(), TOP_NONE.as_bytes()).unwrap();
    let mut t = good.clone();
    t.nar_size += 1;
    assert!(t.valid_signers(&sd(), std::slice::from_ref(&pk)).is_empty());
    let mut t = good.clone();
    t.references.pop_first();
    assert!(t.valid_signers(&sd(), std::slice::from_ref(&pk)).is_empty());
    let mut t = good.clone();
    t.nar_hash.0[0] ^= 1;
    assert!(t.valid_signers(&sd(), std::slice::from_ref(&pk)).is_empty());
    // Another store dir changes every path in the fingerprint.
    let other = StoreDir::new("/other/store").unwrap();
    assert!(
        good.valid_signers(&other, std::slice::from_ref(&pk))
            .is_empty()
    );
    // Fields outside the fingerprint (URL, compression) do not invalidate it.
    let mut t = good.clone();
    t.url = "nar/elsewhere.nar".into();
    assert_eq!(t.valid_signers(&sd(), &[pk]), vec!["test-1"]);
}

#[test]
fn fingerprint_format() {
    let dep = NarInfo::parse(&sd(), DEP_NONE.as_bytes()).unwrap();
    assert_eq!(
        dep.fingerprint(&sd()),
        "1;/nix/store/l1jah9m2y31igs78fbvhh06dxpj2dqib-dep;sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv;120;"
    );
    let top = NarInfo::parse(&sd(), TOP_NONE.as_bytes()).unwrap();
    assert!(top.fingerprint(&sd()).ends_with(
        ";760;/nix/store/l1jah9m2y31igs78fbvhh06dxpj2dqib-dep,/nix/store/pjjljsdv95v1hdir8qa3i9s3lnm1gji0-top"
    ));
}

#[test]
fn resigning_replaces_same_key_name() {
    let sk = SecretKey::parse(SK).unwrap();
    let mut ni = NarInfo::parse(&sd(), TOP_NONE.as_bytes()).unwrap();
    ni.sigs.insert("other-1:xyz".into());
    ni.sign(&sd(), &sk);
    ni.sign(&sd(), &sk);
    assert_eq!(ni.sigs.len(), 2);
}

#[test]
fn lenient_parsing() {
    // Unknown keys ignored, Compression defaults to bzip2, `References:` without
    // its trailing space accepted, unknown-deriver means none, CRLF-free blank lines skipped.
    let text = "StorePath: /nix/store/l1jah9m2y31igs78fbvhh06dxpj2dqib-dep\nURL: nar/x.nar.bz2\nFuture: thing\n\nNarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\nNarSize: 120\nReferences:\nDeriver: unknown-deriver\n";
    let ni = NarInfo::parse(&sd(), text.as_bytes()).unwrap();
    assert_eq!(ni.compression, "bzip2");
    assert!(ni.references.is_empty() && ni.deriver.is_none() && ni.file_hash.is_none());
    // SRI and hex spellings of NarHash are accepted too.
    let sri = text.replace(
        "sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv",
        &ni.nar_hash.to_sri(),
    );
    assert_eq!(
        NarInfo::parse(&sd(), sri.as_bytes()).unwrap().nar_hash,
        ni.nar_hash
    );
}

#[test]
fn errors_name_the_line_and_field() {
    let e = |t: &str| NarInfo::parse(&sd(), t.as_bytes()).unwrap_err().to_string();
    let base = DEP_NONE;
    let msg = e(&base.replace("NarSize: 120", "NarSize: 12x"));
    assert!(
        msg.contains("line 7") && msg.contains("NarSize") && msg.contains("12x"),
        "{msg}"
    );
    let msg = e(&base.replace("StorePath: /nix/store/", "StorePath: /etc/"));
    assert!(msg.contains("line 1") && msg.contains("/etc/"), "{msg}");
    let msg = e(&base.replace("NarHash: sha256:", "NarHash: md5:"));
    assert!(msg.contains("line 6") && msg.contains("NarHash"), "{msg}");
    let msg = e(&base.replace("URL: ", "URL "));
    assert!(
        msg.contains("line 2") && msg.contains("Key: value"),
        "{msg}"
    );
    assert!(e(&base.replace("NarSize: 120\n", "")).contains("NarSize"));
    assert!(e(&base.replace("NarSize: 120", "NarSize: 0")).contains("corrupt"));
    assert!(e(&format!("{base}NarSize: 1\n")).contains("twice"));
    assert!(e(&base.replace("References: ", "References: ../../etc")).contains("line 8"));
    assert!(
        NarInfo::parse(&sd(), b"\xff\xfe")
            .unwrap_err()
            .to_string()
            .contains("UTF-8")
    );
}

#[test]
fn long_offending_text_is_not_quoted_whole() {
    let e = |t: &str| NarInfo::parse(&sd(), t.as_bytes()).unwrap_err().to_string();
    let secret = "s3cr3t".repeat(100);
    for text in [
        format!("{secret}\n"),
        DEP_NONE.replace("NarSize: 120", &format!("NarSize: {secret}")),
        DEP_NONE.replace("StorePath: /nix/store/", &format!("StorePath: /{secret}")),
        DEP_NONE.replace("NarHash: sha256:", &format!("NarHash: sha256:{secret}")),
    ] {
        let msg = e(&text);
        assert!(msg.len() < 250, "{msg}");
        assert!(
            msg.contains("s3cr3t") && !msg.contains(&"s3cr3t".repeat(20)),
            "{msg}"
        );
    }
    // Short ones stay whole.
    let msg = e(&DEP_NONE.replace("StorePath: /nix/store/", "StorePath: /etc/"));
    assert!(msg.contains("/etc/") && !msg.contains('…'), "{msg}");
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    (
        "[0-9a-dfgi-np-sv-z]{32}",
        "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,20}",
    )
        .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-{n}")).unwrap())
}

fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
    (
        arb_path(),
        "[a-z0-9/._-]{1,40}",
        prop::sample::select(vec!["none", "xz", "zstd", "bzip2", "br"]),
        proptest::option::of((any::<[u8; 32]>(), any::<u64>())),
        any::<[u8; 32]>(),
        1..u64::MAX,
        prop::collection::btree_set(arb_path(), 0..5),
        proptest::option::of(arb_path()),
        prop::collection::btree_set("[a-z]{1,8}-[0-9]:[A-Za-z0-9+/]{86}==", 0..3),
        proptest::option::of("fixed:r:sha256:[0-9a-z]{52}"),
    )
        .prop_map(
            |(store_path, url, compression, file, nar, nar_size, references, deriver, sigs, ca)| {
                NarInfo {
                    store_path,
                    url,
                    compression: compression.to_owned(),
                    file_hash: file.map(|f| Sha256Hash(f.0)),
                    file_size: file.map(|f| f.1),
                    nar_hash: Sha256Hash(nar),
                    nar_size,
                    references,
                    deriver,
                    system: None,
                    sigs,
                    ca,
                }
            },
        )
}

proptest! {
    #[test]
    fn render_parse_render_is_identity(ni in arb_narinfo()) {
        let text = ni.render(&sd());
        let back = NarInfo::parse(&sd(), text.as_bytes()).unwrap();
        prop_assert_eq!(&back, &ni);
        prop_assert_eq!(back.render(&sd()), text);
    }

    #[test]
    fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = NarInfo::parse(&sd(), &bytes);
    }
}
