//! Paths left out of uploads on purpose: served by an upstream cache
//! (signed by an upstream key, or its narinfo found there) or filtered out
//! by name. A closure path has no job of its own, so this is where
//! `status` learns how many were skipped and why.
//!
//! A record of decisions, not of accepted work: an entry is replaced by a
//! later decision for the same path, and deleted when the target is seen
//! to hold the path after all ([`Queue::mark_present`], e.g. once the
//! filters changed and a later closure uploaded it). Every closure upload
//! that meets a skipped path decides again (and refreshes `skipped_at`),
//! so entries not refreshed for [`SKIPPED_KEEP_SECS`] describe closures
//! nobody uploads any more and are pruned ([`Queue::prune_skipped`]):
//! without that the table would keep a row per path ever skipped.

use rusqlite::params;

use crate::error::Context;
use crate::{Queue, QueueError};

/// How long a skip decision counts in `status` without being made again:
/// 30 days.
pub const SKIPPED_KEEP_SECS: i64 = 30 * 24 * 3600;

/// One path left out of a target's uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPath {
    /// Store path basename, `<hash>-<name>`.
    pub path: String,
    /// `upstream-key`, `upstream-cache`, `excluded` or `not-included`.
    pub reason: String,
    /// The key name, upstream URL or pattern responsible (may be empty).
    pub detail: String,
}

/// How many paths of a target were skipped for one (reason, detail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipCount {
    pub reason: String,
    pub detail: String,
    pub paths: u64,
}

impl Queue {
    /// Records that `paths` were left out of uploads to `target`, in one
    /// transaction.
    pub fn mark_skipped(
        &mut self,
        target: &str,
        paths: &[SkippedPath],
        now: i64,
    ) -> Result<(), QueueError> {
        if paths.is_empty() {
            return Ok(());
        }
        const OP: &str = "recording paths left out of uploads";
        let tx = self.write(OP)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO skipped (target, hash_part, path, reason, detail, skipped_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (target, hash_part) DO UPDATE SET
                         path = excluded.path, reason = excluded.reason,
                         detail = excluded.detail, skipped_at = excluded.skipped_at",
                )
                .context(OP)?;
            for p in paths {
                let hash_part = p.path.split_once('-').map_or(p.path.as_str(), |(h, _)| h);
                upsert
                    .execute(params![target, hash_part, p.path, p.reason, p.detail, now])
                    .map_err(|source| match source.sqlite_error_code() {
                        Some(rusqlite::ErrorCode::ConstraintViolation) => QueueError::InvalidSkip {
                            path: p.path.clone(),
                            target: target.to_owned(),
                            reason: format!("reason {:?}: {source}", p.reason),
                        },
                        _ => QueueError::Db { op: OP, source },
                    })?;
            }
        }
        tx.commit().context(OP)
    }

    /// Deletes the entries of `target` decided [`SKIPPED_KEEP_SECS`] or
    /// longer before `now`; returns how many.
    pub fn prune_skipped(&mut self, target: &str, now: i64) -> Result<usize, QueueError> {
        const OP: &str = "pruning old records of paths left out of uploads";
        let tx = self.write(OP)?;
        let count = tx
            .prepare_cached("DELETE FROM skipped WHERE target = ?1 AND skipped_at <= ?2")
            .and_then(|mut stmt| {
                stmt.execute(params![target, now.saturating_sub(SKIPPED_KEEP_SECS)])
            })
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(count)
    }

    /// Per target, how many paths are skipped for each (reason, detail),
    /// sorted by target, reason and detail.
    pub fn skip_counts(&self) -> Result<Vec<(String, SkipCount)>, QueueError> {
        self.conn
            .prepare_cached(
                "SELECT target, reason, detail, count(*) FROM skipped
                 GROUP BY target, reason, detail ORDER BY target, reason, detail",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok((
                        row.get(0)?,
                        SkipCount {
                            reason: row.get(1)?,
                            detail: row.get(2)?,
                            paths: row.get(3)?,
                        },
                    ))
                })?
                .collect()
            })
            .context("counting paths left out of uploads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(path: &str, reason: &str, detail: &str) -> SkippedPath {
        SkippedPath {
            path: path.into(),
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn counts_by_reason_replaced_and_cleared_by_presence() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        q.mark_skipped(
            "t",
            &[
                skip("aaaa-gcc", "upstream-key", "cache.nixos.org-1"),
                skip("bbbb-glibc", "upstream-key", "cache.nixos.org-1"),
                skip("cccc-x.drv", "excluded", "*.drv"),
            ],
            10,
        )
        .unwrap();
        q.mark_skipped("u", &[skip("aaaa-gcc", "excluded", "gcc*")], 10)
            .unwrap();
        // A later decision for the same path replaces the earlier one.
        q.mark_skipped(
            "t",
            &[skip("bbbb-glibc", "upstream-cache", "file:///up")],
            11,
        )
        .unwrap();
        let counts = q.skip_counts().unwrap();
        let t: Vec<(&str, &str, u64)> = counts
            .iter()
            .filter(|(t, _)| t == "t")
            .map(|(_, c)| (c.reason.as_str(), c.detail.as_str(), c.paths))
            .collect();
        assert_eq!(
            t,
            [
                ("excluded", "*.drv", 1),
                ("upstream-cache", "file:///up", 1),
                ("upstream-key", "cache.nixos.org-1", 1)
            ]
        );
        // Seen in the target after all: no longer skipped there (only there).
        q.mark_present("t", &["aaaa".into()], 12).unwrap();
        let counts = q.skip_counts().unwrap();
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(
            !counts
                .iter()
                .any(|(t, c)| t == "t" && c.reason == "upstream-key")
        );
        assert!(counts.iter().any(|(t, c)| t == "u" && c.detail == "gcc*"));
        // Decisions not made again for 30 days are pruned, per target;
        // a decision made again is kept.
        q.mark_skipped("t", &[skip("eeee-e", "excluded", "*.drv")], 100)
            .unwrap();
        let later = 11 + SKIPPED_KEEP_SECS;
        assert_eq!(q.prune_skipped("t", later).unwrap(), 2);
        let counts = q.skip_counts().unwrap();
        let left: Vec<(&str, &str)> = counts
            .iter()
            .map(|(t, c)| (t.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(left, [("t", "excluded"), ("u", "excluded")]);
        assert_eq!(q.prune_skipped("t", later).unwrap(), 0);
        // An unknown reason is refused, not stored.
        let err = q
            .mark_skipped("t", &[skip("dddd-d", "because", "")], 13)
            .unwrap_err();
        assert!(err.to_string().contains("because"), "{err}");
    }
}
