//! The checks `nix-outbox verify` makes on one path, without any I/O of
//! their own: a narinfo's text, a NAR byte stream and a `.ls` listing go
//! in, problems come out, each saying what is wrong, what it means for a
//! client and what to do.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::{READABLE_COMPRESSIONS, decompressor, is_cache_key};
use nix_outbox_core::hash::HashingCounter;
use nix_outbox_core::keys::{PublicKey, Signature};
use nix_outbox_core::nar::{Listing, ListingBuilder, NarVisitor, ParseErrorKind, parse_nar_tee};
use nix_outbox_core::narinfo::NarInfo;
use nix_outbox_core::store_path::HASH_PART_LEN;
use nix_outbox_core::{StoreDir, StorePath};

/// One thing wrong with one path in the cache.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The full store path when known, else the narinfo's hash part.
    pub path: String,
    /// A stable name for machines (`--json`).
    pub kind: &'static str,
    pub message: String,
}

/// What a path's check learned about it, for the reference checks that
/// need every path's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No `<hash>.narinfo` in the cache.
    Missing,
    /// A narinfo that does not parse (already reported).
    Unusable,
    Present {
        store_path: StorePath,
        references: BTreeSet<StorePath>,
    },
}

/// How to re-upload a path whose files in the cache are bad: `copy` skips
/// paths whose narinfo exists, so that goes first.
pub fn reupload_advice(cache: &str, hash: &str, path: &str) -> String {
    format!(
        "delete {hash}.narinfo from the cache, then re-upload with `nix-outbox copy --to {cache} {path}`"
    )
}

/// A command-line PATH: a full store path, a basename (`<hash>-<name>`)
/// or a bare hash part; returns the hash part.
pub fn hash_of_arg(store_dir: &StoreDir, arg: &str) -> Result<String, String> {
    if arg.starts_with('/') {
        return store_dir
            .parse_path(arg)
            .map(|p| p.hash_part().to_owned())
            .map_err(|e| format!("{arg}: {e} (the cache's store directory is {store_dir})"));
    }
    if arg.len() == HASH_PART_LEN && nix_outbox_core::nixbase32::is_valid_str(arg) {
        return Ok(arg.to_owned());
    }
    StorePath::from_base_name(arg)
        .map(|p| p.hash_part().to_owned())
        .map_err(|e| format!("{arg}: not a store path, store path basename or hash part ({e})"))
}

/// Parses a narinfo fetched as `<hash>.narinfo` and checks what can be
/// checked without its NAR: the StorePath matches the file name, a
/// trusted key signed it, its URL stays inside the cache. `Err` when it
/// does not parse at all.
pub fn check_narinfo(
    store_dir: &StoreDir,
    keys: &[PublicKey],
    cache: &str,
    hash: &str,
    text: &[u8],
) -> Result<(NarInfo, Vec<Problem>), Problem> {
    let info = NarInfo::parse(store_dir, text).map_err(|e| Problem {
        path: hash.to_owned(),
        kind: "narinfo-invalid",
        message: format!(
            "{hash}.narinfo does not parse: {e}. Nix cannot use it; delete it and re-upload the path"
        ),
    })?;
    let path = store_dir.display(&info.store_path);
    let mut problems = Vec::new();
    let mut problem = |kind, message| {
        problems.push(Problem {
            path: path.clone(),
            kind,
            message,
        })
    };
    if info.store_path.hash_part() != hash {
        problem(
            "store-path-mismatch",
            format!(
                "found in {hash}.narinfo, but that file name belongs to another path: \
                 clients asking for this path never find it, and clients asking for {hash} get \
                 the wrong path. Delete {hash}.narinfo and re-upload both paths"
            ),
        );
    }
    let advice = reupload_advice(cache, hash, &path);
    if let Some(m) = signature_problem(store_dir, keys, &info, &advice) {
        problem("signature", m);
    }
    if !is_cache_key(&info.url) {
        problem(
            "url",
            format!(
                "URL {:?} does not name a file inside the cache (absolute, `..` or a full URL); \
                 its NAR was not checked. {advice}",
                info.url,
            ),
        );
    }
    Ok((info, problems))
}

/// Why no trusted key's signature is valid, or `None` if one is.
pub fn signature_problem(
    store_dir: &StoreDir,
    keys: &[PublicKey],
    info: &NarInfo,
    advice: &str,
) -> Option<String> {
    if !info.valid_signers(store_dir, keys).is_empty() {
        return None;
    }
    let names: BTreeSet<String> = info
        .sigs
        .iter()
        .filter_map(|s| Signature::parse(s).ok())
        .map(|s| s.name().to_owned())
        .collect();
    let trusted: BTreeSet<&str> = keys.iter().map(|k| k.name()).collect();
    let by_trusted: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| trusted.contains(n))
        .collect();
    Some(if info.sigs.is_empty() {
        format!(
            "not signed (no Sig: line): clients that require signatures (the default) refuse it; \
             {advice} (it signs)"
        )
    } else if !by_trusted.is_empty() {
        format!(
            "the signature by {} does not verify: the narinfo was changed after it was signed \
             (StorePath, NarHash, NarSize or References differ from what was signed), or a \
             different key of the same name signed it. Clients refuse it; {advice}",
            by_trusted.join(", ")
        )
    } else if names.is_empty() {
        format!(
            "its Sig: lines are malformed (not `name:base64` of 64 bytes); clients refuse it; \
             {advice}"
        )
    } else {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        format!(
            "signed only by {}, none of the --trusted-public-keys ({}): clients trusting only \
             those keys refuse it. Pass the public key it was signed with, or re-sign the cache's \
             paths with a trusted key",
            names.join(", "),
            trusted.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// What reading a NAR file found.
#[derive(Debug, Default)]
pub struct NarCheck {
    /// `(kind, message without advice)`.
    pub problems: Vec<(&'static str, String)>,
    /// Reading the file itself failed (connection, disk): nothing could be
    /// concluded about its contents.
    pub read_error: Option<String>,
    /// The NAR's listing, when asked for and the NAR is good.
    pub listing: Option<Listing>,
}

/// Most NAR file bytes read when the narinfo gives no FileSize: no
/// compression makes a file this much bigger than its contents.
fn file_limit(info: &NarInfo) -> u64 {
    match info.file_size {
        // One byte more tells a longer file from a right one.
        Some(size) => size.saturating_add(1),
        None => info.nar_size.saturating_mul(2).saturating_add(64 << 20),
    }
}

/// The longest any one NAR check may take, whatever the narinfo claims.
pub const MAX_NAR_CHECK: Duration = Duration::from_secs(3 * 3600);
/// The same for a narinfo no trusted key signed: its sizes may be a lie.
pub const MAX_UNTRUSTED_NAR_CHECK: Duration = Duration::from_secs(600);

/// How long reading one NAR file may take in all: a server sending a byte
/// just before each stall timeout must not hold the check forever. Ten
/// minutes plus one second per 100 KiB (a slow link) of the file, and never
/// more than [`MAX_NAR_CHECK`] ([`MAX_UNTRUSTED_NAR_CHECK`] unless
/// `trusted`, i.e. a trusted key signed the narinfo): the size comes from
/// the cache itself, which may be hostile.
pub fn nar_deadline(info: &NarInfo, trusted: bool, now: Instant) -> Instant {
    let size = info.file_size.unwrap_or(info.nar_size);
    let secs = 600u64.saturating_add(size / (100 * 1024));
    let cap = if trusted {
        MAX_NAR_CHECK
    } else {
        MAX_UNTRUSTED_NAR_CHECK
    };
    now + Duration::from_secs(secs).min(cap)
}

/// Counts and hashes the compressed bytes, and remembers a failure of the
/// underlying reader (as opposed to a decompression failure).
struct Source<R> {
    inner: io::Take<R>,
    file: HashingCounter,
    error: Option<String>,
    deadline: Instant,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.error.is_none() && Instant::now() > self.deadline {
            self.error = Some(
                "reading the NAR file took too long (the server is too slow or sends data \
                 slowly on purpose); gave up on it"
                    .to_owned(),
            );
        }
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.clone()));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.file.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.error.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }
}

/// Passes at most `left` bytes of decompressed data and notes whether
/// there was more: a decompression bomb stops at NarSize + 1 bytes.
struct Capped<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte beyond the cap tells "exactly" from "more".
            let n = self.inner.read(&mut [0u8; 1])?;
            if n > 0 {
                self.over = true;
                return Err(io::Error::other("decompressed data goes beyond NarSize"));
            }
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Streams a NAR file once, in fixed memory: FileSize/FileHash over the
/// compressed bytes, then decompression, NarSize/NarHash and a strict NAR
/// parse over the result. When the file itself is not what the narinfo
/// says (truncated, replaced), what decompressing it gives is only a
/// consequence and is not reported separately. Reads at most FileSize + 1
/// bytes of the file, NarSize + 1 bytes of decompressed data, and gives up
/// (a read error) after `deadline`.
pub fn check_nar(
    input: impl Read,
    info: &NarInfo,
    want_listing: bool,
    deadline: Instant,
) -> NarCheck {
    let mut src = Source {
        inner: input.take(file_limit(info)),
        file: HashingCounter::new(),
        error: None,
        deadline,
    };
    let mut out = NarCheck::default();
    let mut nar = HashingCounter::new();
    let mut content: Option<(&'static str, String)> = None;
    let mut parsed = false;
    match decompressor(&info.compression, Box::new(&mut src)) {
        None => {
            content = Some((
                "compression-unsupported",
                format!(
                    "Compression: {} cannot be read by nix-outbox verify (it reads {}), so the NAR's \
                     contents were not checked; check them with `nix store verify`",
                    info.compression,
                    READABLE_COMPRESSIONS.join(", ")
                ),
            ))
        }
        Some(Err(e)) => content = Some(("decompress", format!("cannot start decompressing: {e}"))),
        Some(Ok(dec)) => {
            let mut dec = Capped {
                inner: dec,
                left: info.nar_size.saturating_add(1),
                over: false,
            };
            let mut builder = ListingBuilder::new();
            let mut noop = Noop;
            let visitor: &mut dyn NarVisitor = if want_listing {
                &mut builder
            } else {
                &mut noop
            };
            let bomb = || {
                (
                    "nar-size",
                    format!(
                        "the NAR is more than its NarSize of {} bytes once decompressed \
                         (decompression stopped there)",
                        info.nar_size
                    ),
                )
            };
            match parse_nar_tee(&mut dec, &mut nar, visitor) {
                Ok(_) => {
                    parsed = true;
                    // Bounded by the cap too: trailing data can be a bomb.
                    let mut trailing = 0u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    let r = loop {
                        match dec.read(&mut buf) {
                            Ok(0) => break Ok(trailing),
                            Ok(n) => trailing += n as u64,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    match r {
                        Ok(0) => {}
                        Ok(n) => {
                            content = Some((
                                "nar-trailing-data",
                                format!("{n} bytes follow the end of the NAR once decompressed"),
                            ))
                        }
                        Err(_) if dec.over => {
                            content = Some((
                                "nar-trailing-data",
                                format!(
                                    "more than {trailing} bytes follow the end of the NAR once \
                                     decompressed (reading stopped after NarSize + 1 bytes)"
                                ),
                            ))
                        }
                        Err(e) => content = Some(("decompress", format!("decompressing: {e}"))),
                    }
                }
                Err(_) if dec.over => content = Some(bomb()),
                Err(e) => {
                    content = Some(match e.kind {
                        ParseErrorKind::Read(r) => ("decompress", format!("decompressing: {r}")),
                        _ => ("nar-invalid", format!("not a valid NAR: {e}")),
                    })
                }
            }
            if want_listing && content.is_none() {
                out.listing = builder.finish();
            }
        }
    }
    // The rest of the file still counts for FileSize and FileHash (read
    // up to the limit only, and within the deadline).
    if src.error.is_none() {
        let _ = io::copy(&mut src, &mut io::sink());
    }
    if let Some(e) = src.error {
        out.read_error = Some(e);
        out.listing = None;
        return out;
    }
    let (file_hash, file_size) = src.file.finish();
    if info.file_size.is_none() && file_size >= file_limit(info) {
        out.problems.push((
            "file-size",
            format!(
                "NAR file is over {} bytes, far more than a compressed NAR of NarSize {} bytes \
                 needs (reading stopped there)",
                file_size - 1,
                info.nar_size
            ),
        ));
    } else if let Some(want) = info.file_size
        && want != file_size
    {
        let m = if file_size < want {
            format!("NAR file truncated: {file_size} of {want} bytes (FileSize)")
        } else {
            format!("NAR file is longer than the {want} bytes FileSize says")
        };
        out.problems.push(("file-size", m));
    } else if let Some(want) = info.file_hash
        && want != file_hash
    {
        out.problems.push((
            "file-hash",
            format!("NAR file's SHA-256 is {file_hash}, but FileHash says {want}: the file was altered or replaced"),
        ));
    }
    if !out.problems.is_empty() {
        out.listing = None;
        return out;
    }
    out.problems.extend(content);
    if parsed {
        let (nar_hash, nar_size) = nar.finish();
        if nar_size != info.nar_size {
            out.problems.push((
                "nar-size",
                format!(
                    "the NAR is {nar_size} bytes once decompressed, but NarSize says {}",
                    info.nar_size
                ),
            ));
        } else if nar_hash != info.nar_hash {
            out.problems.push((
                "nar-hash",
                format!(
                    "the NAR's hash is {nar_hash}, but NarHash says {}: these are not the path's contents",
                    info.nar_hash
                ),
            ));
        }
    }
    if !out.problems.is_empty() {
        out.listing = None;
    }
    out
}

struct Noop;
impl NarVisitor for Noop {}

#[cfg(test)]
mod tests;
