//! Hand-built NARs, valid and invalid, against the parser.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use proptest::prelude::*;

use crate::nar::wire::strings;
use crate::nar::*;

const MAGIC: &[u8] = b"nix-archive-1";

/// The magic, then one NAR string per whitespace-separated word of `spec`;
/// `''` stands for the empty string. Keeps hand-built NARs readable.
fn nar(spec: &str) -> Vec<u8> {
    let words = spec
        .split_whitespace()
        .map(|w| if w == "''" { "" } else { w });
    let parts: Vec<&[u8]> = std::iter::once(MAGIC)
        .chain(words.map(str::as_bytes))
        .collect();
    strings(&parts)
}

/// NAR offset of word `i` (0-based, not counting the magic) of `spec`.
fn at(spec: &str, i: usize) -> u64 {
    let words: Vec<&str> = spec.split_whitespace().take(i).collect();
    nar(&words.join(" ")).len() as u64
}

/// Parses `nar` completely and returns the error (offset, kind).
fn reject(nar: &[u8]) -> ParseError {
    match parse_complete(nar) {
        Ok(l) => panic!("accepted invalid NAR: {l:?}"),
        Err(e) => {
            // Messages always locate the problem.
            assert!(e.to_string().starts_with("NAR byte offset "), "{e}");
            e
        }
    }
}

/// A directory NAR with one empty file entry per name, in the order given.
fn dir_nar(names: &[&[u8]]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![MAGIC, b"(", b"type", b"directory"];
    for name in names {
        parts.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
        parts.extend_from_slice(&[b"(", b"type", b"regular", b"contents", b"", b")", b")"]);
    }
    parts.push(b")");
    strings(&parts)
}

#[test]
fn accepts_canonical_forms() {
    let spec = "( type regular contents hello )";
    let l = parse_complete(&nar(spec)).unwrap();
    let want = ListingNode::Regular {
        size: 5,
        executable: false,
        nar_offset: at(spec, 4) + 8,
    };
    assert_eq!(l.root, want);
    let exe = nar("( type regular executable '' contents '' )");
    let root = parse_complete(&exe).unwrap().root;
    assert!(matches!(
        root,
        ListingNode::Regular {
            executable: true,
            size: 0,
            ..
        }
    ));
    let link = strings(&[
        MAGIC, b"(", b"type", b"symlink", b"target", b"../\xfe", b")",
    ]);
    let want = ListingNode::Symlink {
        target: b"../\xfe".to_vec(),
    };
    assert_eq!(parse_complete(&link).unwrap().root, want);
    let l = parse_complete(&dir_nar(&[b"A", b"a", b"b\xff", &[b'x'; 255]])).unwrap();
    let ListingNode::Directory { entries } = l.root else {
        panic!()
    };
    assert_eq!(entries.len(), 4);
    let empty = parse_complete(&nar("( type directory )")).unwrap().root;
    assert_eq!(
        empty,
        ListingNode::Directory {
            entries: BTreeMap::new()
        }
    );
}

#[test]
fn bad_magic() {
    let e = reject(&strings(&[b"nix-archive-2", b"(", b")"]));
    assert_eq!(e.offset, 0);
    assert!(matches!(&e.kind, ParseErrorKind::BadMagic { found } if found == "\"nix-archive-2\""));
    assert!(matches!(reject(b"").kind, ParseErrorKind::Truncated { .. }));
    let e = reject(&u64::MAX.to_le_bytes());
    assert!(matches!(e.kind, ParseErrorKind::BadMagic { .. }), "{e}");
}

#[test]
fn unknown_and_misplaced_tokens() {
    let spec = "( type fifo )";
    let e = reject(&nar(spec));
    assert_eq!(e.offset, at(spec, 2));
    let msg = e.to_string();
    assert!(
        msg.contains("expected \"regular\", \"symlink\" or \"directory\""),
        "{msg}"
    );
    assert!(msg.contains("found \"fifo\""), "{msg}");

    for (spec, bad) in [
        // Nix never writes a file without `contents`, so it is not canonical.
        ("( type regular )", 3),
        // The executable marker's value must be empty.
        ("( type regular executable 1 contents '' )", 4),
        ("( type regular contents '' executable '' )", 5),
        // Anything but `)` or `entry` inside a directory.
        ("( type directory name )", 3),
        ("( type symlink target x extra )", 5),
        (
            "( type directory entry ( name a node ( type directory ) ) ) )",
            14,
        ),
    ] {
        assert_eq!(reject(&nar(spec)).offset, at(spec, bad), "{spec}");
    }
}

#[test]
fn absurd_lengths_are_rejected_without_allocating() {
    // Token position: reported from the length alone.
    let mut v = nar("(");
    v.extend_from_slice(&u64::MAX.to_le_bytes());
    let e = reject(&v);
    assert_eq!(e.offset, 40);
    assert!(
        e.to_string().contains("18446744073709551615-byte string"),
        "{e}"
    );

    let mut v = nar("( type directory entry ( name");
    v.extend_from_slice(&u64::MAX.to_le_bytes());
    let e = reject(&v);
    assert_eq!(e.offset, v.len() as u64 - 8);
    assert!(
        matches!(e.kind, ParseErrorKind::TooLong { max: 255, .. }),
        "{e}"
    );

    let e = reject(&dir_nar(&[&[b'n'; 256]]));
    assert!(
        matches!(
            e.kind,
            ParseErrorKind::TooLong {
                len: 256,
                max: 255,
                ..
            }
        ),
        "{e}"
    );

    let link = |len| nar(&format!("( type symlink target {} )", "t".repeat(len)));
    let e = reject(&link(4096));
    assert!(
        matches!(
            e.kind,
            ParseErrorKind::TooLong {
                len: 4096,
                max: 4095,
                ..
            }
        ),
        "{e}"
    );
    parse_complete(&link(4095)).unwrap();

    // A huge file length is legal; the missing contents are a truncation.
    let mut v = nar("( type regular contents");
    v.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
    v.extend_from_slice(b"abc");
    let e = reject(&v);
    assert_eq!(e.offset, v.len() as u64);
    assert!(
        matches!(
            e.kind,
            ParseErrorKind::Truncated {
                expected: "file contents"
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_entry_names() {
    for (name, why) in [
        (&b""[..], "empty"),
        (b".", "not allowed"),
        (b"..", "not allowed"),
        (b"a/b", "`/`"),
        (b"/", "`/`"),
        (b"a\0b", "NUL"),
    ] {
        let e = reject(&dir_nar(&[b"ok", name]));
        // After the first entry, and the second's `entry ( name`.
        let first_entry_end = dir_nar(&[b"ok"]).len() as u64 - 16;
        assert_eq!(e.offset, first_entry_end + 3 * 16, "{e}");
        assert!(matches!(e.kind, ParseErrorKind::InvalidName { .. }), "{e}");
        assert!(e.to_string().contains(why), "{e}");
    }
}

#[test]
fn unsorted_and_duplicate_entries() {
    let e = reject(&dir_nar(&[b"b", b"a"]));
    let ParseErrorKind::Unsorted { name, prev } = &e.kind else {
        panic!("{e}")
    };
    assert_eq!((name.as_str(), prev.as_str()), ("a", "b"));
    // Byte order, not character order: 0xff sorts after ASCII.
    let e = reject(&dir_nar(&[b"\xff", b"z"]));
    assert!(matches!(e.kind, ParseErrorKind::Unsorted { .. }), "{e}");
    let e = reject(&dir_nar(&[b"a", b"a"]));
    assert!(
        matches!(&e.kind, ParseErrorKind::Duplicate { name } if name == "a"),
        "{e}"
    );
}

#[test]
fn bad_symlink_targets() {
    for target in [&b""[..], b"a\0"] {
        let parts: &[&[u8]] = &[MAGIC, b"(", b"type", b"symlink", b"target", target, b")"];
        let e = reject(&strings(parts));
        assert_eq!(e.offset, at("( type symlink target", 4));
        assert!(
            matches!(e.kind, ParseErrorKind::InvalidTarget { .. }),
            "{e}"
        );
    }
}

#[test]
fn nonzero_padding() {
    let spec = "( type regular contents hello )";
    let mut v = nar(spec);
    // The padding after the 5 bytes of "hello" (and its length field).
    let pad = at(spec, 4) + 8 + 5;
    v[pad as usize + 2] = 7;
    let e = reject(&v);
    assert_eq!(e.offset, pad + 2);
    assert!(
        matches!(e.kind, ParseErrorKind::NonZeroPadding { byte: 7 }),
        "{e}"
    );

    let mut v = nar(spec);
    v[8 + 13] = 1; // padding of the magic
    let e = reject(&v);
    assert_eq!(e.offset, 21);
    assert!(
        matches!(e.kind, ParseErrorKind::NonZeroPadding { byte: 1 }),
        "{e}"
    );
}

#[test]
fn every_truncation_is_reported_where_input_ends() {
    let v = nar(
        "( type directory entry ( name f node ( type regular executable '' contents 0123456789 ) ) \
         entry ( name g node ( type symlink target f ) ) )",
    );
    parse_complete(&v).unwrap();
    for len in 0..v.len() {
        let e = reject(&v[..len]);
        assert_eq!(e.offset, len as u64, "{e}");
        assert!(matches!(e.kind, ParseErrorKind::Truncated { .. }), "{e}");
    }
}

#[test]
fn trailing_data_and_exact_reads() {
    let v = dir_nar(&[b"a", b"b"]);
    let mut stream = v.clone();
    stream.extend_from_slice(b"NEXT MESSAGE");
    let e = reject(&stream);
    assert_eq!(e.offset, v.len() as u64);
    assert!(matches!(e.kind, ParseErrorKind::TrailingData));

    // A stream reader stops exactly at the end of the NAR.
    let mut rest = &stream[..];
    let mut copy = Vec::new();
    assert_eq!(copy_nar(&mut rest, &mut copy).unwrap(), v.len() as u64);
    assert_eq!(copy, v);
    assert_eq!(rest, b"NEXT MESSAGE");
    let mut rest = &stream[..];
    let (_, size) = read_listing(&mut rest).unwrap();
    assert_eq!((size, rest), (v.len() as u64, &b"NEXT MESSAGE"[..]));
}

/// A NAR of `depth` directories nested inside each other.
fn nested(depth: usize) -> Vec<u8> {
    let open = &nar("( type directory entry ( name d node")[24..];
    let close = &nar(") )")[24..];
    let mut v = nar("");
    for _ in 1..depth {
        v.extend_from_slice(open);
    }
    v.extend_from_slice(&nar("( type directory )")[24..]);
    for _ in 1..depth {
        v.extend_from_slice(close);
    }
    v
}

#[test]
fn nesting_depth_is_capped() {
    parse_complete(&nested(MAX_DEPTH)).unwrap();
    let e = reject(&nested(MAX_DEPTH + 1));
    assert!(
        matches!(e.kind, ParseErrorKind::TooDeep { max: MAX_DEPTH }),
        "{e}"
    );
    // Far deeper than any call stack could recurse: still a clean error.
    let e = reject(&nested(200_000));
    assert!(matches!(e.kind, ParseErrorKind::TooDeep { .. }), "{e}");
}

struct FailingReader;
impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::other("disk on fire"))
    }
}

struct FailingWriter;
impl Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("no space"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct RefuseSymlinks;
impl NarVisitor for RefuseSymlinks {
    fn symlink(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("symlinks not wanted"))
    }
}

#[test]
fn io_and_visitor_errors_are_distinguished() {
    let e = copy_nar(FailingReader, io::sink()).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::Read(_)), "{e}");
    let e = copy_nar(&nar("( type regular contents x )")[..], FailingWriter).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::Write(_)), "{e}");
    let link = nar("( type symlink target x )");
    let e = parse_nar(&link[..], &mut RefuseSymlinks).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::Visitor(_)), "{e}");
    assert!(e.to_string().contains("symlinks not wanted"), "{e}");
}

/// A reader handing out one byte per call, as a socket might.
struct Trickle<'a>(&'a [u8]);
impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn short_reads_are_fine() {
    let nar = dir_nar(&[b"a", b"b", b"c"]);
    let mut out = Vec::new();
    assert_eq!(copy_nar(Trickle(&nar), &mut out).unwrap(), nar.len() as u64);
    assert_eq!(out, nar);
}

proptest! {
    /// Fuzz-style: mutated NARs give Ok or Err, never a panic or hang, and
    /// whatever is accepted is copied through unchanged.
    #[test]
    fn mutated_nars_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut v = dir_nar(&[b"a", b"bb", b"c"]);
        for (i, b) in edits {
            let i = i.index(v.len());
            v[i] = b;
        }
        if do_cut {
            v.truncate(cut.index(v.len()));
        }
        if parse_complete(&v).is_ok() {
            let mut out = Vec::new();
            prop_assert_eq!(copy_nar(&v[..], &mut out).unwrap(), v.len() as u64);
            prop_assert_eq!(out, v);
        }
    }

    #[test]
    fn random_bytes_never_panic(mut tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut v = strings(&[MAGIC]);
        v.append(&mut tail);
        let _ = parse_complete(&v);
    }
}
