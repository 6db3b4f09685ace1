//! Reading a binary cache back, as a substituting client would: small
//! files (`nix-cache-info`, narinfos, `.ls` listings) whole, NARs as a
//! blocking byte stream, and the list of narinfos where the cache can be
//! listed. For `nix-outbox verify`.
//!
//! The same URLs as targets ([`TargetConfig`]), and the same clients and
//! credentials: `file://` directly, `s3://` and `http(s)://` through
//! object_store. Keys come from narinfos, which are untrusted input, so a
//! key that could leave the cache (`..`, an absolute path, a URL) is
//! refused ([`is_cache_key`]), and a `file://` cache's symbolic links,
//! FIFOs and devices are not read ([`local`]). Sizes are capped, and xz
//! decoding has a memory limit: a cache may hold decompression bombs.

mod local;

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use object_store::GetOptions;
use object_store::path::Path as ObjectPath;

use crate::error::{RemoteErrorKind, UploadError};
use crate::remote::Remote;
use crate::target::object::{ObjectStoreTarget, is_missing_key};
use crate::url::{TargetConfig, TargetLocation};

/// Largest narinfo (or `nix-cache-info`) read: real ones are a few KiB,
/// even with thousands of references.
pub const MAX_NARINFO: u64 = 1024 * 1024;

/// Largest `.ls` listing read: a big tree's listing reaches a few MiB.
pub const MAX_LISTING: u64 = 64 * 1024 * 1024;

/// Memory the xz decoder may use. Nix's own `xz -9` needs 65 MiB; more
/// than this is a header asking for memory it has no use for.
pub const XZ_MEMLIMIT: u64 = 256 * 1024 * 1024;

/// How long a NAR download may go without receiving a byte. Long enough
/// for a slow server, short enough that a stalled one ends the check.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// A cache opened for reading.
pub struct CacheReader {
    id: String,
    kind: Kind,
}

enum Kind {
    File { root: PathBuf },
    Object { remote: Remote, listable: bool },
}

/// A NAR (or any file) being read from a cache. Blocking: use it from a
/// blocking thread (`spawn_blocking`), never on an async worker.
pub struct BlobReader {
    inner: BlobInner,
}

enum BlobInner {
    File(File),
    Stream {
        handle: tokio::runtime::Handle,
        stream: BoxStream<'static, object_store::Result<Bytes>>,
        chunk: Bytes,
        remote: Remote,
        key: String,
        /// When reading must be over, whatever pace the server keeps.
        deadline: Option<Instant>,
    },
}

/// How long reading a whole small file ([`CacheReader::get`]) may take:
/// a minute, plus a second per 100 KiB of its limit (a slow link). The
/// stall limit alone would let a server that sends a byte every few
/// seconds hold a check for ever.
fn get_deadline(max: u64, now: Instant) -> Instant {
    now + Duration::from_secs(60u64.saturating_add(max / (100 * 1024)))
}

/// Whether `key` names an object inside the cache: relative, made of
/// plain components (no `.`, `..` or empty ones), without a URL scheme,
/// query or fragment.
pub fn is_cache_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains(['\\', '?', '#', '\0'])
        && !key.contains("://")
        && key.split('/').all(|c| !matches!(c, "" | "." | ".."))
}

impl CacheReader {
    /// Opens the cache a URL describes (encoding parameters are ignored).
    /// Sends nothing yet.
    pub fn open(cfg: &TargetConfig) -> Result<Self, UploadError> {
        let id = cfg.id();
        let kind = match &cfg.location {
            TargetLocation::File { root } => Kind::File { root: root.clone() },
            TargetLocation::S3 { .. } | TargetLocation::Http { .. } => {
                // Reading needs no multipart machinery.
                let mut cfg = cfg.clone();
                cfg.multipart_upload = false;
                let target = ObjectStoreTarget::open(&cfg)?;
                Kind::Object {
                    remote: target.remote().clone(),
                    // Plain HTTP caches answer no listing requests (nginx's
                    // WebDAV has no PROPFIND), and Nix never lists them.
                    listable: matches!(cfg.location, TargetLocation::S3 { .. }),
                }
            }
        };
        Ok(Self { id, kind })
    }

    /// The cache's identity, as in messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether [`list_narinfos`](Self::list_narinfos) can work here.
    pub fn can_list(&self) -> bool {
        match &self.kind {
            Kind::File { .. } => true,
            Kind::Object { listable, .. } => *listable,
        }
    }

    /// The hash parts of every `<hash>.narinfo` at the top of the cache,
    /// sorted, plus the names of other `*.narinfo` entries (not a store
    /// path's hash part: nothing a client would ask for).
    pub async fn list_narinfos(&self) -> Result<(Vec<String>, Vec<String>), UploadError> {
        let names: Vec<String> = match &self.kind {
            Kind::File { root } => {
                let (root, id) = (root.clone(), self.id.clone());
                tokio::task::spawn_blocking(move || {
                    let err = |e| UploadError::TargetIo {
                        target: id.clone(),
                        op: "list",
                        path: root.display().to_string(),
                        source: e,
                    };
                    let mut names = Vec::new();
                    for entry in std::fs::read_dir(&root).map_err(err)? {
                        let entry = entry.map_err(err)?;
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                    Ok::<_, UploadError>(names)
                })
                .await
                .map_err(|e| UploadError::Internal(format!("listing task failed: {e}")))??
            }
            Kind::Object { remote, listable } => {
                if !listable {
                    return Err(UploadError::Internal(format!(
                        "{} cannot be listed (HTTP caches answer no listing request): name \
                         the paths to check, or verify the storage behind it via file:// or s3://",
                        self.id
                    )));
                }
                // With a delimiter, only the top level: not every NAR too.
                let fut = remote.store.list_with_delimiter(None);
                let listed = remote.deadline("list", "/", 0, fut).await?;
                listed
                    .objects
                    .into_iter()
                    .map(|o| o.location.as_ref().to_owned())
                    .collect()
            }
        };
        let (mut good, mut odd) = (Vec::new(), Vec::new());
        for name in names {
            let Some(stem) = name.strip_suffix(".narinfo") else {
                continue;
            };
            let ok = stem.len() == nix_outbox_core::store_path::HASH_PART_LEN
                && nix_outbox_core::nixbase32::is_valid_str(stem);
            if ok {
                good.push(stem.to_owned());
            } else {
                odd.push(name);
            }
        }
        good.sort();
        odd.sort();
        Ok((good, odd))
    }

    /// Reads a small file whole; `None` if it does not exist. Refuses
    /// files over `max` bytes ([`MAX_NARINFO`], [`MAX_LISTING`]) without
    /// reading more than that.
    /// Reading it must end by a deadline that allows a minute plus a
    /// second per 100 KiB of `max`, however the server paces its bytes.
    pub async fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>, UploadError> {
        self.get_within(key, max, get_deadline(max, Instant::now()))
            .await
    }

    /// [`get`](Self::get) with the deadline given.
    pub async fn get_within(
        &self,
        key: &str,
        max: u64,
        until: Instant,
    ) -> Result<Option<Vec<u8>>, UploadError> {
        let Some(mut blob) = self.open_blob(key).await? else {
            return Ok(None);
        };
        if let BlobInner::Stream { deadline, .. } = &mut blob.inner {
            *deadline = Some(until);
        }
        let (key, id) = (key.to_owned(), self.id.clone());
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            let n = (&mut blob)
                .take(max + 1)
                .read_to_end(&mut buf)
                .map_err(|e| read_error(&id, &key, e))?;
            if n as u64 > max {
                return Err(UploadError::TargetIo {
                    target: id,
                    op: "read",
                    path: key,
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "larger than {max} bytes, more than such a file ever needs; it was \
                             not read. Delete or replace it"
                        ),
                    ),
                });
            }
            Ok(Some(buf))
        })
        .await
        .map_err(|e| UploadError::Internal(format!("read task failed: {e}")))?
    }

    /// Opens `key` for streaming; `None` if it does not exist. Errors
    /// while reading come out of the reader as `io::Error`s wrapping an
    /// [`UploadError`].
    pub async fn open_blob(&self, key: &str) -> Result<Option<BlobReader>, UploadError> {
        if !is_cache_key(key) {
            return Err(UploadError::Internal(format!(
                "{key:?} is not a key inside the cache"
            )));
        }
        match &self.kind {
            Kind::File { root } => {
                let (root, key) = (root.clone(), key.to_owned());
                let id = self.id.clone();
                tokio::task::spawn_blocking(move || {
                    let refused = |m: String| UploadError::TargetIo {
                        target: id.clone(),
                        op: "open",
                        path: root.join(&key).display().to_string(),
                        source: io::Error::new(io::ErrorKind::InvalidData, m),
                    };
                    match local::open_beneath(&root, &key) {
                        Ok(f) => Ok(f.map(|f| BlobReader {
                            inner: BlobInner::File(f),
                        })),
                        Err(local::OpenError::Symlink { at }) => Err(refused(format!(
                            "{at} is a symbolic link, which verify does not follow (it could \
                             lead outside the cache); replace it with the file or directory \
                             itself, or verify the cache where the link points"
                        ))),
                        Err(local::OpenError::NotAFile { what }) => Err(refused(format!(
                            "{what}, not a regular file; a cache holds only files: remove it"
                        ))),
                        Err(local::OpenError::Io(e)) => Err(UploadError::TargetIo {
                            target: id.clone(),
                            op: "open",
                            path: root.join(&key).display().to_string(),
                            source: e,
                        }),
                    }
                })
                .await
                .map_err(|e| UploadError::Internal(format!("open task failed: {e}")))?
            }
            Kind::Object { remote, .. } => {
                let path = ObjectPath::from(key);
                let fut = remote.store.get_opts(&path, GetOptions::new());
                match remote.deadline("read", key, 0, fut).await {
                    Ok(got) => Ok(Some(BlobReader {
                        inner: BlobInner::Stream {
                            handle: tokio::runtime::Handle::current(),
                            stream: got.into_stream(),
                            chunk: Bytes::new(),
                            remote: remote.clone(),
                            key: key.to_owned(),
                            deadline: None,
                        },
                    })),
                    Err(e) if is_missing_key(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn read_error(id: &str, key: &str, e: io::Error) -> UploadError {
    // An error from a remote stream already is an UploadError.
    match e.downcast::<UploadError>() {
        Ok(u) => u,
        Err(e) => UploadError::TargetIo {
            target: id.to_owned(),
            op: "read",
            path: key.to_owned(),
            source: e,
        },
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            BlobInner::File(f) => f.read(buf),
            BlobInner::Stream {
                handle,
                stream,
                chunk,
                remote,
                key,
                deadline,
            } => {
                while chunk.is_empty() {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left == Some(Duration::ZERO) {
                        return Err(io::Error::other(UploadError::Remote {
                            target: remote.id.to_string(),
                            op: "read",
                            key: key.clone(),
                            kind: RemoteErrorKind::Unavailable,
                            detail: "too slow: the file did not arrive in the time its size \
                                     allows (a stalling or hostile server)"
                                .to_owned(),
                        }));
                    }
                    let wait = left.map_or(STALL_LIMIT, |l| l.min(STALL_LIMIT));
                    let next = handle.block_on(tokio::time::timeout(wait, stream.next()));
                    *chunk = match next {
                        Ok(None) => return Ok(0),
                        Ok(Some(Ok(b))) => b,
                        Ok(Some(Err(e))) => {
                            return Err(io::Error::other(remote.error("read", key, e)));
                        }
                        // The overall deadline came first: said above.
                        Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => continue,
                        Err(_) => {
                            return Err(io::Error::other(UploadError::Remote {
                                target: remote.id.to_string(),
                                op: "read",
                                key: key.clone(),
                                kind: RemoteErrorKind::Unavailable,
                                detail: format!(
                                    "no data for {} s: the server stalled",
                                    STALL_LIMIT.as_secs()
                                ),
                            }));
                        }
                    };
                }
                let n = buf.len().min(chunk.len());
                buf[..n].copy_from_slice(&chunk.split_to(n));
                Ok(n)
            }
        }
    }
}

/// A reader that decompresses a NAR stored with Nix's `Compression:`
/// value `name`; `None` for methods we cannot read (`br`, `lzip`, …).
pub fn decompressor<'a>(
    name: &str,
    input: Box<dyn Read + 'a>,
) -> Option<io::Result<Box<dyn Read + 'a>>> {
    Some(match name {
        "none" => Ok(input),
        // Concatenated streams like `xz -d`, within a memory limit: the
        // header says how much the decoder allocates, and it is untrusted.
        "xz" => xz_decoder(input, XZ_MEMLIMIT),
        // Nix's default before zstd, and what a missing Compression means.
        "bzip2" => Ok(Box::new(bzip2::read::MultiBzDecoder::new(input))),
        "zstd" => {
            zstd::stream::read::Decoder::new(input).map(|d| Box::new(d) as Box<dyn Read + 'a>)
        }
        _ => return None,
    })
}

fn xz_decoder<'a>(input: Box<dyn Read + 'a>, memlimit: u64) -> io::Result<Box<dyn Read + 'a>> {
    let stream =
        liblzma::stream::Stream::new_stream_decoder(memlimit, liblzma::stream::CONCATENATED)
            .map_err(io::Error::other)?;
    Ok(Box::new(liblzma::read::XzDecoder::new_stream(
        input, stream,
    )))
}

/// The decompression methods [`decompressor`] reads.
pub const READABLE_COMPRESSIONS: &[&str] = &["none", "xz", "zstd", "bzip2"];

#[cfg(test)]
mod tests;
