//! The durable queue of nix-outbox, in one SQLite file.
//!
//! Two tables: `requests` (one row per accepted hook, spool or push request,
//! as received) and `jobs` (one row per store path and target, the unit of
//! upload); plus `present`, a cache of which paths each target was recently
//! seen to hold, and `skipped`, the paths left out of uploads on purpose.
//! The daemon expands each request into jobs once the store has told it
//! which paths the request stands for, then claims and finishes jobs.
//!
//! The API is synchronous: the daemon calls it from a dedicated thread or
//! `spawn_blocking`, and the CLI's `status` and `wait` open the same file
//! while the daemon runs. Every handle is a separate SQLite connection; WAL
//! mode lets readers and the writer proceed side by side, and writers queue
//! behind each other for up to [`BUSY_TIMEOUT`].
//!
//! The queue never reads the clock: every timestamp is passed in by the
//! caller as unix seconds (`now`), which keeps tests deterministic.
//!
//! See `README.md` in this crate for the schema and the crash model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

/// Declares a fieldless enum stored as a fixed TEXT spelling, with its SQL
/// conversions. The spellings are part of the on-disk schema (CHECK
/// constraints list them), so they live next to each variant.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// The spelling stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }

            /// The variant with this spelling, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                Self::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!(
                            "unknown {} {text:?} in the queue database",
                            stringify!($name)
                        )
                        .into(),
                    )
                })
            }
        }
    };
}

mod error;
mod expand;
mod jobs;
mod nix_db;
mod present;
mod requests;
mod schema;
mod skipped;
mod status;

pub use error::QueueError;
pub use expand::Expansion;
pub use jobs::{Job, JobState};
pub use nix_db::NixDbCursor;
pub use present::PRESENT_CHUNK;
pub use requests::{MAX_PATH_BYTES, MAX_PATHS, Request, RequestState, Source};
pub use schema::SCHEMA_VERSION;
pub use skipped::{SkipCount, SkippedPath};
pub use status::{Outstanding, Status, TargetStatus};

use error::Context;

/// How long a statement waits for another connection's write lock before
/// failing with "database is locked". Writes are short (no transaction spans
/// an upload), so reaching this means something is stuck.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the queue database: one SQLite connection.
///
/// `Send` but not `Sync`: give each thread its own handle (opening is cheap).
pub struct Queue {
    conn: Connection,
    path: PathBuf,
}

// The daemon moves handles into `spawn_blocking` and worker threads.
const _: () = {
    fn assert_send<T: Send>() {}
    let _ = assert_send::<Queue>;
};

impl Queue {
    /// The database file this handle was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a write transaction. `BEGIN IMMEDIATE` takes the write lock at
    /// once (waiting up to the busy timeout), so two handles can never both
    /// read a job as pending and then both claim it, and a write never fails
    /// halfway because another handle wrote after our read.
    fn write(&mut self, op: &'static str) -> Result<Transaction<'_>, QueueError> {
        Transaction::new(&mut self.conn, TransactionBehavior::Immediate).context(op)
    }

    /// Starts a read transaction, so that queries made together (counts and
    /// lists) see one consistent snapshot. `&self` suffices because the
    /// transaction only reads and ends (rolls back) when dropped.
    fn read(&self, op: &'static str) -> Result<Transaction<'_>, QueueError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Deferred).context(op)
    }
}
