//! Nix `.drv` files (the ATerm `Derive(...)` form), parsed strictly enough to
//! trust the output list they name.
//!
//! The parser follows the fixed shape Nix writes rather than a generic ATerm
//! grammar: every field is at a known place, so errors can say exactly what
//! was expected, and there is no recursion for hostile input to exploit —
//! `[[[[…` fails at its second byte instead of growing a stack. Nix never
//! writes whitespace, so none is accepted, nor anything after the final `)`.
//! Strings are bytes (Nix's are too); only fields with a known alphabet
//! (output names, hash fields, store paths) are turned into `String`s.

use std::collections::HashSet;
use std::fmt;

use thiserror::Error;

use crate::store_path::{MAX_NAME_LEN, StoreDir, StorePath, StorePathError};

/// Generous for real derivations (their size is mostly env strings) while
/// bounding what a hostile file can make us allocate.
pub const MAX_DRV_SIZE: usize = 64 << 20;

const PREFIX: &[u8] = b"Derive(";

/// One output as the `.drv` declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivationOutput {
    pub name: String,
    /// `None` when the path is only known after building: floating
    /// content-addressed, deferred and impure outputs.
    pub path: Option<StorePath>,
    /// `""` for input-addressed outputs, else e.g. `sha256` (flat) or
    /// `r:sha256` (recursive, i.e. NAR hash).
    pub hash_algo: String,
    /// Expected hash of a fixed-output derivation, as Nix wrote it.
    pub hash: String,
}

/// A derivation this one depends on, and which of its outputs it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputDrv {
    pub path: StorePath,
    pub outputs: Vec<String>,
}

/// A whole `.drv`, fields in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: Vec<DerivationOutput>,
    pub input_drvs: Vec<InputDrv>,
    pub input_srcs: Vec<StorePath>,
    pub platform: Vec<u8>,
    pub builder: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What the parser saw where it expected something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Byte(u8),
    End,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Found::Byte(b) if b.is_ascii_graphic() || b == b' ' => write!(f, "'{}'", b as char),
            Found::Byte(b) => write!(f, "byte 0x{b:02x}"),
            Found::End => f.write_str("end of input"),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DrvError {
    #[error(".drv is {len} bytes, over the {MAX_DRV_SIZE}-byte limit")]
    TooLarge { len: usize },
    #[error(
        "unsupported derivation format: expected it to start with `Derive(`, found {start:?} \
         (`DrvWithVersion(...)` from newer Nix is not supported)"
    )]
    Unsupported { start: String },
    #[error("expected {expected} at byte {offset}, found {found}")]
    Unexpected {
        offset: usize,
        expected: &'static str,
        found: Found,
    },
    #[error("string starting at byte {offset} is not terminated before the end of input")]
    UnterminatedString { offset: usize },
    #[error("{what} at byte {offset} is not valid UTF-8")]
    NotUtf8 { offset: usize, what: &'static str },
    #[error(
        "invalid output name {name:?} at byte {offset} \
         (expected 1-{MAX_NAME_LEN} of A-Z a-z 0-9 + - . _ ? =)"
    )]
    BadOutputName { offset: usize, name: String },
    #[error("output {name:?} at byte {offset} is declared twice")]
    DuplicateOutput { offset: usize, name: String },
    #[error("{what} at byte {offset}: {source}")]
    BadStorePath {
        offset: usize,
        what: &'static str,
        #[source]
        source: StorePathError,
    },
}

/// Parses only as much meaning as an uploader needs, but still checks the
/// whole file: a `.drv` that is malformed anywhere is not trusted anywhere.
pub fn parse_outputs(
    bytes: &[u8],
    store_dir: &StoreDir,
) -> Result<Vec<DerivationOutput>, DrvError> {
    parse_derivation(bytes, store_dir).map(|d| d.outputs)
}

/// Parses and validates a whole `.drv`; see the module docs for how strict.
pub fn parse_derivation(bytes: &[u8], store_dir: &StoreDir) -> Result<Derivation, DrvError> {
    if bytes.len() > MAX_DRV_SIZE {
        return Err(DrvError::TooLarge { len: bytes.len() });
    }
    if !bytes.starts_with(PREFIX) {
        // A truncated `Derive(` is a syntax error, not an unknown format.
        if PREFIX.starts_with(bytes) {
            return Err(DrvError::Unexpected {
                offset: bytes.len(),
                expected: "'Derive('",
                found: Found::End,
            });
        }
        let start = &bytes[..bytes.len().min(24)];
        return Err(DrvError::Unsupported {
            start: String::from_utf8_lossy(start).into_owned(),
        });
    }
    let mut p = Parser {
        b: bytes,
        pos: PREFIX.len(),
        store_dir,
    };
    let mut seen = HashSet::new();
    let outputs = p.list(|p| {
        p.expect(b'(', "'(' opening an output")?;
        let at = p.pos;
        let name = p.output_name()?;
        if !seen.insert(name.clone()) {
            return Err(DrvError::DuplicateOutput { offset: at, name });
        }
        p.expect(b',', "','")?;
        let at = p.pos;
        let path = p.string()?;
        let path = if path.is_empty() {
            None
        } else {
            Some(p.store_path(path, at, "output path")?)
        };
        p.expect(b',', "','")?;
        let hash_algo = p.utf8_string("hash algorithm")?;
        p.expect(b',', "','")?;
        let hash = p.utf8_string("output hash")?;
        p.expect(b')', "')' closing an output")?;
        Ok(DerivationOutput {
            name,
            path,
            hash_algo,
            hash,
        })
    })?;
    p.expect(b',', "','")?;
    let input_drvs = p.list(|p| {
        p.expect(b'(', "'(' opening an input derivation")?;
        let at = p.pos;
        let path = p.string()?;
        let path = p.store_path(path, at, "input derivation path")?;
        p.expect(b',', "','")?;
        // Nix writes a nested tuple here only for dynamic-derivation inputs,
        // and then only inside `DrvWithVersion`, which is rejected above.
        let outputs = p.list(Parser::output_name)?;
        p.expect(b')', "')' closing an input derivation")?;
        Ok(InputDrv { path, outputs })
    })?;
    p.expect(b',', "','")?;
    let input_srcs = p.list(|p| {
        let at = p.pos;
        let s = p.string()?;
        p.store_path(s, at, "input source path")
    })?;
    p.expect(b',', "','")?;
    let platform = p.string()?;
    p.expect(b',', "','")?;
    let builder = p.string()?;
    p.expect(b',', "','")?;
    let args = p.list(Parser::string)?;
    p.expect(b',', "','")?;
    let env = p.list(|p| {
        p.expect(b'(', "'(' opening an environment variable")?;
        let key = p.string()?;
        p.expect(b',', "','")?;
        let value = p.string()?;
        p.expect(b')', "')' closing an environment variable")?;
        Ok((key, value))
    })?;
    p.expect(b')', "')' closing Derive(")?;
    if p.pos != bytes.len() {
        return Err(p.unexpected("end of input"));
    }
    Ok(Derivation {
        outputs,
        input_drvs,
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}

impl Derivation {
    pub fn output(&self, name: &str) -> Option<&DerivationOutput> {
        self.outputs.iter().find(|o| o.name == name)
    }

    pub fn env_var(&self, key: &[u8]) -> Option<&[u8]> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Writes the derivation back the way Nix does; for a `.drv` Nix wrote,
    /// this reproduces the file byte for byte (which the tests rely on to
    /// show nothing was lost or misread).
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Vec<u8> {
        let mut s = PREFIX.to_vec();
        let path = |p: &StorePath| store_dir.display(p).into_bytes();
        write_list(&mut s, &self.outputs, |s, o| {
            let p = o.path.as_ref().map(path).unwrap_or_default();
            write_tuple(
                s,
                &[
                    o.name.as_bytes(),
                    &p,
                    o.hash_algo.as_bytes(),
                    o.hash.as_bytes(),
                ],
            );
        });
        s.push(b',');
        write_list(&mut s, &self.input_drvs, |s, i| {
            s.push(b'(');
            escape_string(&path(&i.path), s);
            s.push(b',');
            write_list(s, &i.outputs, |s, o| escape_string(o.as_bytes(), s));
            s.push(b')');
        });
        s.push(b',');
        write_list(&mut s, &self.input_srcs, |s, p| escape_string(&path(p), s));
        s.push(b',');
        escape_string(&self.platform, &mut s);
        s.push(b',');
        escape_string(&self.builder, &mut s);
        s.push(b',');
        write_list(&mut s, &self.args, |s, a| escape_string(a, s));
        s.push(b',');
        write_list(&mut s, &self.env, |s, (k, v)| write_tuple(s, &[k, v]));
        s.push(b')');
        s
    }
}

/// Appends `bytes` as a quoted ATerm string, escaping what Nix escapes.
fn escape_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn write_list<T>(s: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    s.push(b'[');
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            s.push(b',');
        }
        item(s, x);
    }
    s.push(b']');
}

fn write_tuple(s: &mut Vec<u8>, fields: &[&[u8]]) {
    s.push(b'(');
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            s.push(b',');
        }
        escape_string(f, s);
    }
    s.push(b')');
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

impl Parser<'_> {
    fn unexpected(&self, expected: &'static str) -> DrvError {
        let found = self.b.get(self.pos).map_or(Found::End, |&b| Found::Byte(b));
        DrvError::Unexpected {
            offset: self.pos,
            expected,
            found,
        }
    }

    fn expect(&mut self, c: u8, expected: &'static str) -> Result<(), DrvError> {
        if self.b.get(self.pos) != Some(&c) {
            return Err(self.unexpected(expected));
        }
        self.pos += 1;
        Ok(())
    }

    /// `[item,item,...]`, looping rather than recursing.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, DrvError>,
    ) -> Result<Vec<T>, DrvError> {
        self.expect(b'[', "'['")?;
        let mut out = Vec::new();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.b.get(self.pos) {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    /// A quoted string. As in Nix, `\n` `\r` `\t` are control characters
    /// and a backslash before anything else stands for that byte itself.
    fn string(&mut self) -> Result<Vec<u8>, DrvError> {
        let offset = self.pos;
        self.expect(b'"', "'\"' opening a string")?;
        let mut out = Vec::new();
        loop {
            match *self.b.get(self.pos..).unwrap_or_default() {
                [] | [b'\\'] => return Err(DrvError::UnterminatedString { offset }),
                [b'"', ..] => {
                    self.pos += 1;
                    return Ok(out);
                }
                [b'\\', c, ..] => {
                    out.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        c => c,
                    });
                    self.pos += 2;
                }
                [c, ..] => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn utf8_string(&mut self, what: &'static str) -> Result<String, DrvError> {
        let offset = self.pos;
        String::from_utf8(self.string()?).map_err(|_| DrvError::NotUtf8 { offset, what })
    }

    fn output_name(&mut self) -> Result<String, DrvError> {
        let offset = self.pos;
        let name = self.string()?;
        // Output names become part of store path names (`<name>-dev`), so
        // they must use the same alphabet.
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c));
        match String::from_utf8(name) {
            Ok(name) if ok => Ok(name),
            Ok(name) => Err(DrvError::BadOutputName { offset, name }),
            Err(e) => {
                let name = String::from_utf8_lossy(e.as_bytes()).into_owned();
                Err(DrvError::BadOutputName { offset, name })
            }
        }
    }

    fn store_path(
        &self,
        s: Vec<u8>,
        offset: usize,
        what: &'static str,
    ) -> Result<StorePath, DrvError> {
        let s = String::from_utf8(s).map_err(|_| DrvError::NotUtf8 { offset, what })?;
        self.store_dir
            .parse_path(&s)
            .map_err(|source| DrvError::BadStorePath {
                offset,
                what,
                source,
            })
    }
}

pub mod hash_modulo;

#[cfg(test)]
mod tests;
