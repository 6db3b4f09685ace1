//! Read-only views: when to wake up, `nix-outbox status`, `nix-outbox wait`.

use rusqlite::{OptionalExtension, params};

use crate::error::Context;
use crate::jobs::{JOB_COLUMNS, job_from_row};
use crate::requests::{REQUEST_COLUMNS, request_from_row};
use crate::{Job, Queue, QueueError, Request};

/// A summary of the whole queue, for `nix-outbox status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// One entry per target that has jobs, sorted by target.
    pub targets: Vec<TargetStatus>,
    /// Requests not yet expanded into jobs.
    pub new_requests: u64,
    /// When the oldest of those was received.
    pub oldest_new_request_at: Option<i64>,
    /// The oldest unexpanded request whose expansion failed, with its error.
    pub failing_request: Option<Request>,
}

/// Job counts of one target. Every job is in exactly one count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub target: String,
    /// Pending, never failed.
    pub never_tried: u64,
    /// Pending after a failed (or interrupted) attempt: they have a `last_error`.
    pub failing: u64,
    pub in_flight: u64,
    pub done: u64,
    pub skipped: u64,
    /// The most recently failed of the `failing` jobs, newest first, at most
    /// as many as asked for.
    pub recent_failures: Vec<Job>,
}

impl TargetStatus {
    /// Jobs still to upload: pending (both kinds) and in flight.
    pub fn outstanding(&self) -> u64 {
        self.never_tried + self.failing + self.in_flight
    }
}

/// What a `nix-outbox wait` is still waiting for: everything that requests up
/// to some id need and that is not uploaded (or skipped) yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outstanding {
    pub upto_request_id: i64,
    /// Requests up to the id not yet expanded (their jobs are not known yet).
    pub new_requests: u64,
    /// Their jobs still `pending`...
    pub pending_jobs: u64,
    /// ...of which this many after a failed attempt...
    pub failing_jobs: u64,
    /// ...and those being uploaded now.
    pub in_flight_jobs: u64,
    /// The first of the new requests, oldest first, at most as many as asked for.
    pub requests: Vec<Request>,
    /// The first of the outstanding jobs in claim order, at most as many as
    /// asked for.
    pub jobs: Vec<Job>,
    /// Jobs of those requests settled as `skipped` (left out on purpose or
    /// no longer in the store): not outstanding, but not uploaded either.
    pub skipped_jobs: u64,
    /// The first of them in claim order (with the reason as `last_error`),
    /// at most as many as asked for.
    pub skipped: Vec<Job>,
}

impl Outstanding {
    /// Whether everything the requests need is uploaded or skipped.
    pub fn is_empty(&self) -> bool {
        self.new_requests == 0 && self.pending_jobs == 0 && self.in_flight_jobs == 0
    }
}

impl Queue {
    /// The earliest `next_attempt_at` of any `pending` job or `new` request:
    /// the daemon has nothing to do before then (unless something new
    /// arrives). `None` when there is nothing waiting at all. The time may be
    /// in the past, meaning work is due now.
    pub fn next_wakeup(&self) -> Result<Option<i64>, QueueError> {
        self.conn
            .prepare_cached(
                "SELECT MIN(t) FROM (
                     SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = 'pending'
                     UNION ALL
                     SELECT MIN(next_attempt_at) FROM requests WHERE state = 'new')",
            )
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .context("finding the next wakeup time")
    }

    /// Counts per target and per state, with up to `recent_failures` of the
    /// latest failing jobs of each target, and the unexpanded requests.
    /// Reads the whole jobs table; meant for the CLI, not for a hot loop.
    pub fn status(&self, recent_failures: usize) -> Result<Status, QueueError> {
        const OP: &str = "reading the queue status";
        let tx = self.read(OP)?;
        let mut targets: Vec<TargetStatus> = tx
            .prepare_cached(
                "SELECT target,
                        SUM(state = 'pending' AND last_error IS NULL),
                        SUM(state = 'pending' AND last_error IS NOT NULL),
                        SUM(state = 'in_flight'),
                        SUM(state = 'done'),
                        SUM(state = 'skipped')
                 FROM jobs GROUP BY target ORDER BY target",
            )
            .and_then(|mut stmt| {
                stmt.query_map([], |row| {
                    Ok(TargetStatus {
                        target: row.get(0)?,
                        never_tried: row.get(1)?,
                        failing: row.get(2)?,
                        in_flight: row.get(3)?,
                        done: row.get(4)?,
                        skipped: row.get(5)?,
                        recent_failures: Vec::new(),
                    })
                })?
                .collect()
            })
            .context(OP)?;

        if recent_failures > 0 {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs
                     WHERE target = ?1 AND state = 'pending' AND last_error IS NOT NULL
                     ORDER BY updated_at DESC, rowid DESC LIMIT ?2"
                ))
                .context(OP)?;
            for target in targets.iter_mut().filter(|t| t.failing > 0) {
                target.recent_failures = stmt
                    .query_map(params![target.target, recent_failures], job_from_row)
                    .and_then(Iterator::collect)
                    .context(OP)?;
            }
        }

        let (new_requests, oldest_new_request_at) = tx
            .prepare_cached("SELECT count(*), MIN(received_at) FROM requests WHERE state = 'new'")
            .and_then(|mut stmt| stmt.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
            .context(OP)?;
        let failing_request = tx
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests
                 WHERE state = 'new' AND last_error IS NOT NULL ORDER BY id LIMIT 1"
            ))
            .and_then(|mut stmt| stmt.query_row([], request_from_row).optional())
            .context(OP)?;

        Ok(Status {
            targets,
            new_requests,
            oldest_new_request_at,
            failing_request,
        })
    }

    /// Job counts per target for the states a queue-depth gauge shows:
    /// `pending` (never tried), `failing` (pending after a failure) and
    /// `in_flight`. Only those states' rows are read (through the state
    /// index), never the history of `done` or `skipped` jobs (settled, and
    /// growing for ever: the workers' outcome counter counts skips), so a
    /// scrape costs what the backlog is, not how long the daemon has run.
    pub fn depth(&self) -> Result<Vec<(String, &'static str, u64)>, QueueError> {
        const OP: &str = "reading the queue depth";
        let tx = self.read(OP)?;
        tx.prepare_cached(
            "SELECT target, state, last_error IS NOT NULL, count(*) FROM jobs
             WHERE state IN ('pending', 'in_flight')
             GROUP BY target, state, last_error IS NOT NULL ORDER BY target",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |row| {
                let state: String = row.get(1)?;
                let failed: bool = row.get(2)?;
                let state = match (state.as_str(), failed) {
                    ("pending", false) => "pending",
                    ("pending", true) => "failing",
                    _ => "in_flight",
                };
                Ok((row.get(0)?, state, row.get(3)?))
            })?
            .collect::<Result<Vec<(String, &'static str, u64)>, _>>()
        })
        .map(|rows| {
            // in_flight rows come split by last_error: merge.
            let mut out: Vec<(String, &'static str, u64)> = Vec::new();
            for (t, s, n) in rows {
                match out.iter_mut().find(|(ot, os, _)| *ot == t && *os == s) {
                    Some(e) => e.2 += n,
                    None => out.push((t, s, n)),
                }
            }
            out
        })
        .context(OP)
    }

    /// Jobs per target that finished (`done`) at or after `since` (unix
    /// seconds), for `nix-outbox status`'s "done in the last hour".
    pub fn done_since(&self, since: i64) -> Result<Vec<(String, u64)>, QueueError> {
        const OP: &str = "counting recently uploaded jobs";
        let tx = self.read(OP)?;
        tx.prepare_cached(
            "SELECT target, count(*) FROM jobs
             WHERE state = 'done' AND updated_at >= ?1 GROUP BY target ORDER BY target",
        )
        .and_then(|mut stmt| {
            stmt.query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .context(OP)
    }

    /// Requests received since `since` (unix seconds), counted by source,
    /// in the sources' text order.
    pub fn requests_by_source(&self, since: i64) -> Result<Vec<(crate::Source, u64)>, QueueError> {
        const OP: &str = "counting recent requests by source";
        let tx = self.read(OP)?;
        tx.prepare_cached(
            "SELECT source, count(*) FROM requests
             WHERE received_at >= ?1 GROUP BY source ORDER BY source",
        )
        .and_then(|mut stmt| {
            stmt.query_map([since], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .context(OP)
    }

    /// What requests with id `<= upto_request_id` still wait for: those not
    /// yet expanded, and their jobs neither `done` nor `skipped`; and which
    /// of their jobs were `skipped`, so nobody reports those as uploaded.
    /// Counts are complete; the lists hold at most `limit` entries each,
    /// so a `wait` that polls this stays cheap however large the backlog.
    pub fn outstanding(
        &self,
        upto_request_id: i64,
        limit: usize,
    ) -> Result<Outstanding, QueueError> {
        const OP: &str = "reading outstanding work";
        let tx = self.read(OP)?;
        let new_requests = tx
            .prepare_cached("SELECT count(*) FROM requests WHERE state = 'new' AND id <= ?1")
            .and_then(|mut stmt| stmt.query_row([upto_request_id], |row| row.get(0)))
            .context(OP)?;
        let requests = tx
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests
                 WHERE state = 'new' AND id <= ?1 ORDER BY id LIMIT ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![upto_request_id, limit], request_from_row)?
                    .collect()
            })
            .context(OP)?;
        // Through the claim index: only unfinished jobs are read, however many
        // finished ones the requests' history holds.
        let (pending_jobs, failing_jobs, in_flight_jobs) = tx
            .prepare_cached(
                "SELECT IFNULL(SUM(state = 'pending'), 0),
                        IFNULL(SUM(state = 'pending' AND last_error IS NOT NULL), 0),
                        IFNULL(SUM(state = 'in_flight'), 0)
                 FROM jobs INDEXED BY jobs_claim
                 WHERE state IN ('pending', 'in_flight') AND request_id <= ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([upto_request_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
            })
            .context(OP)?;
        let jobs = tx
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_claim
                 WHERE state IN ('pending', 'in_flight') AND request_id <= ?1
                 ORDER BY request_id, seq LIMIT ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![upto_request_id, limit], job_from_row)?
                    .collect()
            })
            .context(OP)?;

        let skipped_jobs = tx
            .prepare_cached(
                "SELECT count(*) FROM jobs INDEXED BY jobs_claim
                 WHERE state = 'skipped' AND request_id <= ?1",
            )
            .and_then(|mut stmt| stmt.query_row([upto_request_id], |row| row.get(0)))
            .context(OP)?;
        let skipped = tx
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_claim
                 WHERE state = 'skipped' AND request_id <= ?1
                 ORDER BY request_id, seq LIMIT ?2"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![upto_request_id, limit], job_from_row)?
                    .collect()
            })
            .context(OP)?;

        Ok(Outstanding {
            upto_request_id,
            new_requests,
            pending_jobs,
            failing_jobs,
            in_flight_jobs,
            requests,
            jobs,
            skipped_jobs,
            skipped,
        })
    }
}
