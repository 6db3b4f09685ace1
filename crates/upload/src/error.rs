//! Upload errors, each saying what failed and what to do about it, and
//! classified so the caller can choose a retry pace: transient errors
//! (disk full, I/O errors, a restarting daemon) are retried soon; permanent
//! ones (permissions, a missing cache directory, a corrupt store path) need
//! a person, so they are retried slowly.

use std::fmt;
use std::io;

use nix_outbox_core::Sha256Hash;
use nix_outbox_core::nar::ParseErrorKind;
use nix_outbox_store::{ProtocolError, StoreError};
use thiserror::Error;

/// A NAR's identity as narinfo files record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarDigest {
    pub hash: Sha256Hash,
    pub size: u64,
}

impl fmt::Display for NarDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarHash {}, NarSize {}", self.hash, self.size)
    }
}

#[derive(Debug, Error)]
pub enum UploadError {
    #[error("reading from the Nix store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "{path} is corrupt: the Nix database records {expected}, but its contents on disk give {actual}. \
         Nothing was uploaded or signed for it. Repair the store with \
         `nix-store --verify --check-contents --repair` (as root), then retry"
    )]
    HashMismatch {
        path: String,
        expected: NarDigest,
        actual: NarDigest,
    },
    #[error("{target}: cannot {op} {path}: {source}{}", hint(.source))]
    TargetIo {
        target: String,
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error(
        "{target}: this cache is for store directory {cache_store_dir} (its nix-cache-info says so), \
         but our store is {store_dir}; use a separate cache for each store directory"
    )]
    StoreDirMismatch {
        target: String,
        cache_store_dir: String,
        store_dir: String,
    },
    #[error("compressing the NAR of {path} with {compression}: {source}")]
    Compression {
        path: String,
        compression: &'static str,
        source: io::Error,
    },
    /// A request to a remote cache (S3, HTTP) failed. `detail` says why and
    /// what to do; it never holds a secret.
    #[error("{target}: cannot {op} {key}: {detail}")]
    Remote {
        target: String,
        op: &'static str,
        key: String,
        kind: RemoteErrorKind,
        detail: String,
    },
    /// The target cannot be set up as configured: credentials that cannot
    /// be found or read, a client that cannot be built.
    #[error("{target}: {message}")]
    TargetSetup { target: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What kind of failure a remote cache reported, which decides whether
/// retrying soon can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The server rejected our credentials (bad signature, unknown key,
    /// expired token).
    Credentials,
    /// The credentials were accepted but lack permission.
    Denied,
    /// The bucket (or base URL) does not exist.
    NotFound,
    /// The server refused the request for another reason it will not
    /// change its mind about (a 4xx other than throttling or conflicts).
    Rejected,
    /// The server could not be reached, did not answer in time, or failed
    /// (5xx, throttling): likely to go away by itself.
    Unavailable,
}

/// What the person reading an I/O error can do about it.
fn hint(e: &io::Error) -> &'static str {
    use io::ErrorKind::*;
    match e.kind() {
        NotFound => {
            ". Create the cache directory (nix-outbox creates files inside it but never the \
             directory itself, so an unmounted filesystem is not filled by mistake)"
        }
        PermissionDenied => ". Make it writable by the user nix-outbox runs as",
        NotADirectory => {
            ". A component of the path is a file, not a directory: check the target URL"
        }
        ReadOnlyFilesystem => ". The filesystem is mounted read-only",
        StorageFull => ". The filesystem is full; free some space (nix-outbox retries)",
        QuotaExceeded => ". A disk quota is exhausted; raise it or free space (nix-outbox retries)",
        _ => "",
    }
}

/// I/O errors a person has to fix; everything else (ENOSPC, EIO, EAGAIN,
/// timeouts, and kinds we do not know) may go away by itself.
fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    !matches!(
        e.kind(),
        NotFound
            | PermissionDenied
            | NotADirectory
            | IsADirectory
            | ReadOnlyFilesystem
            | InvalidInput
            | InvalidFilename
            | Unsupported
    )
}

impl UploadError {
    /// Whether retrying soon is likely to succeed. Permanent errors are
    /// still worth retrying slowly: someone may fix the cause.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => store_is_transient(e),
            Self::HashMismatch { .. } | Self::StoreDirMismatch { .. } => false,
            Self::TargetIo { source, .. } => io_is_transient(source),
            // Compressors fail on allocation, not on input.
            Self::Compression { .. } => true,
            Self::Remote { kind, .. } => *kind == RemoteErrorKind::Unavailable,
            Self::TargetSetup { .. } => false,
            Self::Internal(_) => true,
        }
    }

    /// Wraps this error in an `io::Error` of a matching kind, for errors that
    /// must pass through `std::io::Write` (a target's NAR writer) and come
    /// out intact on the other side (see [`UploadError::from_io`]).
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::TargetIo { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }

    /// Recovers an error that [`UploadError::into_io`] wrapped; `None` for
    /// any other `io::Error`.
    pub fn from_io(e: io::Error) -> Result<Self, io::Error> {
        if e.get_ref().is_some_and(|i| i.is::<UploadError>()) {
            let inner = e.into_inner().expect("checked above");
            return Ok(*inner.downcast::<UploadError>().expect("checked above"));
        }
        Err(e)
    }
}

fn store_is_transient(e: &StoreError) -> bool {
    match e {
        StoreError::Connect { .. } | StoreError::Spawn { .. } | StoreError::Internal(_) => true,
        StoreError::Protocol(p) => matches!(
            p,
            ProtocolError::Disconnected { .. }
                | ProtocolError::Io { .. }
                | ProtocolError::Remote(_)
        ),
        StoreError::Nar { source, .. } => matches!(source.kind, ParseErrorKind::Read(_)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_io(kind: io::ErrorKind) -> UploadError {
        UploadError::TargetIo {
            target: "file:///c".into(),
            op: "write",
            path: "/c/x".into(),
            source: io::Error::from(kind),
        }
    }

    #[test]
    fn classification_and_hints() {
        assert!(target_io(io::ErrorKind::StorageFull).is_transient());
        assert!(
            UploadError::TargetIo {
                target: "t".into(),
                op: "write",
                path: "p".into(),
                source: io::Error::from_raw_os_error(5), // EIO
            }
            .is_transient()
        );
        assert!(target_io(io::ErrorKind::WouldBlock).is_transient());
        let denied = target_io(io::ErrorKind::PermissionDenied);
        assert!(!denied.is_transient());
        assert!(denied.to_string().contains("writable by"), "{denied}");
        let missing = target_io(io::ErrorKind::NotFound);
        assert!(!missing.is_transient());
        assert!(missing.to_string().contains("Create the cache directory"));
    }

    #[test]
    fn survives_a_trip_through_io_error() {
        let e = target_io(io::ErrorKind::StorageFull).into_io();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        let back = UploadError::from_io(e).unwrap();
        assert!(matches!(back, UploadError::TargetIo { op: "write", .. }));
        let plain = io::Error::other("zstd: allocation failed");
        assert!(UploadError::from_io(plain).is_err());
    }

    #[test]
    fn hash_mismatch_says_what_to_run() {
        let d = |b: u8, size| NarDigest {
            hash: Sha256Hash([b; 32]),
            size,
        };
        let e = UploadError::HashMismatch {
            path: "/nix/store/x".into(),
            expected: d(1, 8),
            actual: d(2, 9),
        };
        assert!(!e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.contains("corrupt") && msg.contains("--check-contents --repair"),
            "{msg}"
        );
        assert!(
            msg.contains("NarSize 8") && msg.contains("NarSize 9"),
            "{msg}"
        );
    }
}
