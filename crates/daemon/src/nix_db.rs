//! The `nix-db` source: follows Nix's own database of valid paths and
//! queues what it picks, with no process in the build loop.
//!
//! A dedicated thread (the reader is a synchronous SQLite connection):
//! 1. at start, finds its cursor in our queue; a first start (or another
//!    of Nix's databases) begins at the current end of Nix's table, so the
//!    whole store is never pushed unasked (`nix-outbox backfill` does that
//!    on request);
//! 2. reads the rows after the cursor (at most [`BATCH`]), picks the paths
//!    (`nix-db-paths`: built here, or all), and commits their requests and
//!    the new cursor in one transaction; then wakes the expander;
//! 3. waits for Nix to write: inotify on Nix's `db/` directory (its WAL
//!    file changes on every commit), with a poll every [`POLL`] as the
//!    fallback, so a path is queued well within a second.
//!
//! Crash model: the cursor moves only with the requests for the rows it
//! passes, so a kill at any point neither loses nor duplicates a path.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix_outbox_config::NixDbPaths;
use nix_outbox_core::StoreDir;
use nix_outbox_queue::QueueError;
use nix_outbox_store::nix_db::{NixDb, ValidPathRow};
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

/// Rows read (and committed) at once.
const BATCH: usize = 1000;
/// The longest wait for Nix without an inotify event.
const POLL: Duration = Duration::from_secs(1);
/// After an event, how long to let Nix finish its transaction's writes, so
/// one read takes a build's paths together.
const SETTLE: Duration = Duration::from_millis(20);
/// After a failed read or commit, how long before the next try.
const BACKOFF: Duration = Duration::from_secs(1);

/// What the daemon follows: an opened database and what to pick from it.
pub struct NixDbSource {
    pub db: NixDb,
    pub paths: NixDbPaths,
}

/// The requests for `rows`: the outputs of one derivation in one request
/// (with the derivation, as the hook's `DRV_PATH`, for build logs and
/// realisations), other paths one per request. Rows whose path is not a
/// store path of `sd` are left out.
pub fn requests_for(
    rows: &[ValidPathRow],
    paths: NixDbPaths,
    sd: &StoreDir,
) -> Vec<(Option<String>, Vec<String>)> {
    let mut out: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for row in rows {
        let picked = match paths {
            NixDbPaths::Built => row.built_here(),
            NixDbPaths::All => true,
        };
        if !picked || sd.parse_path(&row.path).is_err() {
            continue;
        }
        let drv = row
            .deriver
            .clone()
            .filter(|d| sd.parse_path(d).is_ok_and(|p| p.is_derivation()));
        match out.last_mut() {
            // Outputs of one derivation are registered together.
            Some((Some(last), outs)) if drv.as_ref() == Some(last) => outs.push(row.path.clone()),
            _ => out.push((drv, vec![row.path.clone()])),
        }
    }
    out
}

/// Follows Nix's database until `stop`. Runs on a blocking thread.
pub(crate) fn follow(d: Arc<Daemon>, src: NixDbSource, stop: CancellationToken) {
    let NixDbSource { db, paths } = src;
    let db_path = db.path().display().to_string();
    let watch = Watch::new(db.path().parent().unwrap_or(Path::new("/")))
        .inspect_err(|e| {
            tracing::warn!(
                "nix-db: cannot watch Nix's database for changes ({e}); polling every second"
            )
        })
        .ok();
    let Some(mut cursor) = start_cursor(&d, &db, &db_path, &stop) else {
        return;
    };
    d.metrics.nix_db_cursor(cursor);
    while !stop.is_cancelled() {
        let rows = match db.rows_after(cursor, BATCH) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("nix-db: {e}; trying again in {}s", BACKOFF.as_secs());
                pause(&stop, BACKOFF);
                continue;
            }
        };
        let Some(last) = rows.last().map(|r| r.id) else {
            // Caught up: how far Nix is is where we are.
            d.metrics.nix_db_lag(0);
            wait_for_nix(watch.as_ref(), &stop);
            continue;
        };
        let requests = requests_for(&rows, paths, &d.svc.store_dir);
        let now = d.now();
        let committed = {
            let mut q = d.svc.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.add_nix_db_requests(&db_path, Some((&db_path, cursor)), last, &requests, now)
        };
        match committed {
            Ok(results) => {
                let queued = results.iter().filter(|r| r.is_ok()).count();
                for e in results.iter().filter_map(|r| r.as_ref().err()) {
                    tracing::warn!("nix-db: a path was not queued: {e}");
                }
                cursor = last;
                d.metrics.nix_db_cursor(cursor);
                d.metrics.nix_db_queued(queued as u64);
                if let Ok(end) = db.last_id() {
                    d.metrics.nix_db_lag(end.saturating_sub(cursor));
                }
                if queued > 0 {
                    tracing::debug!("nix-db: queued {queued} request(s), cursor at {cursor}");
                    d.svc.new_requests.notify_one();
                }
            }
            Err(e @ QueueError::CursorMoved { .. }) => {
                tracing::error!("nix-db: {e}");
                match start_cursor(&d, &db, &db_path, &stop) {
                    Some(c) => cursor = c,
                    None => return,
                }
            }
            Err(e) => {
                // The queue refused (its disk is full, a lock held too
                // long): nothing moved; the same rows are read again.
                tracing::warn!(
                    "nix-db: cannot queue {} path(s) from Nix's database: {e}; trying again in {}s",
                    requests.len(),
                    BACKOFF.as_secs()
                );
                pause(&stop, BACKOFF);
            }
        }
    }
}

/// The cursor to go on from: ours for this database, else (a first start,
/// or another of Nix's databases) the current end of Nix's table, recorded
/// at once. `None` once stopped.
fn start_cursor(d: &Daemon, db: &NixDb, db_path: &str, stop: &CancellationToken) -> Option<i64> {
    while !stop.is_cancelled() {
        let res = (|| -> anyhow::Result<i64> {
            let mut q = d.svc.queue.lock().unwrap_or_else(|p| p.into_inner());
            let found = q.nix_db_cursor()?;
            match found {
                Some(c) if c.db_path == db_path => Ok(c.last_id),
                other => {
                    let end = db.last_id()?;
                    let from = other.as_ref().map(|c| (c.db_path.as_str(), c.last_id));
                    q.add_nix_db_requests(db_path, from, end, &[], d.now())?;
                    tracing::info!(
                        "nix-db: following {db_path} from its current end (row {end}); paths \
                         registered before are not queued: `nix-outbox backfill` queues them"
                    );
                    Ok(end)
                }
            }
        })();
        match res {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(
                    "nix-db: cannot set the cursor up: {e:#}; trying again in {}s",
                    BACKOFF.as_secs()
                );
                pause(stop, BACKOFF);
            }
        }
    }
    None
}

/// Sleeps `how_long`, or less if stopped.
fn pause(stop: &CancellationToken, how_long: Duration) {
    let step = Duration::from_millis(50);
    let mut left = how_long;
    while !stop.is_cancelled() && !left.is_zero() {
        std::thread::sleep(left.min(step));
        left = left.saturating_sub(step);
    }
}

/// Waits until Nix writes its database (or [`POLL`] passes, or the stop).
fn wait_for_nix(watch: Option<&Watch>, stop: &CancellationToken) {
    let Some(w) = watch else {
        pause(stop, POLL);
        return;
    };
    // In slices, so a stop is seen within one.
    let mut left = POLL;
    let slice = Duration::from_millis(100);
    while !stop.is_cancelled() && !left.is_zero() {
        if w.wait(left.min(slice)) {
            // Let Nix finish writing the transaction it is in.
            std::thread::sleep(SETTLE);
            return;
        }
        left = left.saturating_sub(slice);
    }
}

/// inotify on Nix's `db/` directory: any file written, created or moved
/// there (its WAL on every commit).
struct Watch {
    fd: OwnedFd,
}

impl Watch {
    fn new(dir: &Path) -> std::io::Result<Watch> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
            .map_err(std::io::Error::other)?;
        let mask = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_MOVED_TO;
        // SAFETY: `fd` is an inotify descriptor, `path` a NUL-terminated string.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Watch { fd })
    }

    /// Whether an event came within `timeout` (draining what came).
    fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // Drain: the events themselves do not matter, only that Nix wrote.
        // SAFETY: `buf` is writable for its length; the fd is non-blocking.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

#[cfg(test)]
mod tests;
