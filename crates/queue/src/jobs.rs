//! Jobs: one per (store path, target), claimed by upload workers.
//!
//! States: `pending` -> `in_flight` (claim) -> `done` | `skipped` | back to
//! `pending` (retry). There is no failed state: a job that keeps failing
//! keeps being retried on the caller's backoff and stays visible in
//! `status` with its last error, so no accepted path is ever silently
//! dropped.

use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::error::Context;
use crate::{Queue, QueueError};

text_enum! {
    /// Where a job is in its life.
    pub enum JobState {
        /// Waiting to be claimed once `next_attempt_at` has come.
        Pending = "pending",
        /// Claimed by a worker; back to pending by `recover` after a crash.
        InFlight = "in_flight",
        /// Uploaded.
        Done = "done",
        /// Given up on for a reason that makes uploading moot (the path was
        /// garbage-collected before it could be uploaded, say).
        Skipped = "skipped",
    }
}

/// One upload of one store path to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Store path basename, `<hash>-<name>`.
    pub path: String,
    /// The target's URL, as configured.
    pub target: String,
    pub state: JobState,
    /// How many times the job was claimed.
    pub attempts: u32,
    /// The error of the last failed attempt, or the reason for a skip.
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    /// The oldest request known to need this job.
    pub request_id: i64,
    pub enqueued_at: i64,
    pub updated_at: i64,
}

pub(crate) const JOB_COLUMNS: &str = "path, target, state, attempts, last_error, \
     next_attempt_at, request_id, enqueued_at, updated_at";

pub(crate) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        path: row.get(0)?,
        target: row.get(1)?,
        state: row.get(2)?,
        attempts: row.get(3)?,
        last_error: row.get(4)?,
        next_attempt_at: row.get(5)?,
        request_id: row.get(6)?,
        enqueued_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

impl Queue {
    /// Takes the next due job: `pending` with `next_attempt_at <= now`, the
    /// oldest request's first, and within a request in the order its paths
    /// were given to [`expand_request`](Self::expand_request). The job
    /// becomes `in_flight` with one more attempt.
    ///
    /// Safe to call from several threads or processes, each with its own
    /// handle: the write lock is taken before the job is chosen, so no two
    /// callers get the same job.
    pub fn claim_job(&mut self, now: i64) -> Result<Option<Job>, QueueError> {
        const OP: &str = "claiming a job";
        let tx = self.write(OP)?;
        // Walking jobs_claim in claim order stops at the first due job, so a
        // claim costs about the number of backed-off jobs ahead of it, not
        // the size of the backlog. INDEXED BY pins that plan: SQLite could
        // otherwise pick jobs_due and sort every due job to find the first.
        let job = tx
            .prepare_cached(&format!(
                "UPDATE jobs SET state = 'in_flight', attempts = attempts + 1, updated_at = ?1
                 WHERE rowid = (SELECT rowid FROM jobs INDEXED BY jobs_claim
                                WHERE state = 'pending' AND next_attempt_at <= ?1
                                ORDER BY request_id, seq LIMIT 1)
                 RETURNING {JOB_COLUMNS}"
            ))
            .and_then(|mut stmt| stmt.query_row([now], job_from_row).optional())
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(job)
    }

    /// Marks a claimed job uploaded, clearing the error of earlier attempts.
    pub fn finish_job(&mut self, path: &str, target: &str, now: i64) -> Result<(), QueueError> {
        self.settle(
            "finishing a job",
            path,
            target,
            "state = 'done', last_error = NULL, updated_at = ?3",
            params![path, target, now],
        )
    }

    /// Marks a claimed job as not to be uploaded, keeping `reason` as its
    /// `last_error` (for instance: the path was garbage-collected first).
    pub fn skip_job(
        &mut self,
        path: &str,
        target: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), QueueError> {
        self.settle(
            "skipping a job",
            path,
            target,
            "state = 'skipped', last_error = ?4, updated_at = ?3",
            params![path, target, now, reason],
        )
    }

    /// Puts a claimed job back to `pending` after a failed attempt, with the
    /// error and the time of the next attempt (the caller's backoff).
    pub fn retry_job(
        &mut self,
        path: &str,
        target: &str,
        error: &str,
        next_attempt_at: i64,
        now: i64,
    ) -> Result<(), QueueError> {
        self.settle(
            "rescheduling a job",
            path,
            target,
            "state = 'pending', last_error = ?4, next_attempt_at = ?5, updated_at = ?3",
            params![path, target, now, error, next_attempt_at],
        )
    }

    /// Applies `set` to the job (`?1` path, `?2` target) if it is in flight,
    /// and otherwise says why not.
    fn settle(
        &mut self,
        op: &'static str,
        path: &str,
        target: &str,
        set: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<(), QueueError> {
        let tx = self.write(op)?;
        let changed = tx
            .prepare_cached(&format!(
                "UPDATE jobs SET {set} WHERE path = ?1 AND target = ?2 AND state = 'in_flight'"
            ))
            .and_then(|mut stmt| stmt.execute(params))
            .context(op)?;
        if changed == 0 {
            return Err(not_in_flight(&tx, op, path, target)?);
        }
        tx.commit().context(op)
    }

    /// Puts every `in_flight` job back to `pending`; returns how many.
    ///
    /// For daemon start: an `in_flight` job then belongs to a daemon that
    /// died mid-upload. Attempts and errors are kept; a job without an error
    /// gets one saying its attempt was interrupted, so `status` shows it.
    /// Only the process that owns the queue (the one daemon) may call this:
    /// it cannot tell a dead claimer from a live one.
    pub fn recover(&mut self, now: i64) -> Result<usize, QueueError> {
        const OP: &str = "recovering interrupted jobs";
        let tx = self.write(OP)?;
        let count = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'pending', updated_at = ?1,
                     last_error = CASE WHEN IFNULL(last_error, '') = ''
                         THEN 'attempt ' || attempts
                              || ' was interrupted (nix-outbox stopped during the upload)'
                         ELSE last_error END
                 WHERE state = 'in_flight'",
            )
            .and_then(|mut stmt| stmt.execute([now]))
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(count)
    }

    /// Makes waiting work due at `now`: pending jobs whose next attempt is
    /// later (after a person fixed what they failed on, a retry need not
    /// wait out the backoff) and, without a path filter, deferred requests.
    /// `target`: only that target's jobs; `paths` (basenames): only those;
    /// empty: all. Returns how many jobs became due.
    pub fn retry_now(
        &mut self,
        target: Option<&str>,
        paths: &[String],
        now: i64,
    ) -> Result<usize, QueueError> {
        const OP: &str = "making waiting jobs due now";
        let tx = self.write(OP)?;
        let mut count = 0;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE jobs SET next_attempt_at = ?1
                     WHERE state = 'pending' AND next_attempt_at > ?1
                       AND (?2 IS NULL OR target = ?2) AND (?3 IS NULL OR path = ?3)",
                )
                .context(OP)?;
            if paths.is_empty() {
                count += stmt
                    .execute(params![now, target, None::<&str>])
                    .context(OP)?;
            }
            for path in paths {
                count += stmt.execute(params![now, target, path]).context(OP)?;
            }
        }
        if paths.is_empty() {
            tx.prepare_cached(
                "UPDATE requests SET next_attempt_at = ?1
                 WHERE state = 'new' AND next_attempt_at > ?1",
            )
            .and_then(|mut stmt| stmt.execute([now]))
            .context(OP)?;
        }
        tx.commit().context(OP)?;
        Ok(count)
    }

    /// The job for (`path`, `target`), if there is one.
    pub fn job(&self, path: &str, target: &str) -> Result<Option<Job>, QueueError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE path = ?1 AND target = ?2"
            ))
            .and_then(|mut stmt| stmt.query_row([path, target], job_from_row).optional())
            .context("reading a job")
    }

    /// Every job, in claim order (oldest request first). Meant for tests and
    /// debugging: it reads the whole table.
    pub fn jobs(&self) -> Result<Vec<Job>, QueueError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs ORDER BY request_id, seq"
            ))
            .and_then(|mut stmt| stmt.query_map([], job_from_row)?.collect())
            .context("listing jobs")
    }
}

/// The error for a job that could not be settled: missing or not in flight.
fn not_in_flight(
    tx: &Transaction<'_>,
    op: &'static str,
    path: &str,
    target: &str,
) -> Result<QueueError, QueueError> {
    let state = tx
        .prepare_cached("SELECT state FROM jobs WHERE path = ?1 AND target = ?2")
        .and_then(|mut stmt| stmt.query_row([path, target], |row| row.get(0)).optional())
        .context(op)?;
    Ok(match state {
        Some(state) => QueueError::JobNotInFlight {
            path: path.to_owned(),
            target: target.to_owned(),
            state,
        },
        None => QueueError::NoSuchJob {
            path: path.to_owned(),
            target: target.to_owned(),
        },
    })
}
