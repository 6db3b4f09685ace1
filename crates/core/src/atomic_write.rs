//! Crash-safe file replacement: write a temporary file in the same
//! directory, fsync it, rename (or link, to refuse overwriting) it into
//! place, then fsync the directory so the new name itself is durable.
//! [`replace_volatile`] keeps the atomic rename but skips the fsyncs.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AtomicWriteError {
    #[error("{0} already exists; refusing to overwrite it (use --force to replace it)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Atomically makes `path` hold `data` with permission `mode`. With
/// `overwrite == false` an existing `path` is left untouched and
/// [`AtomicWriteError::Exists`] returned.
pub fn write(path: &Path, data: &[u8], mode: u32, overwrite: bool) -> Result<(), AtomicWriteError> {
    write_with(path, data, mode, overwrite, true)
}

/// Like [`write`] with overwriting, but without any fsync: readers never
/// see a partial file, yet after a crash the file may be old, empty or
/// gone. For files rewritten often whose loss costs nothing (a progress
/// report), where a disk sync per write would be pure cost.
pub fn replace_volatile(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    write_with(path, data, mode, true, false)
}

fn write_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    overwrite: bool,
    durable: bool,
) -> Result<(), AtomicWriteError> {
    let io = |source| AtomicWriteError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}.{}", std::process::id(), unique()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // `mode` applies at creation, so a secret never exists with looser bits.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(data).map_err(io)?;
        if durable {
            f.sync_all().map_err(io)?;
        }
        drop(f);
        if overwrite {
            std::fs::rename(&tmp, path).map_err(io)?;
        } else {
            // link(2) fails if the target exists, which makes "create, never
            // replace" atomic — a check-then-rename would race.
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(AtomicWriteError::Exists(path.to_owned()));
                }
                Err(e) => return Err(io(e)),
            }
            let _ = std::fs::remove_file(&tmp);
        }
        if !durable {
            return Ok(());
        }
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn creates_replaces_and_refuses() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write(&p, b"one", 0o600, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            write(&p, b"two", 0o600, false),
            Err(AtomicWriteError::Exists(_))
        ));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write(&p, b"two", 0o644, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn volatile_replace_writes_with_mode_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("progress.json");
        replace_volatile(&p, b"one", 0o600).unwrap();
        replace_volatile(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = replace_volatile(Path::new("/nonexistent-dir-xyz/f"), b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir-xyz/f"), "{e}");
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let e = write(Path::new("/nonexistent-dir-xyz/f"), b"x", 0o600, false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir-xyz/f"), "{e}");
    }
}
