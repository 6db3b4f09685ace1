//! Reading Nix's own database of valid paths (`<state>/db/db.sqlite`),
//! read-only, to learn of every path Nix registers without a hook.
//!
//! Nix keeps one row per valid path in `ValidPaths`, with an autoincrement
//! `id` (so new paths have ever higher ids), the `path`, its
//! `registrationTime`, the `deriver` and `ultimate` ("built here"). The
//! database runs in WAL mode by default, where a reader blocks no writer;
//! we still keep every read short (one query, then the snapshot ends), and
//! open the file read-only, so nothing here can change Nix's state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use thiserror::Error;

/// Nix's database schema versions (`<state>/db/schema`) whose `ValidPaths`
/// this reader knows: 10 from Nix 2.0 to today (2.35).
pub const KNOWN_SCHEMAS: &[u32] = &[10];

/// How long a read waits for a lock Nix holds (a checkpoint, recovery)
/// before it gives up until the next poll: short, so that we never queue
/// behind Nix for long, nor make it wait.
const BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// The error messages end with what still works: the hook.
const HOOK_STILL_WORKS: &str = "the hook source (ingest = [\"hook\"]) still works without it";

#[derive(Debug, Error)]
pub enum NixDbError {
    #[error("cannot read Nix's database schema version from {}: {source}; is this Nix's state directory (NIX_STATE_DIR)? {HOOK_STILL_WORKS}", .path.display())]
    Schema {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Nix's database {} has schema version {found:?}, which nix-outbox does not know (it knows {KNOWN_SCHEMAS:?}); update nix-outbox, or use the hook: {HOOK_STILL_WORKS}", .path.display())]
    UnknownSchema { path: PathBuf, found: String },
    #[error("cannot read Nix's database {}: {source} (reading it needs root, or the user Nix runs as, and a local store: not NFS, not a remote store); {HOOK_STILL_WORKS}", .path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("reading Nix's database {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// One row of `ValidPaths`, as far as picking needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPathRow {
    pub id: i64,
    /// The full store path.
    pub path: String,
    /// Unix seconds.
    pub registration_time: i64,
    /// The full path of the `.drv` that produced it, when Nix knows it.
    pub deriver: Option<String>,
    /// Built on this machine (Nix's "ultimate trust").
    pub ultimate: bool,
}

impl ValidPathRow {
    /// Whether a post-build hook would have been called for this path:
    /// an output of a derivation built on this machine. Nix registers
    /// those with `ultimate` set and their deriver; substituted or copied
    /// paths have `ultimate` unset, and paths added from files
    /// (`nix-store --add`, `builtins.toFile`, `.drv` files) have no deriver
    /// (established on Nix 2.8, 2.26 and 2.34 by the tests in
    /// `crates/cli/tests/integration/nix_db.rs`).
    pub fn built_here(&self) -> bool {
        self.ultimate && self.deriver.is_some()
    }
}

/// Nix's state directory as Nix's own tools find it.
pub fn state_dir_from_env() -> PathBuf {
    std::env::var_os("NIX_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/nix/var/nix"), PathBuf::from)
}

pub struct NixDb {
    conn: Connection,
    path: PathBuf,
}

impl NixDb {
    /// Opens `<state_dir>/db/db.sqlite` read-only, after checking the schema
    /// version Nix wrote beside it.
    pub fn open(state_dir: &Path) -> Result<NixDb, NixDbError> {
        let db_dir = state_dir.join("db");
        let schema_path = db_dir.join("schema");
        let schema =
            std::fs::read_to_string(&schema_path).map_err(|source| NixDbError::Schema {
                path: schema_path.clone(),
                source,
            })?;
        let known = schema
            .trim()
            .parse::<u32>()
            .is_ok_and(|v| KNOWN_SCHEMAS.contains(&v));
        let path = db_dir.join("db.sqlite");
        if !known {
            return Err(NixDbError::UnknownSchema {
                path,
                found: schema.trim().to_owned(),
            });
        }
        let open_err = |source| NixDbError::Open {
            path: path.clone(),
            source,
        };
        // No SQLITE_OPEN_CREATE: a missing database is an error, not a
        // new empty file in Nix's state directory.
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Fails now, with the open error's advice, rather than at the
        // first poll: not a database, no such table, no permission.
        conn.query_row("SELECT max(id) FROM ValidPaths", [], |_| Ok(()))
            .map_err(open_err)?;
        Ok(NixDb { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_err(&self, source: rusqlite::Error) -> NixDbError {
        NixDbError::Read {
            path: self.path.clone(),
            source,
        }
    }

    /// The highest `ValidPaths.id` (0 for an empty store).
    pub fn last_id(&self) -> Result<i64, NixDbError> {
        self.conn
            .query_row("SELECT coalesce(max(id), 0) FROM ValidPaths", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.read_err(e))
    }

    /// Up to `limit` rows with an id above `after`, in id order.
    pub fn rows_after(&self, after: i64, limit: usize) -> Result<Vec<ValidPathRow>, NixDbError> {
        self.query(
            "SELECT id, path, registrationTime, deriver, ultimate FROM ValidPaths
              WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after, limit as i64],
        )
    }

    /// Up to `limit` rows with an id above `after` registered at or after
    /// `since` (unix seconds), in id order: `backfill`.
    pub fn rows_since(
        &self,
        since: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ValidPathRow>, NixDbError> {
        self.query(
            "SELECT id, path, registrationTime, deriver, ultimate FROM ValidPaths
              WHERE id > ?1 AND registrationTime >= ?2 ORDER BY id LIMIT ?3",
            params![after, since, limit as i64],
        )
    }

    /// The row of `path`, if it is valid.
    pub fn row_of(&self, path: &str) -> Result<Option<ValidPathRow>, NixDbError> {
        self.conn
            .query_row(
                "SELECT id, path, registrationTime, deriver, ultimate FROM ValidPaths
                  WHERE path = ?1",
                [path],
                row_from,
            )
            .optional()
            .map_err(|e| self.read_err(e))
    }

    fn query(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<ValidPathRow>, NixDbError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(|e| self.read_err(e))?;
        stmt.query_map(args, row_from)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.read_err(e))
    }
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<ValidPathRow> {
    Ok(ValidPathRow {
        id: r.get(0)?,
        path: r.get(1)?,
        registration_time: r.get(2)?,
        deriver: r.get::<_, Option<String>>(3)?.filter(|d| !d.is_empty()),
        // NULL means false.
        ultimate: r.get::<_, Option<i64>>(4)?.unwrap_or(0) != 0,
    })
}

#[cfg(test)]
mod tests;
