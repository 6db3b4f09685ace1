//! Random trees on disk → writer → parser, checking that structure, contents
//! and listings survive, and that the writer's and parser's listings agree.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::hash::{HashingCounter, Sha256Hash};

#[derive(Debug, Clone)]
enum Tree {
    File { contents: Vec<u8>, mode: u32 },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

/// What a parse of the NAR should report, in NAR order.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Dir(Vec<Vec<u8>>),
    File(Vec<Vec<u8>>, bool, Vec<u8>),
    Link(Vec<Vec<u8>>, Vec<u8>),
}

/// Deterministic filler, so big files cost no proptest shrinking effort.
fn filler(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Includes bytes that are not UTF-8 and characters around ASCII case
    // boundaries, where byte order and "natural" order differ.
    let byte = prop_oneof![
        b'a'..=b'd',
        Just(b'A'),
        Just(b'.'),
        Just(b'-'),
        0x80u8..=0xff
    ];
    prop::collection::vec(byte, 1..6).prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn leaf() -> impl Strategy<Value = Tree> {
    let len = prop_oneof![4 => 0usize..20, 2 => 0usize..2000, 1 => 60_000usize..140_000];
    // Owner-execute decides; group/other bits must not.
    let mode = prop::sample::select(vec![0o644, 0o755, 0o744, 0o654, 0o645, 0o500, 0o400]);
    let file = (len, any::<u32>(), mode).prop_map(|(len, seed, mode)| Tree::File {
        contents: filler(len, seed),
        mode,
    });
    let target_byte = prop_oneof![b'a'..=b'c', Just(b'/'), Just(b'.'), 0x80u8..=0xff];
    let link = prop::collection::vec(target_byte, 1..40).prop_map(Tree::Link);
    prop_oneof![3 => file, 1 => link]
}

fn tree() -> impl Strategy<Value = Tree> {
    leaf().prop_recursive(4, 40, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Tree::Dir)
    })
}

fn materialize(path: &Path, t: &Tree) {
    match t {
        Tree::File { contents, mode } => {
            fs::write(path, contents).unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).unwrap();
        }
        Tree::Link(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), path).unwrap(),
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                materialize(&path.join(OsStr::from_bytes(name)), child);
            }
        }
    }
}

fn expected_events(t: &Tree, path: &mut Vec<Vec<u8>>, out: &mut Vec<Event>) {
    match t {
        Tree::File { contents, mode } => out.push(Event::File(
            path.clone(),
            mode & 0o100 != 0,
            contents.clone(),
        )),
        Tree::Link(target) => out.push(Event::Link(path.clone(), target.clone())),
        Tree::Dir(entries) => {
            out.push(Event::Dir(path.clone()));
            for (name, child) in entries {
                path.push(name.clone());
                expected_events(child, path, out);
                path.pop();
            }
        }
    }
}

/// Records parser events with full paths and file contents.
#[derive(Default)]
struct Recorder {
    path: Vec<Vec<u8>>,
    file: Option<(bool, Vec<u8>, u64)>,
    events: Vec<Event>,
}

impl NarVisitor for Recorder {
    fn regular(&mut self, executable: bool, size: u64, _: u64) -> io::Result<()> {
        self.file = Some((executable, Vec::new(), size));
        Ok(())
    }
    fn data(&mut self, chunk: &[u8]) -> io::Result<()> {
        assert!(!chunk.is_empty());
        self.file.as_mut().unwrap().1.extend_from_slice(chunk);
        Ok(())
    }
    fn regular_end(&mut self) -> io::Result<()> {
        let (exec, contents, size) = self.file.take().unwrap();
        assert_eq!(contents.len() as u64, size);
        self.events
            .push(Event::File(self.path.clone(), exec, contents));
        self.path.pop();
        Ok(())
    }
    fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.events
            .push(Event::Link(self.path.clone(), target.to_vec()));
        self.path.pop();
        Ok(())
    }
    fn directory_start(&mut self) -> io::Result<()> {
        self.events.push(Event::Dir(self.path.clone()));
        Ok(())
    }
    fn entry(&mut self, name: &[u8]) -> io::Result<()> {
        self.path.push(name.to_vec());
        Ok(())
    }
    fn directory_end(&mut self) -> io::Result<()> {
        self.path.pop();
        Ok(())
    }
}

/// Checks every listed file against the model and the NAR bytes it points at.
fn check_listing(node: &ListingNode, t: &Tree, nar: &[u8]) {
    match (node, t) {
        (
            ListingNode::Regular {
                size,
                executable,
                nar_offset,
            },
            Tree::File { contents, mode },
        ) => {
            assert_eq!(*size, contents.len() as u64);
            assert_eq!(*executable, mode & 0o100 != 0);
            let start = *nar_offset as usize;
            assert_eq!(&nar[start..start + contents.len()], &contents[..]);
            // The u64 just before the contents is their length.
            assert_eq!(nar[start - 8..start], size.to_le_bytes());
        }
        (ListingNode::Symlink { target }, Tree::Link(want)) => assert_eq!(target, want),
        (ListingNode::Directory { entries }, Tree::Dir(want)) => {
            assert!(entries.keys().eq(want.keys()));
            for (name, child) in entries {
                check_listing(child, &want[name], nar);
            }
        }
        (got, want) => panic!("listing {got:?} does not match tree {want:?}"),
    }
}

fn roundtrip(t: &Tree) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    materialize(&root, t);

    let mut nar = Vec::new();
    let (size, written_listing) = write_nar_with_listing(&root, &mut nar).unwrap();
    assert_eq!(size, nar.len() as u64);

    let mut recorder = Recorder::default();
    assert_eq!(parse_nar(&nar[..], &mut recorder).unwrap(), size);
    let mut want = Vec::new();
    expected_events(t, &mut Vec::new(), &mut want);
    assert_eq!(recorder.events, want);

    let parsed_listing = parse_complete(&nar).unwrap();
    assert_eq!(parsed_listing, written_listing);
    assert_eq!(parsed_listing.to_json(), written_listing.to_json());
    check_listing(&written_listing.root, t, &nar);

    // Copying through a stream stops exactly at the NAR's end.
    let mut stream = nar.clone();
    stream.extend_from_slice(b"after");
    let mut rest = &stream[..];
    let mut copy = Vec::new();
    assert_eq!(copy_nar(&mut rest, &mut copy).unwrap(), size);
    assert_eq!(copy, nar);
    assert_eq!(rest, b"after");

    // Without the listing the bytes are identical.
    let mut again = Vec::new();
    assert_eq!(write_nar(&root, &mut again).unwrap(), size);
    assert_eq!(again, nar);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn tree_roundtrip(t in tree()) {
        roundtrip(&t);
    }
}

#[test]
fn roundtrip_fixed_tree() {
    let mut sub = BTreeMap::new();
    sub.insert(b"empty".to_vec(), Tree::Dir(BTreeMap::new()));
    sub.insert(
        b"\xff\xfe".to_vec(),
        Tree::Link(b"../dangling\xc3".to_vec()),
    );
    let mut top = BTreeMap::new();
    top.insert(b"sub".to_vec(), Tree::Dir(sub));
    let big = filler(3 * 64 * 1024 + 5, 7);
    top.insert(
        b"big".to_vec(),
        Tree::File {
            contents: big,
            mode: 0o755,
        },
    );
    let empty = Tree::File {
        contents: Vec::new(),
        mode: 0o644,
    };
    top.insert(b"Empty".to_vec(), empty);
    roundtrip(&Tree::Dir(top));
}

#[test]
fn writer_streams_into_a_hasher() {
    let dir = tempfile::tempdir().unwrap();
    materialize(
        &dir.path().join("t"),
        &Tree::File {
            contents: filler(100_000, 3),
            mode: 0o644,
        },
    );
    let mut nar = Vec::new();
    write_nar(&dir.path().join("t"), &mut nar).unwrap();
    let mut hasher = HashingCounter::new();
    let size = write_nar(&dir.path().join("t"), &mut hasher).unwrap();
    assert_eq!(hasher.finish(), (Sha256Hash::digest(&nar), size));
}
