//! A strict, streaming NAR parser.
//!
//! It accepts only the canonical form Nix writes (the form whose hash is the
//! NAR hash), reads exactly the bytes of one NAR from any [`Read`] — no
//! read-ahead, so it can find the end of an unframed NAR inside a daemon
//! protocol stream — and streams file contents in fixed-size chunks. It never
//! allocates from an unchecked length, keeps its directory stack on the heap
//! with a depth cap, and returns an error rather than panicking on any input,
//! so it is safe to point a fuzzer at [`parse_complete`] or [`copy_nar`].

use std::io::{self, Read, Write};

use thiserror::Error;

use super::listing::{Listing, ListingBuilder};
use super::wire::{Input, InputError, MAGIC, padding_len};
use super::{MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};

/// Longer than any token ("nix-archive-1" is the longest), so a garbage
/// length in token position is reported without reading or allocating it.
const MAX_TOKEN_LEN: u64 = 16;

/// Chunk size for streaming file contents to the visitor.
const CHUNK: usize = 64 * 1024;

/// Receives the structure of a NAR as it is parsed. Every method defaults to
/// doing nothing. Events arrive as soon as their bytes are validated, before
/// the rest of the NAR is, so a visitor with side effects must discard its
/// work if the parse ultimately returns an error. An error returned from a
/// method aborts the parse as [`ParseErrorKind::Visitor`].
pub trait NarVisitor {
    /// A regular file starts; `size` bytes of contents follow via
    /// [`Self::data`], beginning at byte `nar_offset` of the NAR.
    fn regular(&mut self, _executable: bool, _size: u64, _nar_offset: u64) -> io::Result<()> {
        Ok(())
    }
    /// The next chunk of the current file's contents (never empty).
    fn data(&mut self, _chunk: &[u8]) -> io::Result<()> {
        Ok(())
    }
    /// All of the current file's contents have been delivered.
    fn regular_end(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _target: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn directory_start(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The next node is the directory entry called `name`. Names arrive in
    /// strictly increasing byte order and are valid file names.
    fn entry(&mut self, _name: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn directory_end(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Validation only.
struct NoopVisitor;
impl NarVisitor for NoopVisitor {}

/// A NAR parse failure and the NAR byte offset it was detected at: the
/// start of the offending string's length field, the offending byte, or
/// where the input ended.
#[derive(Debug, Error)]
#[error("NAR byte offset {offset}: {kind}")]
pub struct ParseError {
    pub offset: u64,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Error)]
pub enum ParseErrorKind {
    #[error("bad magic: expected \"nix-archive-1\", found {found}")]
    BadMagic { found: String },
    #[error("expected {}, found {found}", one_of(.expected))]
    UnexpectedToken {
        expected: &'static [&'static str],
        found: String,
    },
    #[error("{what} is {len} bytes long, over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("padding byte is {byte:#04x}, expected zero")]
    NonZeroPadding { byte: u8 },
    #[error("invalid directory entry name \"{name}\": {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("directory entry \"{name}\" follows \"{prev}\"; entries must be sorted by bytes")]
    Unsorted { name: String, prev: String },
    #[error("duplicate directory entry \"{name}\"")]
    Duplicate { name: String },
    #[error("invalid symlink target \"{target}\": {reason}")]
    InvalidTarget {
        target: String,
        reason: &'static str,
    },
    #[error("directories nested more than {max} deep")]
    TooDeep { max: usize },
    #[error("input ends in the middle of {expected}")]
    Truncated { expected: &'static str },
    #[error("reading input: {0}")]
    Read(#[source] io::Error),
    #[error("writing the copy of the NAR: {0}")]
    Write(#[source] io::Error),
    #[error("NAR visitor failed: {0}")]
    Visitor(#[source] io::Error),
    #[error("trailing data after the end of the NAR")]
    TrailingData,
}

fn one_of(tokens: &[&str]) -> String {
    let quoted: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Renders NAR bytes for an error message without assuming UTF-8.
fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Parses exactly one NAR from `reader`, reporting its structure to
/// `visitor`, and returns the NAR's size in bytes. Bytes after the NAR are
/// left unread in `reader`; pass `&mut reader` to keep using it.
pub fn parse_nar<R: Read, V: NarVisitor + ?Sized>(
    reader: R,
    visitor: &mut V,
) -> Result<u64, ParseError> {
    parse_nar_tee(reader, io::sink(), visitor)
}

/// Like [`parse_nar`], but also writes every byte read to `tee` (then flushes
/// it), so a NAR can be validated while it is copied, hashed or compressed.
pub fn parse_nar_tee<R: Read, W: Write, V: NarVisitor + ?Sized>(
    reader: R,
    tee: W,
    visitor: &mut V,
) -> Result<u64, ParseError> {
    let mut p = Parser {
        input: Input::new(reader, tee),
        visitor,
        buf: Vec::new(),
    };
    p.nar()?;
    let offset = p.input.offset();
    p.input.flush_tee().map_err(|e| ParseError {
        offset,
        kind: ParseErrorKind::Write(e),
    })?;
    Ok(offset)
}

/// Copies exactly one NAR from `reader` to `writer`, validating it on the
/// way, and returns its size. On error, the bytes read so far (including
/// some of an invalid NAR) have already been written.
pub fn copy_nar<R: Read, W: Write>(reader: R, writer: W) -> Result<u64, ParseError> {
    parse_nar_tee(reader, writer, &mut NoopVisitor)
}

/// Parses exactly one NAR from `reader` into its [`Listing`], returning the
/// listing and the NAR's size.
pub fn read_listing<R: Read>(reader: R) -> Result<(Listing, u64), ParseError> {
    let mut builder = ListingBuilder::new();
    let size = parse_nar(reader, &mut builder)?;
    // A successful parse has always completed the root node.
    let truncated = ParseErrorKind::Truncated {
        expected: "the root node",
    };
    let listing = builder.finish().ok_or(ParseError {
        offset: size,
        kind: truncated,
    })?;
    Ok((listing, size))
}

/// Validates that `bytes` is exactly one NAR, with nothing after it, and
/// returns its listing. Meant for whole buffers, and as a fuzz entry point.
pub fn parse_complete(bytes: &[u8]) -> Result<Listing, ParseError> {
    let mut rest = bytes;
    let (listing, size) = read_listing(&mut rest)?;
    if !rest.is_empty() {
        return Err(ParseError {
            offset: size,
            kind: ParseErrorKind::TrailingData,
        });
    }
    Ok(listing)
}

struct Parser<'v, R, W, V: ?Sized> {
    input: Input<R, W>,
    visitor: &'v mut V,
    /// Reused for file contents.
    buf: Vec<u8>,
}

impl<R: Read, W: Write, V: NarVisitor + ?Sized> Parser<'_, R, W, V> {
    fn err(&self, offset: u64, kind: ParseErrorKind) -> ParseError {
        ParseError { offset, kind }
    }

    fn input_err(&self, e: InputError, expected: &'static str) -> ParseError {
        let kind = match e {
            InputError::Eof => ParseErrorKind::Truncated { expected },
            InputError::Read(e) => ParseErrorKind::Read(e),
            InputError::Write(e) => ParseErrorKind::Write(e),
        };
        self.err(self.input.offset(), kind)
    }

    fn visit(&mut self, r: io::Result<()>) -> Result<(), ParseError> {
        r.map_err(|e| self.err(self.input.offset(), ParseErrorKind::Visitor(e)))
    }

    fn fill(&mut self, buf: &mut [u8], expected: &'static str) -> Result<(), ParseError> {
        self.input
            .fill(buf)
            .map_err(|e| self.input_err(e, expected))
    }

    fn u64(&mut self, expected: &'static str) -> Result<u64, ParseError> {
        self.input.u64().map_err(|e| self.input_err(e, expected))
    }

    fn padding(&mut self, len: u64) -> Result<(), ParseError> {
        let mut pad = [0u8; 8];
        let pad = &mut pad[..padding_len(len)];
        let start = self.input.offset();
        self.fill(pad, "padding")?;
        match pad.iter().position(|&b| b != 0) {
            Some(i) => Err(self.err(
                start + i as u64,
                ParseErrorKind::NonZeroPadding { byte: pad[i] },
            )),
            None => Ok(()),
        }
    }

    /// Reads a string of at most `max` bytes. Returns its start offset, for
    /// errors about its value.
    fn string(&mut self, what: &'static str, max: u64) -> Result<(u64, Vec<u8>), ParseError> {
        let start = self.input.offset();
        let len = self.u64(what)?;
        if len > max {
            return Err(self.err(start, ParseErrorKind::TooLong { what, len, max }));
        }
        // `len <= max`, a small constant, so this allocation is bounded.
        let mut s = vec![0u8; len as usize];
        self.fill(&mut s, what)?;
        self.padding(len)?;
        Ok((start, s))
    }

    /// Reads a token that must be one of `expected`; returns its index.
    fn token(&mut self, expected: &'static [&'static str]) -> Result<usize, ParseError> {
        let start = self.input.offset();
        let len = self.u64("a token")?;
        if len > MAX_TOKEN_LEN {
            let found = format!("a {len}-byte string");
            return Err(self.err(start, ParseErrorKind::UnexpectedToken { expected, found }));
        }
        let mut s = [0u8; MAX_TOKEN_LEN as usize];
        let s = &mut s[..len as usize];
        self.fill(s, "a token")?;
        self.padding(len)?;
        match expected.iter().position(|t| t.as_bytes() == s) {
            Some(i) => Ok(i),
            None => {
                let found = format!("\"{}\"", show(s));
                Err(self.err(start, ParseErrorKind::UnexpectedToken { expected, found }))
            }
        }
    }

    fn expect(&mut self, token: &'static [&'static str]) -> Result<(), ParseError> {
        self.token(token).map(|_| ())
    }

    fn nar(&mut self) -> Result<(), ParseError> {
        let start = self.input.offset();
        if let Err(e) = self.expect(&[MAGIC]) {
            return Err(match e.kind {
                ParseErrorKind::UnexpectedToken { found, .. } => {
                    self.err(start, ParseErrorKind::BadMagic { found })
                }
                _ => e,
            });
        }

        // Iterative rather than recursive, so nesting depth costs heap, not
        // stack, and is bounded by MAX_DEPTH. One element per open directory:
        // its previous entry's name, to enforce strict byte order.
        let mut stack: Vec<Option<Vec<u8>>> = Vec::new();
        loop {
            // At the start of a node.
            self.expect(&["("])?;
            self.expect(&["type"])?;
            let node_done = match self.token(&["regular", "symlink", "directory"])? {
                0 => {
                    self.regular()?;
                    true
                }
                1 => {
                    self.symlink()?;
                    true
                }
                _ => {
                    if stack.len() >= MAX_DEPTH {
                        let offset = self.input.offset();
                        return Err(self.err(offset, ParseErrorKind::TooDeep { max: MAX_DEPTH }));
                    }
                    let r = self.visitor.directory_start();
                    self.visit(r)?;
                    stack.push(None);
                    false
                }
            };
            if !self.after_node(&mut stack, node_done)? {
                return Ok(());
            }
        }
    }

    /// Consumes directory closings and entry headers until the next node
    /// starts (returns true) or the root node is complete (returns false).
    /// `node_done` says a node has just ended, so the `)` closing its entry
    /// comes first.
    fn after_node(
        &mut self,
        stack: &mut Vec<Option<Vec<u8>>>,
        mut node_done: bool,
    ) -> Result<bool, ParseError> {
        loop {
            let Some(prev) = stack.last_mut() else {
                return Ok(false);
            };
            if node_done {
                self.expect(&[")"])?;
            }
            if self.token(&[")", "entry"])? == 0 {
                stack.pop();
                let r = self.visitor.directory_end();
                self.visit(r)?;
                node_done = true;
                continue;
            }
            self.expect(&["("])?;
            self.expect(&["name"])?;
            let (start, name) = self.string("an entry name", MAX_NAME_LEN)?;
            check_name(&name).map_err(|kind| self.err(start, kind))?;
            if let Some(prev) = prev.as_deref().filter(|p| name.as_slice() <= *p) {
                let kind = if name == prev {
                    ParseErrorKind::Duplicate { name: show(&name) }
                } else {
                    let (name, prev) = (show(&name), show(prev));
                    ParseErrorKind::Unsorted { name, prev }
                };
                return Err(self.err(start, kind));
            }
            self.expect(&["node"])?;
            let r = self.visitor.entry(&name);
            self.visit(r)?;
            *prev = Some(name);
            return Ok(true);
        }
    }

    /// After `type regular`: `[executable ""] contents <data> )`.
    fn regular(&mut self) -> Result<(), ParseError> {
        let executable = self.token(&["executable", "contents"])? == 0;
        if executable {
            // Nix writes the flag as a name/value pair with an empty value.
            self.expect(&[""])?;
            self.expect(&["contents"])?;
        }
        let size = self.u64("the contents length")?;
        let nar_offset = self.input.offset();
        let r = self.visitor.regular(executable, size, nar_offset);
        self.visit(r)?;

        // Grown on demand up to CHUNK and reused, so small files cost no
        // allocation and a lying length field cannot make us allocate much.
        let want = CHUNK.min(usize::try_from(size).unwrap_or(CHUNK));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let mut left = size;
        while left > 0 {
            // Bounded by CHUNK, so the cast cannot truncate.
            let n = left.min(CHUNK as u64) as usize;
            let r = self.input.fill(&mut self.buf[..n]);
            r.map_err(|e| self.input_err(e, "file contents"))?;
            let r = self.visitor.data(&self.buf[..n]);
            self.visit(r)?;
            left -= n as u64;
        }
        self.padding(size)?;
        let r = self.visitor.regular_end();
        self.visit(r)?;
        self.expect(&[")"])
    }

    /// After `type symlink`: `target <t> )`.
    fn symlink(&mut self) -> Result<(), ParseError> {
        self.expect(&["target"])?;
        let (start, target) = self.string("a symlink target", MAX_TARGET_LEN)?;
        let reason = if target.is_empty() {
            Some("empty")
        } else if target.contains(&0) {
            Some("contains a NUL byte")
        } else {
            None
        };
        if let Some(reason) = reason {
            let kind = ParseErrorKind::InvalidTarget {
                target: show(&target),
                reason,
            };
            return Err(self.err(start, kind));
        }
        let r = self.visitor.symlink(&target);
        self.visit(r)?;
        self.expect(&[")"])
    }
}

/// Rejects names that could not be a single path component on unpacking.
fn check_name(name: &[u8]) -> Result<(), ParseErrorKind> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == b"." || name == b".." {
        "`.` and `..` are not allowed"
    } else if name.contains(&b'/') {
        "contains `/`"
    } else if name.contains(&0) {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(ParseErrorKind::InvalidName {
        name: show(name),
        reason,
    })
}

#[cfg(test)]
mod tests;
