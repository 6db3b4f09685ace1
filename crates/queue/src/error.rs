//! The one error type of the queue.

use std::path::PathBuf;

use rusqlite::{ErrorCode, ffi};
use thiserror::Error;

use crate::JobState;

/// Everything that can go wrong with the queue. Messages name the database,
/// request or job concerned and, where there is one, the remedy.
#[derive(Debug, Error)]
pub enum QueueError {
    #[error(
        "cannot open the queue database {}: its directory {} does not exist; create the state directory first",
        .path.display(),
        .dir.display()
    )]
    MissingDirectory { path: PathBuf, dir: PathBuf },

    #[error("cannot open the queue database {}: {source}{}", .path.display(), hint(.source))]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },

    #[error(
        "the queue database {} stays in journal mode {mode:?} instead of WAL; put the state directory on a local filesystem that supports shared memory (not NFS or similar)",
        .path.display()
    )]
    NoWal { path: PathBuf, mode: String },

    #[error(
        "the queue database {} has schema version {found}, but this nix-outbox knows versions up to {known}: it was created by a newer nix-outbox; upgrade nix-outbox",
        .path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },

    #[error(
        "{} is not a nix-outbox queue database ({why}); move it aside or point nix-outbox at another state directory",
        .path.display()
    )]
    NotAQueue { path: PathBuf, why: String },

    #[error("request not queued: {0}")]
    InvalidRequest(String),
    /// Another process moved the `nix-db` cursor meanwhile.
    #[error(
        "the nix-db cursor moved under us (expected {expected:?}, found {found:?}): is a second \
         daemon using this state directory? Nothing was queued; stop the other one"
    )]
    CursorMoved {
        expected: Option<i64>,
        found: Option<i64>,
    },

    #[error(
        "cannot enqueue job {path:?} for target {target:?}: {reason}; nothing from this expansion was queued"
    )]
    InvalidJob {
        path: String,
        target: String,
        reason: String,
    },

    #[error(
        "cannot record {path:?} as present in target {target:?}: {reason}; nothing from this batch was recorded"
    )]
    InvalidPresent {
        path: String,
        target: String,
        reason: String,
    },

    #[error(
        "cannot record {path:?} as skipped for target {target:?}: {reason}; nothing from this batch was recorded"
    )]
    InvalidSkip {
        path: String,
        target: String,
        reason: String,
    },

    #[error("there is no request {0} in the queue")]
    NoSuchRequest(i64),

    #[error(
        "request {0} is already expanded into jobs; only a request still in state 'new' can be deferred"
    )]
    RequestAlreadyExpanded(i64),

    #[error("there is no job for {path:?} to target {target:?} in the queue")]
    NoSuchJob { path: String, target: String },

    #[error(
        "job {path:?} to target {target:?} is {state}, not in_flight: only a claimed job can be finished, skipped or retried (was it finished twice, or reset by recover() while still running?)"
    )]
    JobNotInFlight {
        path: String,
        target: String,
        state: JobState,
    },

    #[error("queue database error while {op}: {source}{}", hint(.source))]
    Db {
        op: &'static str,
        source: rusqlite::Error,
    },
}

/// What the operator can do about an SQLite error, as a suffix to its message.
fn hint(err: &rusqlite::Error) -> &'static str {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "; another process held the database locked for longer than the busy timeout: retry, and look for a stuck process using it"
        }
        Some(ErrorCode::DiskFull) => {
            "; the filesystem holding the state directory is full: free some space"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            "; check that this user may write both the database file and its directory (SQLite creates -wal and -shm files next to it)"
        }
        Some(ErrorCode::NotADatabase) => {
            "; the file is not an SQLite database: move it aside so a new queue can be created"
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            "; the database is damaged: stop nix-outbox, keep a copy for diagnosis and move it aside"
        }
        // SQLite reports a full filesystem as a failure to grow its -shm
        // file, not as SQLITE_FULL, when the database is opened.
        Some(ErrorCode::SystemIoFailure)
            if extended_code(err) == Some(ffi::SQLITE_IOERR_SHMSIZE) =>
        {
            "; SQLite could not grow the -shm file next to the database, which is what a full filesystem looks like here: free some space in the state directory's filesystem"
        }
        Some(ErrorCode::SystemIoFailure) => {
            "; an I/O error occurred: check that the state directory's filesystem has free space, then the disk and the kernel log"
        }
        _ => "",
    }
}

fn extended_code(err: &rusqlite::Error) -> Option<i32> {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
        _ => None,
    }
}

/// Attaches the operation being attempted to an SQLite error.
pub(crate) trait Context<T> {
    fn context(self, op: &'static str) -> Result<T, QueueError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, op: &'static str) -> Result<T, QueueError> {
        self.map_err(|source| QueueError::Db { op, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_error(code: i32) -> String {
        QueueError::Open {
            path: "/state/queue.sqlite".into(),
            source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
        }
        .to_string()
    }

    #[test]
    fn a_full_filesystem_at_open_is_named_as_such() {
        // What SQLite returned when the daemon started on a full tmpfs.
        let msg = open_error(ffi::SQLITE_IOERR_SHMSIZE);
        assert!(
            msg.starts_with("cannot open the queue database /state/queue.sqlite: "),
            "{msg}"
        );
        assert!(
            msg.contains("full filesystem") && msg.contains("free some space"),
            "{msg}"
        );
        let msg = open_error(ffi::SQLITE_FULL);
        assert!(msg.contains("is full: free some space"), "{msg}");
        // Other I/O errors still point at the disk, free space first.
        let msg = open_error(ffi::SQLITE_IOERR_FSYNC);
        assert!(
            msg.contains("has free space, then the disk and the kernel log"),
            "{msg}"
        );
        assert!(!msg.contains("full filesystem"), "{msg}");
    }
}
