//! The spool: where the hook leaves requests the daemon did not acknowledge,
//! one file per request, for the daemon to ingest when it is back.
//!
//! Each file holds exactly the request frame the hook would have sent, so
//! the daemon decodes spool files and socket requests with the same
//! [`decode`]. Files appear atomically under their final `*.req` name;
//! temporary files start with `.` and are skipped by [`list_spool`].

use std::fs::{DirBuilder, File};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix_outbox_core::StoreDir;
use nix_outbox_core::atomic_write::{self, AtomicWriteError};
use thiserror::Error;

use crate::protocol::{FrameError, HookRequest, MAX_REQUEST_BYTES, decode};
use nix_outbox_config::effective_uid;

/// Suffix of complete spool files.
pub const SPOOL_SUFFIX: &str = ".req";

/// Spool files hold only store paths, which are world-readable anyway;
/// readable by all so a daemon running as another user than the hook can
/// ingest them. The directory (0700 when we create it) guards access.
const FILE_MODE: u32 = 0o644;

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} is owned by uid {owner}, not by us (uid {us}); refusing to queue there")]
    NotOurs { path: PathBuf, owner: u32, us: u32 },
    #[error("{0}")]
    Write(#[from] AtomicWriteError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Decode { path: PathBuf, source: FrameError },
}

/// Durably writes `req` as a new file in `spool_dir` (created 0700 if
/// missing) and returns its path. When this returns `Ok` the request
/// survives a crash.
pub fn write_spool(
    spool_dir: &Path,
    req: &HookRequest,
    sd: &StoreDir,
) -> Result<PathBuf, SpoolError> {
    ensure_dir(spool_dir)?;
    let path = spool_dir.join(file_name());
    atomic_write::write(&path, &req.encode(sd), FILE_MODE, true)?;
    Ok(path)
}

fn ensure_dir(dir: &Path) -> Result<(), SpoolError> {
    let existed = dir.is_dir();
    if !existed {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SpoolError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        // Make the new directory's own name durable, not just its contents.
        if let Some(parent) = dir.parent() {
            let _ = File::open(parent).and_then(|d| d.sync_all());
        }
    }
    // A non-root user's fallback state dir lives in /tmp, where someone else
    // could have created it first to read or swallow our requests.
    let us = effective_uid();
    if us != 0 {
        let meta = std::fs::symlink_metadata(dir).map_err(|source| SpoolError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        if meta.uid() != us || !meta.is_dir() {
            return Err(SpoolError::NotOurs {
                path: dir.to_owned(),
                owner: meta.uid(),
                us,
            });
        }
    }
    Ok(())
}

/// `<unix-nanos>-<pid>-<counter>.req`. Nanoseconds (and the counter) are
/// zero-padded so name order is time order while the clock only moves
/// forward; pid and counter make names unique across concurrent hooks and
/// within one process.
fn file_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:020}-{}-{n:06}{SPOOL_SUFFIX}", std::process::id())
}

/// The complete spool files in `spool_dir`, sorted by name (oldest first).
/// A missing directory is an empty spool. Temporary files (leading `.`),
/// other names and non-regular files are skipped.
pub fn list_spool(spool_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(spool_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.')
            || !name.ends_with(SPOOL_SUFFIX)
            || name.len() == SPOOL_SUFFIX.len()
        {
            continue;
        }
        if entry.file_type()?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and decodes one spool file (at most [`MAX_REQUEST_BYTES`] read).
pub fn read_spool_file(path: &Path, sd: &StoreDir) -> Result<HookRequest, SpoolError> {
    let read_err = |source| SpoolError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_REQUEST_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    decode(&bytes, sd).map_err(|source| SpoolError::Decode {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use nix_outbox_core::StorePath;

    use super::*;

    fn req(name: &str) -> HookRequest {
        HookRequest {
            drv_path: None,
            out_paths: vec![
                StorePath::from_base_name(&format!("7rjj86a15146cq1d3qy068lml7n8ykzm-{name}"))
                    .unwrap(),
            ],
        }
    }

    #[test]
    fn writes_complete_files_only_and_reads_them_back() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("state/spool");
        let sd = StoreDir::default();
        let mut written = Vec::new();
        for i in 0..20 {
            written.push(write_spool(&spool, &req(&format!("p{i}")), &sd).unwrap());
        }
        let mode = std::fs::metadata(&spool).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Nothing but the final files: no temporaries left behind.
        let all: Vec<_> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(all.len(), 20);
        let listed = list_spool(&spool).unwrap();
        assert_eq!(listed.len(), 20);
        let mut sorted = written.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
        for (i, p) in written.iter().enumerate() {
            assert_eq!(read_spool_file(p, &sd).unwrap(), req(&format!("p{i}")));
        }
    }

    #[test]
    fn list_skips_temporaries_and_strangers() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for name in [".x.req.tmp.1.2", ".hidden.req", "notes.txt", ".req"] {
            std::fs::write(d.join(name), "x").unwrap();
        }
        std::fs::create_dir(d.join("dir.req")).unwrap();
        std::fs::write(d.join("1-2-3.req"), "x").unwrap();
        assert_eq!(list_spool(d).unwrap(), [d.join("1-2-3.req")]);
        assert!(list_spool(&d.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn bad_spool_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("1.req");
        std::fs::write(&p, "nix-outbox-hook 1\nend\n").unwrap();
        let e = read_spool_file(&p, &StoreDir::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1.req: line 2"), "{e}");
    }

    #[test]
    fn unwritable_spool_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = write_spool(&file.join("spool"), &req("x"), &StoreDir::default()).unwrap_err();
        assert!(matches!(e, SpoolError::CreateDir { .. }), "{e}");
        assert!(e.to_string().contains("cannot create"));
    }
}
