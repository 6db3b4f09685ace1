//! The cursor over Nix's own database of valid paths (the daemon's `nix-db`
//! source): the highest `ValidPaths.id` looked at. It moves in the same
//! transaction that adds the requests for the rows it passed, so a crash
//! at any point neither loses a row (the cursor never passes an uncommitted
//! request) nor queues one twice (a committed request always has the
//! cursor past it).

use rusqlite::{OptionalExtension as _, params};

use crate::error::Context;
use crate::requests::{insert_requests, validated};
use crate::{Queue, QueueError, Source};

/// Where the `nix-db` source stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixDbCursor {
    /// Nix's database file the cursor belongs to.
    pub db_path: String,
    /// The highest `ValidPaths.id` looked at.
    pub last_id: i64,
    /// When it last moved (unix seconds).
    pub moved_at: i64,
}

impl Queue {
    /// The cursor, if the `nix-db` source ever ran.
    pub fn nix_db_cursor(&self) -> Result<Option<NixDbCursor>, QueueError> {
        const OP: &str = "reading the nix-db cursor";
        self.conn
            .query_row(
                "SELECT db_path, last_id, moved_at FROM nix_db_cursor WHERE only_row = 0",
                [],
                |row| {
                    Ok(NixDbCursor {
                        db_path: row.get(0)?,
                        last_id: row.get(1)?,
                        moved_at: row.get(2)?,
                    })
                },
            )
            .optional()
            .context(OP)
    }

    /// Adds `requests` (source `nix-db`) and moves the cursor to `to` in
    /// `db_path`, in one transaction, provided the cursor is still `from`
    /// (database and id; `None`: not set): two daemons sharing a queue must
    /// not both move it. Returns each
    /// request's id or why it was refused (invalid requests are skipped;
    /// the cursor moves past them all the same, since reading them again
    /// would refuse them again).
    pub fn add_nix_db_requests(
        &mut self,
        db_path: &str,
        from: Option<(&str, i64)>,
        to: i64,
        requests: &[(Option<String>, Vec<String>)],
        now: i64,
    ) -> Result<Vec<Result<i64, QueueError>>, QueueError> {
        const OP: &str = "adding requests from Nix's database";
        let mut results = validated(requests);
        let tx = self.write(OP)?;
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT db_path, last_id FROM nix_db_cursor WHERE only_row = 0",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .context(OP)?;
        let expected = from.map(|(db, id)| (db.to_owned(), id));
        if current != expected {
            return Err(QueueError::CursorMoved {
                expected: from.map(|(_, id)| id),
                found: current.map(|(_, id)| id),
            });
        }
        insert_requests(&tx, Source::NixDb, requests, &mut results, now)?;
        tx.execute(
            "INSERT INTO nix_db_cursor (only_row, db_path, last_id, moved_at)
             VALUES (0, ?1, ?2, ?3)
             ON CONFLICT (only_row) DO UPDATE
                SET db_path = excluded.db_path, last_id = excluded.last_id,
                    moved_at = excluded.moved_at",
            params![db_path, to, now],
        )
        .context(OP)?;
        tx.commit().context(OP)?;
        Ok(results)
    }
}
