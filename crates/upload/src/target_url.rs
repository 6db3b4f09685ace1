//! Target URLs in Nix's store-URI syntax, as given to `nix copy --to`:
//! `file:///abs/path?compression=zstd&compression-level=N&parallel-compression=true&write-nar-listing=true`.
//!
//! Accepting Nix's own spelling means a cache URL can be pasted between
//! `nix.conf`, `nix copy` and our config. Where we differ from Nix we say so:
//!
//! - The default compression is `zstd`, not Nix's `xz`: it compresses about
//!   as well at a fraction of the CPU time, and every Nix from 2.3.17 on (and
//!   every Lix) can read it. Write `compression=xz` for older clients.
//! - Parameters Nix would ignore (or that only mean something for S3) are
//!   errors here, so a typo never silently changes what gets uploaded.
//! - `s3://` and `http(s)://` parse as schemes but are refused until their
//!   targets exist.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::compress::Compression;

/// The parameters a `file://` target accepts, for error messages.
const ACCEPTED: &str = "compression, compression-level, parallel-compression, write-nar-listing";

/// Parameters that only mean something for an S3 target.
const S3_PARAMS: &[&str] = &[
    "region",
    "endpoint",
    "profile",
    "scheme",
    "multipart-upload",
    "buffer-size",
    "narinfo-compression",
    "ls-compression",
    "log-compression",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetUrlError {
    #[error("empty target URL: expected file:///absolute/path")]
    Empty,
    #[error("target {url:?} has no URL scheme: write a binary cache directory as {suggestion}")]
    NoScheme { url: String, suggestion: String },
    #[error(
        "target {url:?}: the {scheme}:// scheme is not a binary cache nix-outbox can upload to; use file:///absolute/path"
    )]
    UnknownScheme { url: String, scheme: String },
    #[error(
        "target {url:?}: {scheme}:// targets are not supported yet; file:///absolute/path works today"
    )]
    NotYetSupported { url: String, scheme: String },
    #[error(
        "target {url:?}: file URLs take no host ({host:?}); write file:///absolute/path (three slashes)"
    )]
    FileHost { url: String, host: String },
    #[error(
        "target {url:?}: the cache directory must be an absolute path, e.g. file:///var/cache/nix"
    )]
    RelativePath { url: String },
    #[error("target {url:?}: the cache directory path must not contain '..' components")]
    DotDot { url: String },
    #[error("target {url:?}: the filesystem root cannot be a binary cache; name a directory")]
    FilesystemRoot { url: String },
    #[error("target {url:?}: parameter {param:?} is not of the form name=value")]
    MalformedParam { url: String, param: String },
    #[error("target {url:?}: parameter {param:?} is given twice")]
    DuplicateParam { url: String, param: String },
    #[error("target {url:?}: unknown parameter {param:?}; a file:// target accepts {ACCEPTED}")]
    UnknownParam { url: String, param: String },
    #[error(
        "target {url:?}: parameter {param:?} only applies to s3:// targets; a file:// target accepts {ACCEPTED}"
    )]
    S3Param { url: String, param: String },
    #[error(
        "target {url:?}: signing keys are not given in the target URL; list their files in `secret-key-files` in the nix-outbox configuration"
    )]
    SecretKeyParam { url: String },
    #[error("target {url:?}: {param}={value:?} is invalid: expected {expected}")]
    BadValue {
        url: String,
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "target {url:?}: compression {name:?} is not supported; use compression=zstd (the default), xz or none"
    )]
    UnsupportedCompression { url: String, name: String },
    #[error(
        "target {url:?}: compression-level={level} is out of range for {compression}: use {range}"
    )]
    LevelOutOfRange {
        url: String,
        compression: &'static str,
        level: i64,
        range: &'static str,
    },
    #[error("target {url:?}: compression-level has no effect with compression=none; remove it")]
    LevelWithoutCompression { url: String },
}

/// Where a target's files go. More kinds (S3, HTTP) come with their targets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetLocation {
    /// A binary-cache directory on a local (or mounted) filesystem.
    File { root: PathBuf },
}

impl fmt::Display for TargetLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { root } => write!(f, "file://{}", root.display()),
        }
    }
}

/// A parsed target URL: where to upload and how to encode what is uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetConfig {
    pub location: TargetLocation,
    pub compression: Compression,
    /// `None`: the compression's default level.
    pub compression_level: Option<i32>,
    /// `None` (unset): zstd uses every core (its multithreading costs little
    /// memory) and xz one, as in Nix, since parallel xz needs hundreds of MiB
    /// per thread. `Some(b)` applies to both.
    pub parallel_compression: Option<bool>,
    /// Also upload `<hash>.ls` file listings (for `nix store ls` and
    /// cache browsers).
    pub write_nar_listing: bool,
}

impl TargetConfig {
    pub fn parse(url: &str) -> Result<Self, TargetUrlError> {
        parse(url)
    }

    /// The identity of the cache these settings upload to, e.g.
    /// `file:///var/cache/nix` — the queue's target id. It leaves out the
    /// encoding parameters on purpose: switching compression still uploads
    /// to the same cache, so queued work must keep its target.
    pub fn id(&self) -> String {
        self.location.to_string()
    }

    /// The effective compression level (`None` for no compression).
    pub fn level(&self) -> Option<i32> {
        self.compression_level
            .or_else(|| self.compression.default_level())
    }

    /// Compressor threads: every available core when parallel, else one.
    pub fn compression_threads(&self) -> u32 {
        let parallel = self
            .parallel_compression
            .unwrap_or(self.compression == Compression::Zstd);
        if parallel {
            // Capped because each thread costs buffer memory (tens of MiB
            // for zstd, hundreds for xz) and huge machines gain little more.
            std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u32)
        } else {
            1
        }
    }
}

/// The canonical URL: normalised path, then only the parameters that differ
/// from the defaults, in a fixed order. Parsing it gives back an equal value.
impl fmt::Display for TargetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        let mut params = Vec::new();
        if self.compression != Compression::default() {
            params.push(format!("compression={}", self.compression.nix_name()));
        }
        if let Some(level) = self.compression_level {
            params.push(format!("compression-level={level}"));
        }
        if let Some(p) = self.parallel_compression {
            params.push(format!("parallel-compression={p}"));
        }
        if self.write_nar_listing {
            params.push("write-nar-listing=true".to_owned());
        }
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TargetConfig {
    type Err = TargetUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

fn parse(url: &str) -> Result<TargetConfig, TargetUrlError> {
    let u = || url.to_owned();
    if url.is_empty() {
        return Err(TargetUrlError::Empty);
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        let suggestion = if url.starts_with('/') {
            format!("file://{url}")
        } else {
            "file:///absolute/path".to_owned()
        };
        return Err(TargetUrlError::NoScheme {
            url: u(),
            suggestion,
        });
    };
    match scheme {
        "file" => {}
        "s3" | "http" | "https" => {
            return Err(TargetUrlError::NotYetSupported {
                url: u(),
                scheme: scheme.to_owned(),
            });
        }
        _ => {
            return Err(TargetUrlError::UnknownScheme {
                url: u(),
                scheme: scheme.to_owned(),
            });
        }
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let root = parse_file_path(url, path)?;
    let mut cfg = TargetConfig {
        location: TargetLocation::File { root },
        compression: Compression::default(),
        compression_level: None,
        parallel_compression: None,
        write_nar_listing: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut level: Option<i64> = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, raw)) = param.split_once('=') else {
            return Err(TargetUrlError::MalformedParam {
                url: u(),
                param: param.to_owned(),
            });
        };
        if seen.contains(&name) {
            return Err(TargetUrlError::DuplicateParam {
                url: u(),
                param: name.to_owned(),
            });
        }
        seen.push(name);
        let bad = |param: &'static str, expected: &'static str| TargetUrlError::BadValue {
            url: u(),
            param,
            value: raw.to_owned(),
            expected,
        };
        // Nix percent-decodes parameter values; so do we.
        let value = percent_decode(raw);
        match name {
            "compression" => {
                let value = value.ok_or_else(|| bad("compression", "zstd, xz or none"))?;
                cfg.compression = match value.as_str() {
                    "zstd" => Compression::Zstd,
                    "xz" => Compression::Xz,
                    "none" => Compression::None,
                    _ => {
                        return Err(TargetUrlError::UnsupportedCompression {
                            url: u(),
                            name: value,
                        });
                    }
                };
            }
            "compression-level" => {
                let n = value
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| bad("compression-level", "an integer"))?;
                level = Some(n);
            }
            "parallel-compression" => {
                let b = value.as_deref().and_then(parse_bool);
                cfg.parallel_compression =
                    Some(b.ok_or_else(|| bad("parallel-compression", "true or false"))?);
            }
            "write-nar-listing" => {
                let b = value.as_deref().and_then(parse_bool);
                cfg.write_nar_listing =
                    b.ok_or_else(|| bad("write-nar-listing", "true or false"))?;
            }
            "secret-key" | "secret-keys" => {
                return Err(TargetUrlError::SecretKeyParam { url: u() });
            }
            s if S3_PARAMS.contains(&s) => {
                return Err(TargetUrlError::S3Param {
                    url: u(),
                    param: s.to_owned(),
                });
            }
            _ => {
                return Err(TargetUrlError::UnknownParam {
                    url: u(),
                    param: name.to_owned(),
                });
            }
        }
    }
    // The level is checked after the loop, against the final compression,
    // because parameters may come in any order.
    if let Some(n) = level {
        if cfg.compression == Compression::None {
            return Err(TargetUrlError::LevelWithoutCompression { url: u() });
        }
        let (lo, hi, range) = cfg.compression.level_range();
        if n < i64::from(lo) || n > i64::from(hi) {
            return Err(TargetUrlError::LevelOutOfRange {
                url: u(),
                compression: cfg.compression.nix_name(),
                level: n,
                range,
            });
        }
        // A spelled-out default is no setting, so both spellings give equal
        // values and the same canonical form.
        let n = n as i32;
        cfg.compression_level = (Some(n) != cfg.compression.default_level()).then_some(n);
    }
    Ok(cfg)
}

/// Normalises the path of a `file://` URL: collapses `//` and `.`, drops a
/// trailing slash; refuses hosts, relative paths and `..` (which could only
/// be resolved against the filesystem, and would make two spellings of one
/// cache look like different targets).
fn parse_file_path(url: &str, path: &str) -> Result<PathBuf, TargetUrlError> {
    if path.is_empty() {
        return Err(TargetUrlError::RelativePath {
            url: url.to_owned(),
        });
    }
    if !path.starts_with('/') {
        // `file://host/path` and `file://relative/path` look the same; the
        // message covers both.
        let host = path.split('/').next().unwrap_or(path);
        if host == "." || host == ".." || host == "~" || !path.contains('/') {
            return Err(TargetUrlError::RelativePath {
                url: url.to_owned(),
            });
        }
        return Err(TargetUrlError::FileHost {
            url: url.to_owned(),
            host: host.to_owned(),
        });
    }
    let mut out = PathBuf::from("/");
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(TargetUrlError::DotDot {
                    url: url.to_owned(),
                });
            }
            c => out.push(c),
        }
    }
    if out == Path::new("/") {
        return Err(TargetUrlError::FilesystemRoot {
            url: url.to_owned(),
        });
    }
    Ok(out)
}

/// Nix's boolean setting spellings.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// `%XX` decoding; `None` for a malformed escape or a non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            // from_str_radix alone would also take a sign, as in `%+1`.
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[path = "target_url_tests.rs"]
mod tests;
