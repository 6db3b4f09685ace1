//! The checks on made-up caches: a good path passes, and each kind of
//! damage is reported as itself, without its consequences.

use std::collections::{BTreeMap, BTreeSet};

use nix_outbox_core::Sha256Hash;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_core::nar::write_nar;

use super::super::references::*;
use super::*;

const CACHE: &str = "file:///cache";

fn sp(hash_char: char, name: &str) -> StorePath {
    StorePath::from_base_name(&format!("{}-{name}", hash_char.to_string().repeat(32))).unwrap()
}

/// A small NAR of a real directory tree.
fn nar_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("hello"), b"hello world\n").unwrap();
    std::os::unix::fs::symlink("hello", root.join("link")).unwrap();
    let mut out = Vec::new();
    write_nar(&root, &mut out).unwrap();
    out
}

/// A signed narinfo for `nar`, stored uncompressed.
fn good(key: &SecretKey, nar: &[u8], references: &[StorePath]) -> NarInfo {
    let sd = StoreDir::default();
    let mut info = NarInfo {
        store_path: sp('a', "x"),
        url: "nar/x.nar".to_owned(),
        compression: "none".to_owned(),
        file_hash: Some(Sha256Hash::digest(nar)),
        file_size: Some(nar.len() as u64),
        nar_hash: Sha256Hash::digest(nar),
        nar_size: nar.len() as u64,
        references: references.iter().cloned().collect(),
        deriver: None,
        system: None,
        sigs: BTreeSet::new(),
        ca: None,
    };
    info.sign(&sd, key);
    info
}

/// `check_nar` with time enough.
fn check_nar_now(input: impl Read, info: &NarInfo, want_listing: bool) -> NarCheck {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
    check_nar(input, info, want_listing, deadline)
}

fn kinds(p: &[Problem]) -> Vec<&'static str> {
    p.iter().map(|p| p.kind).collect()
}

#[test]
fn a_good_narinfo_and_nar_pass() {
    let (sd, key) = (StoreDir::default(), SecretKey::generate("k-1").unwrap());
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let text = info.render(&sd);
    let (parsed, problems) = check_narinfo(
        &sd,
        &[key.public_key()],
        CACHE,
        info.store_path.hash_part(),
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(problems, vec![]);
    let c = check_nar_now(&nar[..], &parsed, true);
    assert!(c.problems.is_empty() && c.read_error.is_none(), "{c:?}");
    let listing = c.listing.unwrap();
    assert_eq!(
        listing_problem(listing.to_json().as_bytes(), &listing),
        None
    );
    // Nix's writer spaces and orders keys its own way: still equal.
    let reordered = listing
        .to_json()
        .replace("{\"version\":1,", "{ \"version\" : 1 , ");
    assert_eq!(listing_problem(reordered.as_bytes(), &listing), None);
}

#[test]
fn tampered_fields_break_the_signature() {
    let (sd, key) = (StoreDir::default(), SecretKey::generate("k-1").unwrap());
    let nar = nar_bytes();
    let mut info = good(&key, &nar, &[]);
    info.references.insert(sp('b', "dep"));
    let text = info.render(&sd);
    let (_, problems) = check_narinfo(
        &sd,
        &[key.public_key()],
        CACHE,
        &"a".repeat(32),
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(kinds(&problems), ["signature"]);
    assert!(
        problems[0].message.contains("k-1 does not verify"),
        "{problems:?}"
    );
}

#[test]
fn signature_problems_say_which_keys() {
    let sd = StoreDir::default();
    let (key, other) = (
        SecretKey::generate("k-1").unwrap(),
        SecretKey::generate("other-1").unwrap(),
    );
    let mut info = good(&key, &nar_bytes(), &[]);
    let m = signature_problem(&sd, &[other.public_key()], &info, "A").unwrap();
    assert!(
        m.contains("signed only by k-1") && m.contains("other-1"),
        "{m}"
    );
    assert_eq!(
        signature_problem(&sd, &[other.public_key(), key.public_key()], &info, "A"),
        None
    );
    info.sigs.clear();
    let m = signature_problem(&sd, &[key.public_key()], &info, "A").unwrap();
    assert!(m.starts_with("not signed"), "{m}");
    info.sigs.insert("k-1:garbage".to_owned());
    let m = signature_problem(&sd, &[key.public_key()], &info, "A").unwrap();
    assert!(m.contains("malformed"), "{m}");
}

#[test]
fn a_narinfo_under_the_wrong_name_or_with_an_outside_url() {
    let (sd, key) = (StoreDir::default(), SecretKey::generate("k-1").unwrap());
    let mut info = good(&key, &nar_bytes(), &[]);
    info.url = "../../etc/passwd".to_owned();
    let text = info.render(&sd);
    let (_, problems) = check_narinfo(
        &sd,
        &[key.public_key()],
        CACHE,
        &"c".repeat(32),
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(kinds(&problems), ["store-path-mismatch", "url"]);
    let bad = check_narinfo(&sd, &[], CACHE, "h", b"StorePath: /nix/store/x\n").unwrap_err();
    assert_eq!(bad.kind, "narinfo-invalid");
}

#[test]
fn a_truncated_file_is_reported_as_such_and_nothing_more() {
    let key = SecretKey::generate("k-1").unwrap();
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let c = check_nar_now(&nar[..100], &info, false);
    assert_eq!(c.problems.len(), 1, "{c:?}");
    assert_eq!(c.problems[0].0, "file-size");
    assert!(
        c.problems[0]
            .1
            .contains(&format!("truncated: 100 of {} bytes", nar.len())),
        "{c:?}"
    );
}

#[test]
fn altered_bytes_of_the_same_size_fail_the_file_hash() {
    let key = SecretKey::generate("k-1").unwrap();
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let mut bad = nar.clone();
    let i = bad.windows(5).position(|w| w == b"hello").unwrap();
    bad[i] = b'j';
    let c = check_nar_now(&bad[..], &info, false);
    assert_eq!(
        c.problems.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["file-hash"]
    );
    // Without FileHash/FileSize (optional fields), the NAR hash catches it.
    let mut bare = info.clone();
    bare.file_hash = None;
    bare.file_size = None;
    let c = check_nar_now(&bad[..], &bare, false);
    assert_eq!(
        c.problems.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["nar-hash"]
    );
}

#[test]
fn nar_size_trailing_data_invalid_nar_and_unknown_compression() {
    let key = SecretKey::generate("k-1").unwrap();
    let nar = nar_bytes();
    let mut info = good(&key, &nar, &[]);
    info.file_hash = None;
    info.file_size = None;
    info.nar_size += 8;
    let c = check_nar_now(&nar[..], &info, false);
    assert_eq!(
        c.problems.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["nar-size"]
    );
    let mut longer = nar.clone();
    longer.extend_from_slice(&[0; 8]);
    let c = check_nar_now(&longer[..], &info, false);
    assert_eq!(c.problems[0].0, "nar-trailing-data", "{c:?}");
    let c = check_nar_now(&b"not a nar at all"[..], &info, false);
    assert_eq!(
        c.problems.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["nar-invalid"]
    );
    info.compression = "br".to_owned();
    let c = check_nar_now(&nar[..], &info, false);
    assert_eq!(c.problems[0].0, "compression-unsupported");
}

#[test]
fn a_failing_reader_is_a_read_error_not_a_problem() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("connection reset"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let key = SecretKey::generate("k-1").unwrap();
    let info = good(&key, &nar_bytes(), &[]);
    let c = check_nar_now(Broken(16), &info, false);
    assert!(c.problems.is_empty(), "{c:?}");
    assert_eq!(c.read_error.as_deref(), Some("connection reset"));
}

#[test]
fn references_must_be_in_the_cache_as_themselves() {
    let sd = StoreDir::default();
    let (top, dep, gone) = (sp('a', "top"), sp('b', "dep"), sp('c', "gone"));
    let mut found = BTreeMap::new();
    let present = |p: &StorePath, refs: &[&StorePath]| Found::Present {
        store_path: p.clone(),
        references: refs.iter().map(|r| (*r).clone()).collect(),
    };
    found.insert(
        top.hash_part().to_owned(),
        present(&top, &[&top, &dep, &gone]),
    );
    // The cache has dep's hash, but for another name.
    found.insert(dep.hash_part().to_owned(), present(&sp('b', "other"), &[]));
    let (problems, notes) = reference_problems(&sd, CACHE, &found, &BTreeMap::new());
    assert!(notes.is_empty());
    assert_eq!(
        kinds(&problems),
        ["reference-mismatch", "reference-missing"]
    );
    assert!(
        problems[1].message.contains(&sd.display(&gone)),
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.path == sd.display(&top)));
    assert!(
        problems[1].message.contains("--upstream URL"),
        "{problems:?}"
    );
    assert_eq!(
        missing_references(&found),
        BTreeSet::from([gone.hash_part().to_owned()])
    );
    // Served upstream: a note, not a problem; unknown upstream: neither.
    let upstream = BTreeMap::from([(
        gone.hash_part().to_owned(),
        Upstream::Has("https://up".to_owned()),
    )]);
    let (problems, notes) = reference_problems(&sd, CACHE, &found, &upstream);
    assert_eq!(kinds(&problems), ["reference-mismatch"]);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("https://up") && notes[0].contains(&sd.display(&gone)));
    let upstream = BTreeMap::from([(gone.hash_part().to_owned(), Upstream::Unknown)]);
    let (problems, notes) = reference_problems(&sd, CACHE, &found, &upstream);
    assert_eq!(
        (kinds(&problems), notes),
        (vec!["reference-mismatch"], vec![])
    );
    found.insert(dep.hash_part().to_owned(), present(&dep, &[]));
    found.insert(gone.hash_part().to_owned(), Found::Unusable);
    assert_eq!(
        reference_problems(&sd, CACHE, &found, &BTreeMap::new()),
        (vec![], vec![])
    );
}

#[test]
fn path_arguments_in_three_spellings() {
    let sd = StoreDir::default();
    let h = "a".repeat(32);
    for arg in [format!("/nix/store/{h}-x"), format!("{h}-x"), h.clone()] {
        assert_eq!(hash_of_arg(&sd, &arg), Ok(h.clone()), "{arg}");
    }
    assert!(
        hash_of_arg(&sd, "/tmp/x")
            .unwrap_err()
            .contains("/nix/store")
    );
    assert!(hash_of_arg(&sd, "hello").is_err());
}

/// A NAR holding one regular file of `size` zero bytes.
fn nar_of_zeros(size: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeros");
    std::fs::write(&file, vec![0u8; size]).unwrap();
    let mut out = Vec::new();
    write_nar(&file, &mut out).unwrap();
    out
}

#[test]
fn a_decompression_bomb_stops_at_nar_size() {
    let key = SecretKey::generate("k-1").unwrap();
    let big = nar_of_zeros(32 << 20);
    // Uncompressed here: the cap is on what comes out of any decompressor.
    let mut info = good(&key, &big, &[]);
    // The narinfo claims a small NAR; the file inflates to 32 MiB.
    info.nar_size = 1000;
    let c = check_nar_now(&big[..], &info, false);
    assert_eq!(kinds_of(&c), ["nar-size"], "{c:?}");
    assert!(
        c.problems[0]
            .1
            .contains("more than its NarSize of 1000 bytes")
    );

    // Trailing data is capped the same way.
    let small = nar_bytes();
    let mut data = small.clone();
    data.extend(vec![0u8; 32 << 20]);
    let mut info = good(&key, &data, &[]);
    (info.nar_hash, info.nar_size) = (Sha256Hash::digest(&small), small.len() as u64);
    let c = check_nar_now(&data[..], &info, false);
    assert_eq!(kinds_of(&c), ["nar-trailing-data"], "{c:?}");
    assert!(
        c.problems[0].1.contains("more than 1 bytes follow"),
        "{c:?}"
    );
}

#[test]
fn an_endless_file_is_read_only_to_its_limit() {
    let key = SecretKey::generate("k-1").unwrap();
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let endless = (&nar[..]).chain(io::repeat(7));
    let c = check_nar_now(endless, &info, false);
    assert_eq!(kinds_of(&c), ["file-size"], "{c:?}");
    assert!(c.problems[0].1.contains("longer than"), "{c:?}");
    // Without FileSize: a fixed multiple of NarSize, then a problem.
    let mut bare = info.clone();
    bare.file_size = None;
    bare.file_hash = None;
    let endless = (&nar[..]).chain(io::repeat(7));
    let c = check_nar_now(endless, &bare, false);
    assert_eq!(kinds_of(&c), ["file-size"], "{c:?}");
}

#[test]
fn past_the_deadline_reading_stops_as_a_read_error() {
    let key = SecretKey::generate("k-1").unwrap();
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let c = check_nar(&nar[..], &info, false, past);
    assert!(c.problems.is_empty(), "{c:?}");
    assert!(c.read_error.unwrap().contains("took too long"));
}

fn kinds_of(c: &NarCheck) -> Vec<&'static str> {
    c.problems.iter().map(|p| p.0).collect()
}

/// Issue 14: the NAR deadline came from the cache's own FileSize, so a
/// hostile narinfo claiming a huge file bought itself days.
#[test]
fn the_nar_deadline_has_a_fixed_ceiling_whatever_the_file_size_claims() {
    let key = SecretKey::generate("t-1").unwrap();
    let mut info = good(&key, &nar_bytes(), &[]);
    let now = std::time::Instant::now();
    let ten_minutes = now + std::time::Duration::from_secs(600);
    assert_eq!(nar_deadline(&info, true, now), ten_minutes);
    info.file_size = Some(u64::MAX);
    assert_eq!(nar_deadline(&info, true, now), now + MAX_NAR_CHECK);
    // Unsigned by a trusted key, its sizes buy it nothing.
    assert_eq!(nar_deadline(&info, false, now), ten_minutes);
}

/// Issue 14: a 64 MiB `.ls` was parsed into a JSON tree of 1–2 GiB. One
/// far larger than the NAR's own listing is refused unparsed; the same
/// listing respelled still matches.
#[test]
fn a_listing_far_larger_than_the_nar_needs_is_refused_unparsed() {
    let key = SecretKey::generate("t-1").unwrap();
    let nar = nar_bytes();
    let info = good(&key, &nar, &[]);
    let listing = check_nar_now(&nar[..], &info, true).listing.unwrap();
    let ours = listing.to_json();
    assert_eq!(listing_problem(ours.as_bytes(), &listing), None);
    let respelled =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&ours).unwrap())
            .unwrap();
    assert_eq!(listing_problem(respelled.as_bytes(), &listing), None);
    // Deeply nested garbage: parsing it whole is what cost the memory.
    let huge = "[".repeat(8 << 20);
    let p = listing_problem(huge.as_bytes(), &listing).unwrap();
    assert!(p.contains("far more than the NAR's files need"), "{p}");
}
