//! `.narinfo` files: rendering byte-exact with Nix, lenient parsing like
//! Nix's own parser, the signed fingerprint, signing and verification.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use thiserror::Error;

use crate::hash::{HashError, Sha256Hash};
use crate::keys::{PublicKey, SecretKey, Signature};
use crate::store_path::{StoreDir, StorePath, StorePathError};

#[derive(Debug, Error)]
pub enum NarInfoError {
    // Quoted values are clipped (see `clip`): the text may not be a
    // narinfo at all, and must not be copied whole into messages.
    #[error("narinfo line {line}: {}", clip(&source.to_string()))]
    Path { line: usize, source: StorePathError },
    #[error("narinfo line {line}: {field}: {}", clip(&source.to_string()))]
    Hash {
        line: usize,
        field: &'static str,
        source: HashError,
    },
    #[error("narinfo line {line}: {field} {value:?} is not a non-negative integer")]
    Number {
        line: usize,
        field: &'static str,
        value: String,
    },
    #[error("narinfo line {line}: expected `Key: value`, found {text:?}")]
    Syntax { line: usize, text: String },
    #[error("narinfo line {line}: {field} appears twice")]
    Duplicate { line: usize, field: &'static str },
    #[error(
        "narinfo is missing required field {0} (a narinfo needs StorePath, URL, NarHash and a non-zero NarSize)"
    )]
    Missing(&'static str),
    #[error("narinfo NarSize is 0; Nix treats such a narinfo as corrupt")]
    ZeroNarSize,
    #[error("narinfo is not valid UTF-8 (at byte {0})")]
    Utf8(usize),
}

/// Shortens every `"quoted"` value (as `{:?}` writes it) in an error
/// message to 80 characters. Lines of a narinfo read from an untrusted
/// cache may be anything (a linked secret file, say), and are not copied
/// whole into messages.
fn clip(message: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::with_capacity(message.len().min(512));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let (mut kept, mut escaped) = (0, false);
        for c in chars.by_ref() {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            if end {
                if kept > MAX {
                    out.push('…');
                }
                out.push('"');
                break;
            }
            if kept < MAX {
                out.push(c);
            }
            kept += 1;
        }
    }
    out
}

/// One `.narinfo`. `references` and `sigs` are sets because Nix keeps them
/// as `std::set`s and renders them in sorted order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    pub url: String,
    /// Nix's compression name: `none`, `xz`, `zstd`, `bzip2`, `br`, ...
    pub compression: String,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: BTreeSet<String>,
    /// Content address, e.g. `fixed:r:sha256:<nix32>` or `text:sha256:<nix32>`.
    pub ca: Option<String>,
}

/// `1;<path>;sha256:<nix32>;<size>;<ref>,<ref>` — what a `Sig:` signs.
/// Full paths, sorted; with no references it ends in `;`.
pub fn fingerprint(
    store_dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &BTreeSet<StorePath>,
) -> String {
    let refs: Vec<String> = references.iter().map(|r| store_dir.display(r)).collect();
    format!(
        "1;{};{};{};{}",
        store_dir.display(path),
        nar_hash.to_nix32_string(),
        nar_size,
        refs.join(",")
    )
}

impl NarInfo {
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds this key's signature (replacing an older one by the same key name,
    /// so re-signing does not pile up stale `Sig:` lines).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) {
        let sig = key.sign(self.fingerprint(store_dir).as_bytes());
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.insert(sig.to_string());
    }

    /// The names of the keys among `trusted` with a valid signature here.
    /// Malformed `Sig:` lines are ignored, as Nix ignores them.
    pub fn valid_signers<'a>(
        &self,
        store_dir: &StoreDir,
        trusted: &'a [PublicKey],
    ) -> Vec<&'a str> {
        let fp = self.fingerprint(store_dir);
        let sigs: Vec<Signature> = self
            .sigs
            .iter()
            .filter_map(|s| Signature::parse(s).ok())
            .collect();
        trusted
            .iter()
            .filter(|k| sigs.iter().any(|s| k.verify(fp.as_bytes(), s)))
            .map(|k| k.name())
            .collect()
    }

    /// Renders the file as Nix writes it: fixed field order, `References: `
    /// keeps its trailing space when empty (Nix 2.8's parser relies on it),
    /// one `Sig:` per signature, final newline.
    pub fn render(&self, store_dir: &StoreDir) -> String {
        let mut s = String::with_capacity(512);
        // `write!` into a String cannot fail.
        let _ = writeln!(s, "StorePath: {}", store_dir.display(&self.store_path));
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", h.to_nix32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash.to_nix32_string());
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<&str> = self.references.iter().map(|r| r.as_str()).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// Parses a narinfo the way Nix does: unknown keys are ignored (newer
    /// caches add fields), a missing `Compression` means `bzip2`, an
    /// `unknown-deriver` Deriver means none.
    pub fn parse(store_dir: &StoreDir, text: &[u8]) -> Result<Self, NarInfoError> {
        let text = std::str::from_utf8(text).map_err(|e| NarInfoError::Utf8(e.valid_up_to()))?;
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut system = None;
        let mut sigs = BTreeSet::new();
        let mut ca = None;

        for (i, raw) in text.split_terminator('\n').enumerate() {
            let line = i + 1;
            if raw.is_empty() {
                continue;
            }
            let (key, value) = raw
                .split_once(": ")
                .or_else(|| raw.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| NarInfoError::Syntax {
                    line,
                    text: raw.chars().take(80).collect(),
                })?;
            let path = |v: &str| {
                store_dir
                    .parse_path(v)
                    .map_err(|source| NarInfoError::Path { line, source })
            };
            let base = |v: &str| {
                StorePath::from_base_name(v).map_err(|source| NarInfoError::Path { line, source })
            };
            let hash = |field, v: &str| {
                Sha256Hash::parse(v).map_err(|source| NarInfoError::Hash {
                    line,
                    field,
                    source,
                })
            };
            let num = |field, v: &str| {
                v.parse::<u64>().map_err(|_| NarInfoError::Number {
                    line,
                    field,
                    value: v.chars().take(40).collect(),
                })
            };
            fn set<T>(
                slot: &mut Option<T>,
                v: T,
                line: usize,
                field: &'static str,
            ) -> Result<(), NarInfoError> {
                if slot.replace(v).is_some() {
                    return Err(NarInfoError::Duplicate { line, field });
                }
                Ok(())
            }
            match key {
                "StorePath" => set(&mut store_path, path(value)?, line, "StorePath")?,
                "URL" => set(&mut url, value.to_owned(), line, "URL")?,
                "Compression" => set(&mut compression, value.to_owned(), line, "Compression")?,
                "FileHash" => set(&mut file_hash, hash("FileHash", value)?, line, "FileHash")?,
                "FileSize" => set(&mut file_size, num("FileSize", value)?, line, "FileSize")?,
                "NarHash" => set(&mut nar_hash, hash("NarHash", value)?, line, "NarHash")?,
                "NarSize" => set(&mut nar_size, num("NarSize", value)?, line, "NarSize")?,
                "References" => {
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(base)
                        .collect::<Result<_, _>>()?;
                    set(&mut references, refs, line, "References")?
                }
                "Deriver" if value != "unknown-deriver" => {
                    set(&mut deriver, base(value)?, line, "Deriver")?
                }
                "System" => set(&mut system, value.to_owned(), line, "System")?,
                "Sig" => {
                    sigs.insert(value.to_owned());
                }
                "CA" if !value.is_empty() => set(&mut ca, value.to_owned(), line, "CA")?,
                _ => {}
            }
        }
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url
                .filter(|u| !u.is_empty())
                .ok_or(NarInfoError::Missing("URL"))?,
            compression: compression
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            system,
            sigs,
            ca,
        })
    }
}

#[cfg(test)]
mod tests;
