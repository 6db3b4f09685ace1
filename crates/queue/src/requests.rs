//! Requests: what the hook, the spool and `nix-outbox push` hand in, kept as
//! received until the daemon expands them into jobs.

use rusqlite::{OptionalExtension, Row, params};

use crate::error::Context;
use crate::{Queue, QueueError};

/// The longest path string a request may carry, in bytes. Far beyond any
/// real store path; it only stops a confused caller from filling the disk.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most output paths one request may carry. A derivation with more
/// outputs than this does not exist in practice.
pub const MAX_PATHS: usize = 4096;

text_enum! {
    /// Where a request came from.
    pub enum Source {
        /// The post-build hook, through the daemon's socket.
        Hook = "hook",
        /// A spool file the hook wrote while the daemon was unreachable.
        Spool = "spool",
        /// `nix-outbox push`.
        Push = "push",
        /// Nix's own database of valid paths (the `nix-db` source), or
        /// `nix-outbox backfill` over it.
        NixDb = "nix-db",
    }
}

text_enum! {
    /// Where a request is in its life.
    pub enum RequestState {
        /// Accepted, not yet turned into jobs.
        New = "new",
        /// Turned into jobs; nothing more to do with the request itself.
        Expanded = "expanded",
    }
}

/// One accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub received_at: i64,
    pub source: Source,
    /// The full store path of the derivation, when the hook got one.
    pub drv_path: Option<String>,
    /// Full store paths of the outputs; empty when Nix passed none (2.8.0).
    pub out_paths: Vec<String>,
    pub state: RequestState,
    /// How many times the request was claimed for expansion.
    pub attempts: u32,
    /// Why the last expansion failed, if one did.
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
}

pub(crate) const REQUEST_COLUMNS: &str =
    "id, received_at, source, drv_path, out_paths, state, attempts, last_error, next_attempt_at";

pub(crate) fn request_from_row(row: &Row<'_>) -> rusqlite::Result<Request> {
    let out_paths: String = row.get(4)?;
    Ok(Request {
        id: row.get(0)?,
        received_at: row.get(1)?,
        source: row.get(2)?,
        drv_path: row.get(3)?,
        out_paths: out_paths
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        state: row.get(5)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        next_attempt_at: row.get(8)?,
    })
}

/// The sanity checks of [`Queue::add_request`]: enough to store and read the
/// request back unchanged. Whether the strings are store paths is for the
/// caller to decide.
/// Each request checked: `Ok(0)` (its id comes when inserted) or why not.
pub(crate) fn validated(
    requests: &[(Option<String>, Vec<String>)],
) -> Vec<Result<i64, QueueError>> {
    requests
        .iter()
        .map(|(drv, outs)| validate_request(drv.as_deref(), outs).map(|()| 0))
        .collect()
}

/// Inserts the requests whose entry in `results` is `Ok` (already
/// validated), writing their ids there.
pub(crate) fn insert_requests(
    tx: &rusqlite::Transaction<'_>,
    source: Source,
    requests: &[(Option<String>, Vec<String>)],
    results: &mut [Result<i64, QueueError>],
    now: i64,
) -> Result<(), QueueError> {
    const OP: &str = "adding requests";
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO requests
                 (received_at, source, drv_path, out_paths, state, attempts, next_attempt_at)
             VALUES (?1, ?2, ?3, ?4, 'new', 0, ?1)
             RETURNING id",
        )
        .context(OP)?;
    for ((drv, outs), res) in requests.iter().zip(results) {
        if let Ok(id) = res {
            *id = stmt
                .query_row(params![now, source, drv, outs.join(" ")], |row| row.get(0))
                .context(OP)?;
        }
    }
    Ok(())
}

pub(crate) fn validate_request(
    drv_path: Option<&str>,
    out_paths: &[String],
) -> Result<(), QueueError> {
    let invalid = |msg: String| Err(QueueError::InvalidRequest(msg));
    if drv_path.is_none() && out_paths.is_empty() {
        return invalid("it names neither a derivation nor any output path".into());
    }
    if out_paths.len() > MAX_PATHS {
        return invalid(format!(
            "it names {} output paths, more than the limit of {MAX_PATHS}",
            out_paths.len()
        ));
    }
    for path in drv_path
        .into_iter()
        .chain(out_paths.iter().map(String::as_str))
    {
        if path.is_empty() {
            return invalid("it contains an empty path".into());
        }
        if path.len() > MAX_PATH_BYTES {
            let start: String = path.chars().take(80).collect();
            return invalid(format!(
                "path {start:?}… is {} bytes long, more than the limit of {MAX_PATH_BYTES}",
                path.len()
            ));
        }
        // Output paths are stored space-separated, and no store path contains
        // whitespace or control characters, so such a string is a caller bug.
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid(format!(
                "path {path:?} contains whitespace or a control character, which no store path does"
            ));
        }
    }
    Ok(())
}

impl Queue {
    /// Records an accepted request and returns its id. The id is returned
    /// only after the commit, which (with `synchronous=FULL`) is on disk: the
    /// caller may acknowledge the request to the hook as soon as this returns.
    pub fn add_request(
        &mut self,
        source: Source,
        drv_path: Option<&str>,
        out_paths: &[String],
        now: i64,
    ) -> Result<i64, QueueError> {
        validate_request(drv_path, out_paths)?;
        const OP: &str = "adding a request";
        let tx = self.write(OP)?;
        let id = tx
            .prepare_cached(
                "INSERT INTO requests
                     (received_at, source, drv_path, out_paths, state, attempts, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, 'new', 0, ?1)
                 RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![now, source, drv_path, out_paths.join(" ")], |row| {
                    row.get(0)
                })
            })
            .context(OP)?;
        tx.commit().context(OP)?;
        Ok(id)
    }

    /// Records several accepted requests in one transaction, so one disk
    /// sync covers them all (group commit: the daemon batches the hook
    /// requests that arrive while the previous commit is running). Each
    /// request is checked on its own: an invalid one gets its error and
    /// the others are still recorded. The ids are returned only after the
    /// commit, as with [`add_request`](Self::add_request).
    pub fn add_requests(
        &mut self,
        source: Source,
        requests: &[(Option<String>, Vec<String>)],
        now: i64,
    ) -> Result<Vec<Result<i64, QueueError>>, QueueError> {
        const OP: &str = "adding requests";
        let mut results = validated(requests);
        if results.iter().all(Result::is_err) {
            return Ok(results);
        }
        let tx = self.write(OP)?;
        insert_requests(&tx, source, requests, &mut results, now)?;
        tx.commit().context(OP)?;
        Ok(results)
    }

    /// Records that expanding request `id` failed for a reason that may pass
    /// (the store unreachable, say): it stays `new` with `last_error`, and is
    /// claimed again from `next_attempt_at` on.
    pub fn defer_request(
        &mut self,
        id: i64,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), QueueError> {
        const OP: &str = "deferring a request";
        let tx = self.write(OP)?;
        let changed = tx
            .prepare_cached(
                "UPDATE requests SET last_error = ?2, next_attempt_at = ?3
                 WHERE id = ?1 AND state = 'new'",
            )
            .and_then(|mut stmt| stmt.execute(params![id, error, next_attempt_at]))
            .context(OP)?;
        if changed == 0 {
            let exists = tx
                .prepare_cached("SELECT 1 FROM requests WHERE id = ?1")
                .and_then(|mut stmt| stmt.exists([id]))
                .context(OP)?;
            return Err(if exists {
                QueueError::RequestAlreadyExpanded(id)
            } else {
                QueueError::NoSuchRequest(id)
            });
        }
        tx.commit().context(OP)
    }

    /// Request `id`, if it exists.
    pub fn request(&self, id: i64) -> Result<Option<Request>, QueueError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?1"
            ))
            .and_then(|mut stmt| stmt.query_row([id], request_from_row).optional())
            .context("reading a request")
    }

    /// The highest request id handed out so far, 0 when there was none.
    /// `nix-outbox wait` passes it to [`outstanding`](Self::outstanding) to
    /// wait for everything accepted before it started.
    pub fn max_request_id(&self) -> Result<i64, QueueError> {
        self.conn
            .prepare_cached("SELECT IFNULL(MAX(id), 0) FROM requests")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .context("reading the highest request id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn validation_rejects_what_cannot_round_trip() {
        let ok = strings(&["/nix/store/aaaa-x"]);
        assert!(validate_request(None, &ok).is_ok());
        assert!(validate_request(Some("/nix/store/bbbb-x.drv"), &[]).is_ok());

        let cases: Vec<(Option<&str>, Vec<String>, &str)> = vec![
            (None, vec![], "neither a derivation nor any output path"),
            (Some(""), vec![], "empty path"),
            (None, strings(&["/nix/store/a b"]), "whitespace"),
            (None, strings(&["/nix/store/a\nb"]), "whitespace"),
            (None, strings(&["/nix/store/a\0b"]), "control character"),
            (None, vec!["x".repeat(MAX_PATH_BYTES + 1)], "bytes long"),
            (
                None,
                vec!["/p".to_string(); MAX_PATHS + 1],
                "more than the limit",
            ),
        ];
        for (drv, outs, expected) in cases {
            let err = validate_request(drv, &outs).unwrap_err().to_string();
            assert!(err.starts_with("request not queued: "), "{err}");
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        // The limits themselves are allowed.
        assert!(validate_request(None, &["x".repeat(MAX_PATH_BYTES)]).is_ok());
        assert!(validate_request(None, &vec!["/p".to_string(); MAX_PATHS]).is_ok());
    }
}
