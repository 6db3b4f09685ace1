//! Build logs: read the log Nix kept for a derivation and publish it as
//! `log/<drv basename>`, where `nix log --store <cache> <path>` looks.
//!
//! The daemon protocol has no operation to read a log, so we read Nix's
//! log directory the way Nix's `LocalFSStore::getBuildLog` does (2.8 to
//! current): `<log-dir>/drvs/<first 2 chars>/<rest>` then the flat
//! `<log-dir>/drvs/<basename>`, each plain first, then with `.bz2`
//! (`compress-build-log`, on by default). The file name is built only from
//! a validated `.drv` basename, and the final component is opened with
//! `O_NOFOLLOW` and must be a regular file, so nothing a builder controls
//! can make us read (and publish) another file.
//!
//! We upload what `BinaryCacheStore::addBuildLog` writes: the plain,
//! decompressed text (Nix serves it with `text/plain; charset=utf-8`).
//! Logs larger than [`MAX_BUILD_LOG`] are cut there with a marker line,
//! so one runaway build cannot fill a cache or the daemon's memory.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix_outbox_core::StorePath;
use thiserror::Error;

use crate::error::UploadError;
use crate::target::Target;

/// The most of a log we upload (decompressed), in bytes.
pub const MAX_BUILD_LOG: u64 = 64 << 20;

/// Appended to a log cut at [`MAX_BUILD_LOG`].
pub const TRUNCATED_MARKER: &str =
    "\n[nix-outbox: build log truncated at 64 MiB; the full log is on the build machine]\n";

/// Nix's own default when neither `NIX_LOG_DIR` nor a setting says
/// otherwise (`settings.nixLogDir`, the compile-time `NIX_LOG_DIR`).
pub const DEFAULT_LOG_DIR: &str = "/nix/var/log/nix";

#[derive(Debug, Error)]
pub enum BuildLogError {
    #[error(
        "cannot read the build log {path}: {source}; check that the daemon may read \
         `build-log-dir` (or set upload-build-logs = false)"
    )]
    Read { path: PathBuf, source: io::Error },
    #[error("build log {path} is not a regular file ({what}); refusing to upload it")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error("build log {path} is not valid bzip2 ({source}); it is not uploaded")]
    Corrupt { path: PathBuf, source: io::Error },
    #[error("{drv} is not a derivation; only derivations have build logs")]
    NotDerivation { drv: String },
    #[error("uploading the build log of {drv}: {source}")]
    Upload {
        drv: String,
        // Boxed: an upload error is large, and this enum is returned on
        // the happy path of reading logs too.
        #[source]
        source: Box<UploadError>,
    },
}

impl BuildLogError {
    /// Whether trying again later can help. A corrupt or non-regular log
    /// file stays what it is: it is skipped (with a warning) instead.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Upload { .. })
    }

    /// Whether retrying soon is likely to succeed (else: slowly).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Read { source, .. } => source.kind() != io::ErrorKind::PermissionDenied,
            Self::Upload { source, .. } => source.is_transient(),
            Self::NotRegular { .. } | Self::Corrupt { .. } | Self::NotDerivation { .. } => false,
        }
    }
}

/// What [`upload_build_log`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildLogOutcome {
    /// Uploaded now; size in bytes as uploaded.
    Uploaded { bytes: u64 },
    /// The cache already has `log/<drv>`.
    AlreadyPresent,
    /// Nix kept no log (substituted, `keep-build-log = false`, deleted).
    NoLog,
}

/// The log directory Nix uses: `$NIX_LOG_DIR`, else [`DEFAULT_LOG_DIR`].
pub fn default_log_dir() -> PathBuf {
    std::env::var_os("NIX_LOG_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR))
}

/// The candidate files for `drv`'s log, in the order Nix tries them.
fn candidates(log_dir: &Path, base: &str) -> [(PathBuf, bool); 4] {
    let drvs = log_dir.join("drvs");
    let sharded = drvs.join(&base[..2]).join(&base[2..]);
    let flat = drvs.join(base);
    let bz2 = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".bz2");
        PathBuf::from(s)
    };
    [
        (sharded.clone(), false),
        (bz2(&sharded), true),
        (flat.clone(), false),
        (bz2(&flat), true),
    ]
}

/// Reads `drv`'s build log from `log_dir`, decompressed and capped at
/// [`MAX_BUILD_LOG`]; `Ok(None)` when Nix kept none. Blocking.
pub fn read_build_log(log_dir: &Path, drv: &StorePath) -> Result<Option<Vec<u8>>, BuildLogError> {
    if !drv.is_derivation() {
        return Err(BuildLogError::NotDerivation {
            drv: drv.as_str().to_owned(),
        });
    }
    // A store path basename: no `/`, no leading `.`, at least 32 chars.
    let base = drv.as_str();
    for (path, compressed) in candidates(log_dir, base) {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // O_NOFOLLOW on a symlink.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(BuildLogError::NotRegular {
                    path,
                    what: "a symlink",
                });
            }
            Err(source) => return Err(BuildLogError::Read { path, source }),
        };
        let meta = file.metadata().map_err(|source| BuildLogError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BuildLogError::NotRegular {
                path,
                what: "not a regular file",
            });
        }
        return read_capped(file, meta.len(), &path, compressed).map(Some);
    }
    Ok(None)
}

fn read_capped(
    file: File,
    file_len: u64,
    path: &Path,
    compressed: bool,
) -> Result<Vec<u8>, BuildLogError> {
    let res = if compressed {
        // The decompressed size is unknown: grow from a guess.
        read_bounded(
            bzip2::read::MultiBzDecoder::new(io::BufReader::new(file)),
            file_len.saturating_mul(4),
        )
    } else {
        read_bounded(file, file_len)
    };
    let mut out = match res {
        Ok(out) => out,
        Err(source) => return Err(read_error(path, compressed, source)),
    };
    if out.len() as u64 > MAX_BUILD_LOG {
        out.truncate(MAX_BUILD_LOG as usize);
        out.extend_from_slice(TRUNCATED_MARKER.as_bytes());
    }
    Ok(out)
}

/// Reads at most `MAX_BUILD_LOG + 1` bytes (one more than the cap tells a
/// log of exactly the cap from a longer one) into a buffer that never
/// holds more than that plus the marker: `read_to_end` doubles its buffer,
/// which near the cap means 128 MiB for a 64 MiB log.
fn read_bounded(mut reader: impl Read, size_hint: u64) -> io::Result<Vec<u8>> {
    let limit = (MAX_BUILD_LOG + 1) as usize;
    let most = limit + TRUNCATED_MARKER.len();
    let mut out: Vec<u8> = Vec::new();
    reserve_to(
        &mut out,
        (size_hint as usize).clamp(4096, limit) + TRUNCATED_MARKER.len(),
    )?;
    let mut chunk = vec![0u8; 64 << 10];
    while out.len() < limit {
        let want = chunk.len().min(limit - out.len());
        let n = match reader.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if out.len() + n > out.capacity() {
            let grown = out.capacity().saturating_mul(2).max(out.len() + n);
            reserve_to(&mut out, grown.min(most))?;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    out.shrink_to_fit();
    Ok(out)
}

/// Grows `out` to hold `capacity` bytes, reporting an allocation failure
/// as an I/O error rather than aborting the daemon.
fn reserve_to(out: &mut Vec<u8>, capacity: usize) -> io::Result<()> {
    out.try_reserve_exact(capacity.saturating_sub(out.len()))
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))
}

fn read_error(path: &Path, compressed: bool, source: io::Error) -> BuildLogError {
    let path = path.to_owned();
    // The bzip2 decoder reports bad data as InvalidInput/InvalidData.
    match source.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            if compressed =>
        {
            BuildLogError::Corrupt { path, source }
        }
        _ => BuildLogError::Read { path, source },
    }
}

/// Publishes `drv`'s build log to `target` as `log/<drv basename>` unless
/// the cache has it already. A derivation without a kept log is not an
/// error ([`BuildLogOutcome::NoLog`]).
pub async fn upload_build_log(
    target: &dyn Target,
    log_dir: &Path,
    drv: &StorePath,
) -> Result<BuildLogOutcome, BuildLogError> {
    let upload_err = |source| BuildLogError::Upload {
        drv: drv.as_str().to_owned(),
        source: Box::new(source),
    };
    let name = drv.as_str();
    if target.has_build_log(name).await.map_err(upload_err)? {
        return Ok(BuildLogOutcome::AlreadyPresent);
    }
    let (dir, d) = (log_dir.to_owned(), drv.clone());
    let log = tokio::task::spawn_blocking(move || read_build_log(&dir, &d))
        .await
        .map_err(|e| {
            upload_err(UploadError::Internal(format!(
                "log reading task failed: {e}"
            )))
        })??;
    let Some(log) = log else {
        return Ok(BuildLogOutcome::NoLog);
    };
    let bytes = log.len() as u64;
    target.put_build_log(name, log).await.map_err(upload_err)?;
    Ok(BuildLogOutcome::Uploaded { bytes })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    const DRV: &str = "0123456789abcdfghijklmnpqrsvwxyz-hello.drv";

    fn drv() -> StorePath {
        StorePath::from_base_name(DRV).unwrap()
    }

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn put(dir: &Path, rel: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn looks_where_nix_looks_in_nix_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(read_build_log(d, &drv()).unwrap(), None);
        put(d, &format!("drvs/{DRV}.bz2"), &bz2(b"flat bz2\n"));
        assert_eq!(read_build_log(d, &drv()).unwrap().unwrap(), b"flat bz2\n");
        put(d, &format!("drvs/{DRV}"), b"flat\n");
        assert_eq!(read_build_log(d, &drv()).unwrap().unwrap(), b"flat\n");
        put(
            d,
            &format!("drvs/01/{}.bz2", &DRV[2..]),
            &bz2(b"compressed\n"),
        );
        assert_eq!(read_build_log(d, &drv()).unwrap().unwrap(), b"compressed\n");
        put(d, &format!("drvs/01/{}", &DRV[2..]), b"plain\n");
        assert_eq!(read_build_log(d, &drv()).unwrap().unwrap(), b"plain\n");
    }

    #[test]
    fn refuses_symlinks_and_non_derivations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let secret = put(d, "secret", b"not a log");
        std::fs::create_dir_all(d.join("drvs/01")).unwrap();
        std::os::unix::fs::symlink(&secret, d.join(format!("drvs/01/{}.bz2", &DRV[2..]))).unwrap();
        let e = read_build_log(d, &drv()).unwrap_err();
        assert!(
            matches!(e, BuildLogError::NotRegular { .. }) && !e.is_retriable(),
            "{e}"
        );
        let out = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-hello").unwrap();
        assert!(matches!(
            read_build_log(d, &out),
            Err(BuildLogError::NotDerivation { .. })
        ));
    }

    #[test]
    fn corrupt_bz2_is_skipped_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            &format!("drvs/01/{}.bz2", &DRV[2..]),
            b"BZh9 this is not bzip2",
        );
        let e = read_build_log(dir.path(), &drv()).unwrap_err();
        assert!(
            matches!(e, BuildLogError::Corrupt { .. }) && !e.is_retriable(),
            "{e}"
        );
    }

    #[test]
    fn caps_at_64_mib_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let exact = vec![b'x'; MAX_BUILD_LOG as usize];
        put(dir.path(), &format!("drvs/01/{}", &DRV[2..]), &exact);
        assert_eq!(read_build_log(dir.path(), &drv()).unwrap().unwrap(), exact);
        let mut long = exact.clone();
        long.extend_from_slice(b"more");
        std::fs::remove_file(dir.path().join(format!("drvs/01/{}", &DRV[2..]))).unwrap();
        put(
            dir.path(),
            &format!("drvs/01/{}.bz2", &DRV[2..]),
            &bz2(&long),
        );
        let got = read_build_log(dir.path(), &drv()).unwrap().unwrap();
        assert_eq!(got.len(), exact.len() + TRUNCATED_MARKER.len());
        assert!(got.ends_with(TRUNCATED_MARKER.as_bytes()));
    }
}
