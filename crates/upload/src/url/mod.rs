//! Target URLs in Nix's store-URI syntax, as given to `nix copy --to`:
//!
//! - `file:///abs/path`
//! - `s3://bucket?region=R&endpoint=HOST:PORT&scheme=http&profile=P`
//! - `http://host[:port]/path`, `https://…` (WebDAV-style `PUT`)
//!
//! each with `compression=zstd|xz|none`, `compression-level=N`,
//! `parallel-compression=BOOL` and `write-nar-listing=BOOL`; S3 also takes
//! `multipart-upload=BOOL`, `multipart-chunk-size=BYTES` (or its alias
//! `buffer-size`), and from Nix 2.35 `addressing-style=auto|path|virtual`,
//! `storage-class=CLASS` and `multipart-threshold=BYTES`. Sizes take Nix's
//! `K`/`M`/`G`/`T` suffixes.
//!
//! Accepting Nix's own spelling means a cache URL can be pasted between
//! `nix.conf`, `nix copy` and our config. Where we differ from Nix we say so:
//!
//! - The default compression is `zstd`, not Nix's `xz`: it compresses about
//!   as well at a fraction of the CPU time, and every Nix from 2.3.17 on (and
//!   every Lix) can read it. Write `compression=xz` for older clients.
//! - `multipart-upload` defaults to `true` (Nix: `false`): NARs stream to S3
//!   in parts with bounded memory. `false` buffers each compressed NAR in a
//!   temporary file and sends it in one `PUT` (at most 5 GiB), for stores
//!   without multipart support. Parts are 8 MiB unless
//!   `multipart-chunk-size` says otherwise (Nix: 5 MiB).
//! - `multipart-threshold` defaults to one part (Nix 2.35: 100 MiB): a NAR
//!   goes up in parts once it is larger than that. The writer holds a NAR
//!   up to the threshold in memory before it knows which way it goes, so
//!   the threshold is at most 96 MiB: with the parts in flight, what one
//!   NAR upload holds then stays within the 130 MiB a large NAR is
//!   charged against the memory budget (`closure_upload::schedule`).
//! - `storage-class` refuses `GLACIER` and `DEEP_ARCHIVE`: their objects
//!   cannot be read without a restore, so no Nix could substitute.
//! - Parameters Nix would ignore (or that mean something only for another
//!   scheme) are errors here, so a typo never silently changes what gets
//!   uploaded.

mod canonical;
mod error;
mod location;
mod s3;

use crate::compress::Compression;
pub use error::TargetUrlError;
use error::{COMMON, S3_ACCEPTED};
pub use location::TargetLocation;
use location::{DEFAULT_REGION, parse_bucket, parse_endpoint, parse_file_path, parse_http_url};
pub use s3::Addressing;
use s3::{check_storage_class, parse_size};

/// Parameters that only mean something for an S3 target.
const S3_PARAMS: &[&str] = &[
    "region",
    "endpoint",
    "profile",
    "scheme",
    "multipart-upload",
    "multipart-chunk-size",
    "buffer-size",
    "multipart-threshold",
    "addressing-style",
    "storage-class",
];

/// S3's smallest part (except the last), its largest, and its part count.
pub(crate) const MIN_PART: u64 = 5 * 1024 * 1024;
pub(crate) const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
/// Our default part size: S3's minimum would need more requests for no gain.
pub(crate) const DEFAULT_PART: u64 = 8 * 1024 * 1024;
/// The largest `multipart-threshold`: a NAR is held in memory up to it.
pub const MAX_MULTIPART_THRESHOLD: u64 = 96 * 1024 * 1024;

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
    /// S3 only (always `true` elsewhere): stream NARs larger than one part
    /// as multipart uploads; `false` buffers them in a temporary file and
    /// sends one `PUT`.
    pub multipart_upload: bool,
    /// S3 only: the part size in bytes, 5 MiB to 5 GiB; `None`: 8 MiB. It
    /// is raised for a NAR too large to fit in 10,000 parts of this size.
    pub multipart_chunk_size: Option<u64>,
    /// `max-connections`: requests in flight to this cache at once (for
    /// file://, NARs written at once), shared by every job; `None`: the
    /// default for its kind (see [`TargetConfig::connections`]).
    pub max_connections: Option<usize>,
    /// S3 only: how requests name the bucket (`addressing-style`).
    pub addressing: Addressing,
    /// S3 only: the storage class of every object written
    /// (`x-amz-storage-class`); `None`: the bucket's default.
    pub storage_class: Option<String>,
    /// S3 only: NARs larger than this many compressed bytes go up in
    /// parts, smaller ones in one `PUT`; `None`: one part's size.
    pub multipart_threshold: Option<u64>,
}

/// Requests in flight to a remote cache by default: enough to fill a link
/// 100 ms away with small paths, far from what servers refuse.
pub const DEFAULT_REMOTE_CONNECTIONS: usize = 64;
/// NARs written at once to a file:// cache by default: the work is the
/// compressor's, so a few more than the cores.
pub const DEFAULT_FILE_CONNECTIONS: usize = 16;
/// The largest `max-connections` accepted.
pub const MAX_CONNECTIONS: usize = 1024;

impl TargetConfig {
    pub fn parse(url: &str) -> Result<Self, TargetUrlError> {
        parse(url)
    }

    /// The identity of the cache these settings upload to, e.g.
    /// `file:///var/cache/nix` or `s3://bucket?endpoint=host:9000` — the
    /// queue's target id. It leaves out the encoding parameters on purpose:
    /// switching compression still uploads to the same cache, so queued work
    /// must keep its target (see [`TargetLocation::id`]).
    pub fn id(&self) -> String {
        self.location.id()
    }

    /// The effective `max-connections`.
    pub fn connections(&self) -> usize {
        self.max_connections.unwrap_or(match self.location {
            TargetLocation::File { .. } => DEFAULT_FILE_CONNECTIONS,
            _ => DEFAULT_REMOTE_CONNECTIONS,
        })
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

    /// The part size for a multipart upload of a NAR of `nar_size` bytes
    /// (0: unknown): the configured size, raised (to whole MiB) so that the
    /// compressed NAR fits in S3's 10,000 parts even if compression made it
    /// slightly larger, as incompressible data does.
    pub fn part_size(&self, nar_size: u64) -> u64 {
        const MIB: u64 = 1024 * 1024;
        let chosen = self.multipart_chunk_size.unwrap_or(DEFAULT_PART);
        // zstd and xz add well under 1% to incompressible input; 1/64 plus
        // a MiB leaves room to spare.
        let worst = nar_size.saturating_add(nar_size / 64).saturating_add(MIB);
        let needed = worst.div_ceil(10_000).div_ceil(MIB) * MIB;
        chosen.max(needed).min(MAX_PART)
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
    let (place, query) = rest.split_once('?').unwrap_or((rest, ""));
    let location = match scheme {
        "file" => TargetLocation::File {
            root: parse_file_path(url, place)?,
        },
        "s3" => TargetLocation::S3 {
            bucket: parse_bucket(url, place)?,
            region: DEFAULT_REGION.to_owned(),
            endpoint: None,
            scheme: "https".to_owned(),
            profile: None,
        },
        "http" | "https" => TargetLocation::Http {
            url: parse_http_url(url, scheme, place)?,
        },
        _ => {
            return Err(TargetUrlError::UnknownScheme {
                url: u(),
                scheme: scheme.to_owned(),
            });
        }
    };
    let scheme = location.scheme();
    let is_s3 = scheme == "s3";
    let mut cfg = TargetConfig {
        location,
        compression: Compression::default(),
        compression_level: None,
        parallel_compression: None,
        write_nar_listing: false,
        multipart_upload: true,
        multipart_chunk_size: None,
        max_connections: None,
        addressing: Addressing::Auto,
        storage_class: None,
        multipart_threshold: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut level: Option<i64> = None;
    let mut endpoint_scheme: Option<&'static str> = None;
    let mut explicit_scheme: Option<String> = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, raw)) = param.split_once('=') else {
            return Err(TargetUrlError::MalformedParam {
                url: u(),
                param: param.to_owned(),
            });
        };
        // Nix 2.35's alias: one setting, whichever name it is given by.
        let name = if name == "buffer-size" {
            "multipart-chunk-size"
        } else {
            name
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
        let boolean = |param: &'static str| {
            value
                .as_deref()
                .and_then(parse_bool)
                .ok_or_else(|| bad(param, "true or false"))
        };
        let s3 = match &mut cfg.location {
            TargetLocation::S3 {
                region,
                endpoint,
                profile,
                ..
            } => Some((region, endpoint, profile)),
            _ => None,
        };
        match (name, s3) {
            ("compression", _) => {
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
            ("compression-level", _) => {
                let n = value
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| bad("compression-level", "an integer"))?;
                level = Some(n);
            }
            ("parallel-compression", _) => {
                cfg.parallel_compression = Some(boolean("parallel-compression")?);
            }
            ("write-nar-listing", _) => cfg.write_nar_listing = boolean("write-nar-listing")?,
            ("max-connections", _) => {
                let n = value
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                    .ok_or_else(|| {
                        bad("max-connections", "a number of connections from 1 to 1024")
                    })?;
                cfg.max_connections = Some(n);
            }
            ("secret-key" | "secret-keys", _) => {
                return Err(TargetUrlError::SecretKeyParam { url: u() });
            }
            ("region", Some((region, _, _))) => {
                let ok = value.filter(|v| {
                    !v.is_empty()
                        && v.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                });
                *region = ok.ok_or_else(|| bad("region", "a region name such as eu-west-1"))?;
            }
            ("endpoint", Some((_, endpoint, _))) => {
                let v = value.ok_or_else(|| bad("endpoint", "host[:port]"))?;
                let (host, s) = parse_endpoint(url, &v)?;
                *endpoint = Some(host);
                endpoint_scheme = s;
            }
            ("scheme", Some(_)) => match value.as_deref() {
                Some(s @ ("http" | "https")) => explicit_scheme = Some(s.to_owned()),
                _ => return Err(bad("scheme", "http or https")),
            },
            ("profile", Some((_, _, profile))) => {
                // A section name in the credentials file: `]` or a line
                // break could not be matched there.
                let ok = value.filter(|v| {
                    !v.is_empty() && !v.contains([']', '[', '\n', '\r']) && v.trim() == v
                });
                *profile = Some(ok.ok_or_else(|| bad("profile", "a profile name"))?);
            }
            ("multipart-upload", Some(_)) => cfg.multipart_upload = boolean("multipart-upload")?,
            ("multipart-chunk-size", Some(_)) => {
                let n = value
                    .as_deref()
                    .and_then(parse_size)
                    .filter(|n| (MIN_PART..=MAX_PART).contains(n))
                    .ok_or_else(|| {
                        bad(
                            "multipart-chunk-size",
                            "a part size in bytes from 5242880 (5 MiB, S3's minimum) to 5368709120 (5 GiB)",
                        )
                    })?;
                cfg.multipart_chunk_size = (n != DEFAULT_PART).then_some(n);
            }
            ("multipart-threshold", Some(_)) => {
                let n = value
                    .as_deref()
                    .and_then(parse_size)
                    .filter(|n| *n <= MAX_MULTIPART_THRESHOLD)
                    .ok_or_else(|| {
                        bad(
                            "multipart-threshold",
                            "a size in bytes up to 100663296 (96 MiB: a NAR is held in memory up to \
                             it), e.g. 64M",
                        )
                    })?;
                cfg.multipart_threshold = Some(n);
            }
            ("addressing-style", Some(_)) => {
                cfg.addressing = value
                    .as_deref()
                    .and_then(Addressing::parse)
                    .ok_or_else(|| bad("addressing-style", "auto, path or virtual"))?;
            }
            ("storage-class", Some(_)) => {
                let v = value.unwrap_or_default();
                check_storage_class(&v).map_err(|expected| bad("storage-class", expected))?;
                cfg.storage_class = Some(v);
            }
            (s, None) if S3_PARAMS.contains(&s) => {
                return Err(TargetUrlError::S3Param {
                    url: u(),
                    param: s.to_owned(),
                    scheme,
                });
            }
            _ => {
                return Err(TargetUrlError::UnknownParam {
                    url: u(),
                    param: name.to_owned(),
                    scheme,
                    accepted: if is_s3 { S3_ACCEPTED } else { COMMON },
                });
            }
        }
    }
    // Checks across parameters come after the loop, since parameters may
    // come in any order.
    if let TargetLocation::S3 { scheme, .. } = &mut cfg.location {
        match (endpoint_scheme, explicit_scheme) {
            (Some(e), Some(s)) if e != s => {
                return Err(TargetUrlError::SchemeConflict {
                    url: u(),
                    endpoint_scheme: e,
                    scheme: s,
                });
            }
            (_, Some(s)) => *scheme = s,
            (Some(e), None) => *scheme = e.to_owned(),
            (None, None) => {}
        }
    }
    if !cfg.multipart_upload
        && (seen.contains(&"multipart-chunk-size") || seen.contains(&"multipart-threshold"))
    {
        return Err(TargetUrlError::ChunkSizeWithoutMultipart { url: u() });
    }
    if let TargetLocation::S3 { bucket, .. } = &cfg.location
        && cfg.addressing == Addressing::Virtual
        && bucket.contains('.')
    {
        return Err(TargetUrlError::VirtualWithDots {
            url: u(),
            bucket: bucket.clone(),
        });
    }
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
mod tests;

#[cfg(test)]
mod remote_tests;
