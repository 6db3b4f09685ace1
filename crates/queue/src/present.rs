//! The known-present cache: which paths a target was recently seen to hold
//! (its narinfo existed, or we just wrote it), so the daemon can skip asking
//! the target again. Asking costs a round trip per path, which dominates
//! uploads of large closures that are mostly there already.
//!
//! Only an optimisation, never a record of accepted work: an entry is
//! trusted for a caller-chosen TTL (someone may delete things from a cache),
//! and losing entries only costs extra existence checks. Entries are
//! "fresh" while `now - ttl < checked_at <= now`; one from the future (the
//! clock was set back) is not trusted, since not asking is the risky side.

use std::collections::HashSet;

use rusqlite::{ToSql, params};

use crate::error::Context;
use crate::{Queue, QueueError};

/// The most paths one `known_present` statement asks about. Keeps each
/// statement small and cacheable, far below SQLite's limit on parameters.
pub const PRESENT_CHUNK: usize = 500;

/// The oldest `checked_at` that is still fresh, plus one; saturating so a
/// huge TTL means "forever", not an overflow.
fn stale_at_or_before(now: i64, ttl_secs: i64) -> i64 {
    now.saturating_sub(ttl_secs.max(0))
}

impl Queue {
    /// Records that `target` holds each of `paths`, as checked at `now`, in
    /// one transaction. An existing entry keeps the later of its time and
    /// `now`, so a late, batched write never makes an entry look older.
    pub fn mark_present(
        &mut self,
        target: &str,
        paths: &[String],
        now: i64,
    ) -> Result<(), QueueError> {
        if paths.is_empty() {
            return Ok(());
        }
        const OP: &str = "recording paths present in a target";
        let tx = self.write(OP)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO present (target, path, checked_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (target, path)
                     DO UPDATE SET checked_at = MAX(checked_at, excluded.checked_at)",
                )
                .context(OP)?;
            // A path the target holds is no longer one it skipped
            // (src/skipped.rs).
            let mut unskip = tx
                .prepare_cached("DELETE FROM skipped WHERE target = ?1 AND hash_part = ?2")
                .context(OP)?;
            for path in paths {
                unskip.execute(params![target, path]).context(OP)?;
                // Returning early drops `tx`: the batch is all or nothing.
                upsert
                    .execute(params![target, path, now])
                    .map_err(|source| match source.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::ConstraintViolation) => {
                            QueueError::InvalidPresent {
                                path: path.clone(),
                                target: target.to_owned(),
                                reason: source.to_string(),
                            }
                        }
                        _ => QueueError::Db { op: OP, source },
                    })?;
            }
        }
        tx.commit().context(OP)
    }

    /// Which of `paths` `target` is known to hold with an entry younger than
    /// `ttl_secs`. One query per [`PRESENT_CHUNK`] paths, all in one read
    /// transaction (one consistent snapshot, never waiting for the writer).
    pub fn known_present(
        &self,
        target: &str,
        paths: &[String],
        now: i64,
        ttl_secs: i64,
    ) -> Result<HashSet<String>, QueueError> {
        const OP: &str = "looking up paths known present in a target";
        let mut found = HashSet::new();
        if paths.is_empty() {
            return Ok(found);
        }
        let oldest = stale_at_or_before(now, ttl_secs);
        let tx = self.read(OP)?;
        for chunk in paths.chunks(PRESENT_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            // Full chunks share one text, so the cache keeps one statement
            // for them plus one for the last, shorter chunk.
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT path FROM present
                     WHERE target = ?1 AND checked_at > ?2 AND checked_at <= ?3
                       AND path IN ({placeholders})"
                ))
                .context(OP)?;
            let mut values: Vec<&dyn ToSql> = Vec::with_capacity(chunk.len() + 3);
            values.extend([&target as &dyn ToSql, &oldest, &now]);
            values.extend(chunk.iter().map(|p| p as &dyn ToSql));
            let rows = stmt
                .query_map(&values[..], |row| row.get::<_, String>(0))
                .context(OP)?;
            for row in rows {
                found.insert(row.context(OP)?);
            }
        }
        Ok(found)
    }

    /// Every fresh entry of `target` with its `checked_at`, for a caller
    /// that keeps the set in memory. Fresh entries are those of the last
    /// TTL only, so this stays small however long the cache's history.
    pub fn present_entries(
        &self,
        target: &str,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Vec<(String, i64)>, QueueError> {
        self.conn
            .prepare_cached(
                "SELECT path, checked_at FROM present
                 WHERE target = ?1 AND checked_at > ?2 AND checked_at <= ?3",
            )
            .and_then(|mut stmt| {
                stmt.query_map(
                    params![target, stale_at_or_before(now, ttl_secs), now],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?
                .collect()
            })
            .context("listing paths known present in a target")
    }

    /// Forgets everything known about `target` (its cache was wiped or
    /// replaced, say); returns how many entries went.
    pub fn forget_present(&mut self, target: &str) -> Result<usize, QueueError> {
        const OP: &str = "forgetting paths known present in a target";
        let tx = self.write(OP)?;
        let count = tx
            .prepare_cached("DELETE FROM present WHERE target = ?1")
            .and_then(|mut stmt| stmt.execute([target]))
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(count)
    }

    /// Deletes the entries of `target` that are no longer fresh; returns how
    /// many. Without this the table would keep a row per path ever seen.
    pub fn prune_present(
        &mut self,
        target: &str,
        now: i64,
        ttl_secs: i64,
    ) -> Result<usize, QueueError> {
        const OP: &str = "pruning stale paths known present in a target";
        let tx = self.write(OP)?;
        let count = tx
            .prepare_cached(
                "DELETE FROM present
                 WHERE target = ?1 AND (checked_at <= ?2 OR checked_at > ?3)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![target, stale_at_or_before(now, ttl_secs), now])
            })
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(count)
    }
}
