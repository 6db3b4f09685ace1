//! Our NAR writer and parser against the real Nix: a generated tree, added
//! to the store with `nix-store --add`, must dump (`nix-store --dump`) to
//! exactly the bytes we write for the original tree, and the listing we build
//! while writing must match the one parsed from Nix's NAR and point at the
//! right bytes. Everything is streamed and hashed, since the tree holds a
//! file over 64 MiB. Requires `nix-store` on PATH: fails, not skips, without.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix_outbox_core::hash::{HashingCounter, Sha256Hash};
use nix_outbox_core::nar::{ListingBuilder, ListingNode, parse_nar_tee, write_nar_with_listing};

const BIG: usize = 64 * 1024 * 1024 + 12_345;

fn make_tree(root: &Path) {
    let file = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    file("plain", b"plain file\n", 0o644);
    file("exe", b"#!/bin/sh\necho hi\n", 0o755);
    file("group-exec-only", b"not executable for Nix", 0o654);
    file("empty", b"", 0o644);
    file("a/b/c/deep", b"deep", 0o600);
    file("a/Z-upper-sorts-first", b"Z", 0o644);
    fs::write(
        root.join(OsStr::from_bytes(b"a/not-utf8-\xff\xfe")),
        b"odd name",
    )
    .unwrap();
    symlink("plain", root.join("link-to-file")).unwrap();
    symlink("a/b", root.join("link-to-dir")).unwrap();
    symlink("/nonexistent/dangling", root.join("a/dangling")).unwrap();

    // Big enough to cross every buffer size several times; a non-repeating
    // pattern so misplaced chunks change the hash.
    let mut f = io::BufWriter::new(fs::File::create(root.join("big")).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..BIG / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
    f.write_all(&[0xab; BIG % 8]).unwrap();
    f.into_inner().unwrap().sync_all().unwrap();
}

fn nix_store(args: &[&OsStr]) -> Command {
    let mut c = Command::new("nix-store");
    c.args(args);
    c
}

/// Hashes the NAR byte ranges of the listed files as the NAR streams past.
struct RegionHasher {
    /// (start, len, hasher), sorted by start, non-overlapping.
    regions: Vec<(u64, u64, HashingCounter)>,
    pos: u64,
}

impl Write for RegionHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos + buf.len() as u64;
        for (start, len, h) in &mut self.regions {
            let (lo, hi) = ((*start).max(self.pos), (*start + *len).min(end));
            if lo < hi {
                h.update(&buf[(lo - self.pos) as usize..(hi - self.pos) as usize]);
            }
        }
        self.pos = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes everything to both sinks.
struct Tee<A, B>(A, B);
impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

fn files(node: &ListingNode, path: PathBuf, out: &mut Vec<(PathBuf, u64, u64)>) {
    match node {
        ListingNode::Regular {
            size, nar_offset, ..
        } => out.push((path, *nar_offset, *size)),
        ListingNode::Symlink { .. } => {}
        ListingNode::Directory { entries } => {
            for (name, child) in entries {
                files(child, path.join(OsStr::from_bytes(name)), out);
            }
        }
    }
}

fn hash_file(p: &Path) -> Sha256Hash {
    let mut h = HashingCounter::new();
    io::copy(&mut fs::File::open(p).unwrap(), &mut h).unwrap();
    h.finish().0
}

#[test]
fn nar_matches_nix_store_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nar-vs-nix-tree");
    fs::create_dir(&root).unwrap();
    make_tree(&root);

    let mut ours = HashingCounter::new();
    let (our_size, our_listing) = write_nar_with_listing(&root, &mut ours).unwrap();
    let (our_hash, hashed) = ours.finish();
    assert_eq!(hashed, our_size);
    assert!(our_size > BIG as u64);

    let added = nix_store(&["--add".as_ref(), root.as_os_str()])
        .output()
        .expect("running nix-store (is Nix installed and on PATH?)");
    assert!(added.status.success(), "nix-store --add: {added:?}");
    let store_path = String::from_utf8(added.stdout).unwrap().trim().to_owned();

    let mut dump = nix_store(&["--dump".as_ref(), store_path.as_ref()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("running nix-store --dump");
    let mut stdout = dump.stdout.take().unwrap();
    let mut entries = Vec::new();
    files(&our_listing.root, root.clone(), &mut entries);
    let regions = RegionHasher {
        regions: entries
            .iter()
            .map(|&(_, o, s)| (o, s, HashingCounter::new()))
            .collect(),
        pos: 0,
    };
    let mut tee = Tee(HashingCounter::new(), regions);
    let mut builder = ListingBuilder::new();
    let parsed = parse_nar_tee(&mut stdout, &mut tee, &mut builder);
    // Nothing may follow the NAR on Nix's stdout.
    let rest = io::copy(&mut stdout, &mut io::sink()).unwrap();
    assert!(dump.wait().unwrap().success());
    let nix_size = parsed.expect("our parser rejected Nix's NAR");
    assert_eq!(rest, 0);

    let Tee(nix_hasher, regions) = tee;
    assert_eq!(
        nix_hasher.finish(),
        (our_hash, our_size),
        "NAR differs from nix-store --dump"
    );
    assert_eq!(nix_size, our_size);
    assert_eq!(builder.finish().unwrap(), our_listing);
    let json = our_listing.to_json();
    assert!(json.contains(r#""exe":{"type":"regular","size":18,"executable":true,"narOffset":"#));
    assert!(json.contains(r#""group-exec-only":{"type":"regular","size":22,"narOffset":"#));

    assert_eq!(regions.regions.len(), 8);
    for ((path, _, size), (_, _, h)) in entries.iter().zip(regions.regions) {
        assert_eq!(h.finish(), (hash_file(path), *size), "{}", path.display());
    }

    // Best effort: the store path is garbage now.
    let _ = nix_store(&["--delete".as_ref(), store_path.as_ref()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
