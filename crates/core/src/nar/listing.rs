//! The `.ls` listing of a NAR: the file tree with sizes and the offset of each
//! file's contents, so a binary cache can serve single files out of a NAR by
//! range request without unpacking it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;

use super::reader::NarVisitor;

/// A NAR's tree, as written to `<hash>.ls` (see [`Listing::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub root: ListingNode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingNode {
    Regular {
        size: u64,
        executable: bool,
        /// Byte offset in the NAR of the first byte of the contents, i.e.
        /// just after the contents' u64 length field.
        nar_offset: u64,
    },
    Symlink {
        /// Raw target bytes; need not be UTF-8 and need not resolve.
        target: Vec<u8>,
    },
    Directory {
        /// Keyed by raw name bytes; `Vec<u8>` orders like memcmp, which is
        /// the NAR's own entry order, so iteration follows the NAR.
        entries: BTreeMap<Vec<u8>, ListingNode>,
    },
}

impl Listing {
    /// Renders `{"version":1,"root":NODE}` in the shape Nix writes for
    /// `.ls` files: a regular file is `{"type":"regular","size":N,
    /// "narOffset":N}` with `"executable":true` before `narOffset` only when
    /// set, a symlink `{"type":"symlink","target":T}`, a directory
    /// `{"type":"directory","entries":{NAME:NODE,...}}`.
    ///
    /// JSON strings must be Unicode, but NAR names and symlink targets are
    /// arbitrary bytes, so names and targets that are not valid UTF-8 are
    /// rendered lossily, with U+FFFD replacing each invalid sequence. Such
    /// entries therefore cannot be looked up by their true name from the
    /// JSON, and two names differing only in invalid bytes can even render
    /// as the same key. The [`Listing`] value itself keeps the exact bytes.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"version\":1,\"root\":");
        node_json(&self.root, &mut out);
        out.push('}');
        out
    }
}

// Recursion depth equals directory depth, which the parser caps at
// `MAX_DEPTH` and the filesystem bounds for the writer.
fn node_json(node: &ListingNode, out: &mut String) {
    match node {
        ListingNode::Regular {
            size,
            executable,
            nar_offset,
        } => {
            let _ = write!(out, "{{\"type\":\"regular\",\"size\":{size}");
            if *executable {
                out.push_str(",\"executable\":true");
            }
            let _ = write!(out, ",\"narOffset\":{nar_offset}}}");
        }
        ListingNode::Symlink { target } => {
            out.push_str("{\"type\":\"symlink\",\"target\":");
            json_string(target, out);
            out.push('}');
        }
        ListingNode::Directory { entries } => {
            out.push_str("{\"type\":\"directory\",\"entries\":{");
            for (i, (name, child)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(name, out);
                out.push(':');
                node_json(child, out);
            }
            out.push_str("}}");
        }
    }
}

/// Appends `bytes` as a JSON string literal (lossy for non-UTF-8, see
/// [`Listing::to_json`]).
fn json_string(bytes: &[u8], out: &mut String) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            // The remaining control characters have no short escape; JSON
            // forbids them raw.
            c if c < '\u{20}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A [`NarVisitor`] that builds the [`Listing`] of the NAR being parsed.
#[derive(Debug, Default)]
pub struct ListingBuilder {
    /// Open directories, innermost last.
    dirs: Vec<BTreeMap<Vec<u8>, ListingNode>>,
    /// Names of the entries being parsed, one per open directory once the
    /// entry's node has started.
    names: Vec<Vec<u8>>,
    root: Option<ListingNode>,
}

impl ListingBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The listing, or `None` if the parse did not complete a root node.
    pub fn finish(self) -> Option<Listing> {
        self.root.map(|root| Listing { root })
    }

    fn place(&mut self, node: ListingNode) {
        match self.dirs.last_mut() {
            // The parser announces every entry's name before its node, so a
            // name is always pending here; if a caller drives the builder out
            // of order the node is dropped rather than panicking.
            Some(entries) => {
                if let Some(name) = self.names.pop() {
                    entries.insert(name, node);
                }
            }
            None => self.root = Some(node),
        }
    }
}

impl NarVisitor for ListingBuilder {
    fn regular(&mut self, executable: bool, size: u64, nar_offset: u64) -> io::Result<()> {
        self.place(ListingNode::Regular {
            size,
            executable,
            nar_offset,
        });
        Ok(())
    }

    fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.place(ListingNode::Symlink {
            target: target.to_vec(),
        });
        Ok(())
    }

    fn directory_start(&mut self) -> io::Result<()> {
        self.dirs.push(BTreeMap::new());
        Ok(())
    }

    fn entry(&mut self, name: &[u8]) -> io::Result<()> {
        self.names.push(name.to_vec());
        Ok(())
    }

    fn directory_end(&mut self) -> io::Result<()> {
        if let Some(entries) = self.dirs.pop() {
            self.place(ListingNode::Directory { entries });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(size: u64, executable: bool, nar_offset: u64) -> ListingNode {
        ListingNode::Regular {
            size,
            executable,
            nar_offset,
        }
    }

    #[test]
    fn json_shape() {
        let mut entries = BTreeMap::new();
        entries.insert(b"bin".to_vec(), reg(5, true, 400));
        entries.insert(
            b"link".to_vec(),
            ListingNode::Symlink {
                target: b"../x".to_vec(),
            },
        );
        entries.insert(
            b"sub".to_vec(),
            ListingNode::Directory {
                entries: BTreeMap::new(),
            },
        );
        entries.insert(b"a".to_vec(), reg(0, false, 96));
        let l = Listing {
            root: ListingNode::Directory { entries },
        };
        assert_eq!(
            l.to_json(),
            concat!(
                r#"{"version":1,"root":{"type":"directory","entries":{"#,
                r#""a":{"type":"regular","size":0,"narOffset":96},"#,
                r#""bin":{"type":"regular","size":5,"executable":true,"narOffset":400},"#,
                r#""link":{"type":"symlink","target":"../x"},"#,
                r#""sub":{"type":"directory","entries":{}}}}}"#
            )
        );
    }

    #[test]
    fn json_escapes_and_lossy_names() {
        let mut entries = BTreeMap::new();
        entries.insert(b"q\"b\\n\nc\x01\x7f".to_vec(), reg(1, false, 8));
        entries.insert(b"bad\xff".to_vec(), reg(2, false, 16));
        entries.insert("é".as_bytes().to_vec(), reg(3, false, 24));
        let l = Listing {
            root: ListingNode::Directory { entries },
        };
        let j = l.to_json();
        assert!(j.contains(r#""bad�":{"#), "{j}");
        assert!(j.contains(r#""q\"b\\n\nc\u0001"#), "{j}");
        assert!(j.contains("\"é\":{"), "{j}");
        assert!(!j.chars().any(|c| c < ' '), "raw control char in {j:?}");
    }

    #[test]
    fn builder_out_of_order_does_not_panic() {
        let mut b = ListingBuilder::new();
        b.directory_start().unwrap();
        b.regular(false, 1, 2).unwrap(); // no entry name announced
        b.directory_end().unwrap();
        b.directory_end().unwrap();
        assert_eq!(
            b.finish().unwrap().root,
            ListingNode::Directory {
                entries: BTreeMap::new()
            }
        );
    }
}
