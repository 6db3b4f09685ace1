//! Turning requests into jobs: the expander claims due requests and, once
//! the store has said which paths each stands for, writes their jobs.
//!
//! Both steps take a batch: during a burst of builds one transaction (one
//! disk sync) claims or expands every request that has arrived, instead of
//! two per request. Those syncs hold the write lock that the hook's commits
//! wait for, so fewer of them is what keeps the hook fast while builds run.

use rusqlite::{Transaction, params};

use crate::error::Context;
use crate::requests::{REQUEST_COLUMNS, Request, request_from_row};
use crate::{Queue, QueueError};

/// What one request expands into: its id, and its paths (store path
/// basenames) in upload order, references first.
pub type Expansion = (i64, Vec<String>);

impl Queue {
    /// Takes the oldest (lowest id) request in state `new` whose
    /// `next_attempt_at` has come, counting the attempt.
    ///
    /// The request stays `new`: expansion is idempotent, so a daemon that dies
    /// before [`expand_request`](Self::expand_request) or
    /// [`defer_request`](Self::defer_request) simply gets it again. For the
    /// same reason a second call before either of those returns the same
    /// request again; run one expander.
    pub fn claim_request(&mut self, now: i64) -> Result<Option<Request>, QueueError> {
        Ok(self.claim_requests(now, 1)?.pop())
    }

    /// Like [`claim_request`](Self::claim_request) for up to `limit` due
    /// requests at once, oldest first, in one transaction.
    pub fn claim_requests(&mut self, now: i64, limit: usize) -> Result<Vec<Request>, QueueError> {
        const OP: &str = "claiming requests";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let tx = self.write(OP)?;
        let mut requests = tx
            .prepare_cached(&format!(
                "UPDATE requests SET attempts = attempts + 1
                 WHERE id IN (SELECT id FROM requests
                              WHERE state = 'new' AND next_attempt_at <= ?1
                              ORDER BY id LIMIT ?2)
                 RETURNING {REQUEST_COLUMNS}"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![now, limit], request_from_row)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(OP)?;
        tx.commit().context(OP)?;
        // RETURNING gives no order guarantee; jobs are claimed by request
        // id, and callers expect the oldest first too.
        requests.sort_by_key(|r| r.id);
        Ok(requests)
    }

    /// Turns request `id` into one `pending` job per (path, target), in one
    /// transaction that also marks the request `expanded`: either all of it
    /// happens or none of it does. `paths` are store path basenames in
    /// upload order (references first); jobs are claimed in that order.
    ///
    /// A job that already exists for a (path, target) is left as it is,
    /// whatever its state, so a path is uploaded to a target once however
    /// many builds produce it. The one exception: if this request is older
    /// than the one the job is recorded under, the job moves to this request,
    /// so that `nix-outbox wait` for this request waits for it too.
    ///
    /// Returns the number of jobs created. Calling it again for an expanded
    /// request is allowed and creates only what is missing.
    pub fn expand_request(
        &mut self,
        id: i64,
        paths: &[String],
        targets: &[String],
        now: i64,
    ) -> Result<usize, QueueError> {
        self.expand_all([(id, paths)], targets, now)
    }

    /// [`expand_request`](Self::expand_request) for several requests in one
    /// transaction: all of them are expanded, or (on any error, such as a
    /// request that does not exist) none is, and the caller may expand them
    /// one by one to find which one fails.
    pub fn expand_requests(
        &mut self,
        expansions: &[Expansion],
        targets: &[String],
        now: i64,
    ) -> Result<usize, QueueError> {
        let items = expansions.iter().map(|(id, paths)| (*id, paths.as_slice()));
        self.expand_all(items, targets, now)
    }

    /// Expands `(id, paths)` items in one transaction.
    fn expand_all<'a>(
        &mut self,
        items: impl IntoIterator<Item = (i64, &'a [String])>,
        targets: &[String],
        now: i64,
    ) -> Result<usize, QueueError> {
        const OP: &str = "expanding requests into jobs";
        let tx = self.write(OP)?;
        let mut created = 0;
        for (id, paths) in items {
            created += expand_in(&tx, id, paths, targets, now)?;
        }
        tx.commit().context(OP)?;
        Ok(created)
    }
}

/// The body of [`Queue::expand_request`], inside the caller's transaction
/// (returning early drops it, which rolls back every job inserted so far).
fn expand_in(
    tx: &Transaction<'_>,
    id: i64,
    paths: &[String],
    targets: &[String],
    now: i64,
) -> Result<usize, QueueError> {
    const OP: &str = "expanding a request into jobs";
    let exists = tx
        .prepare_cached("SELECT 1 FROM requests WHERE id = ?1")
        .and_then(|mut stmt| stmt.exists([id]))
        .context(OP)?;
    if !exists {
        return Err(QueueError::NoSuchRequest(id));
    }
    // Continue after jobs of an earlier expansion of the same request.
    let mut seq: i64 = tx
        .prepare_cached("SELECT IFNULL(MAX(seq) + 1, 0) FROM jobs WHERE request_id = ?1")
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)))
        .context(OP)?;

    let mut created = 0;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO jobs (path, target, state, attempts, next_attempt_at,
                               request_id, seq, enqueued_at, updated_at)
             VALUES (?1, ?2, 'pending', 0, ?3, ?4, ?5, ?3, ?3)
             ON CONFLICT (path, target) DO NOTHING",
        )
        .context(OP)?;
    // A path skipped because it was gone from the store (GC'd before its
    // upload) and now built again must go out after all: the job starts
    // afresh, owned by this request.
    let mut revive = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'pending', attempts = 0, last_error = NULL,
                             next_attempt_at = ?5, request_id = ?3, seq = ?4,
                             updated_at = ?5
             WHERE path = ?1 AND target = ?2 AND state = 'skipped'",
        )
        .context(OP)?;
    let mut adopt = tx
        .prepare_cached(
            "UPDATE jobs SET request_id = ?3, seq = ?4
             WHERE path = ?1 AND target = ?2 AND request_id > ?3",
        )
        .context(OP)?;
    for path in paths {
        for target in targets {
            let invalid = |source: rusqlite::Error| match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => QueueError::InvalidJob {
                    path: path.clone(),
                    target: target.clone(),
                    reason: source.to_string(),
                },
                _ => QueueError::Db { op: OP, source },
            };
            let changed = match insert.execute(params![path, target, now, id, seq]) {
                Ok(0) => match revive
                    .execute(params![path, target, id, seq, now])
                    .map_err(invalid)?
                {
                    0 => adopt
                        .execute(params![path, target, id, seq])
                        .map_err(invalid)?,
                    n => n,
                },
                Ok(n) => {
                    created += n;
                    n
                }
                Err(source) => return Err(invalid(source)),
            };
            seq += i64::from(changed > 0);
        }
    }
    tx.prepare_cached("UPDATE requests SET state = 'expanded' WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([id]))
        .context(OP)?;
    Ok(created)
}
