//! Remembering that the daemon did not answer, so that a hung daemon costs
//! the builds one timeout, not one per build.
//!
//! A hook that got no acknowledgement within `hook-timeout-ms` leaves a
//! marker in the spool directory. Hooks that find a fresh marker (younger
//! than [`MARKER_TTL`]) spool at once without connecting. The daemon
//! removes the marker at start, when it acknowledges a request, and at its
//! next heartbeat (see [`crate::liveness`]) once its hook thread runs
//! again; past its TTL the next hook tries the socket again, so a daemon
//! that came back unnoticed costs at most one more timeout per TTL.
//!
//! With the heartbeat, a hung daemon is seen by the hooks themselves after
//! at most [`crate::liveness::STALE`]; the marker spares the hooks of that
//! first second, and covers systems without `/proc`.
//!
//! The marker is a hint, not state that must survive a crash: one stat per
//! hook reads it, and it is written without a sync.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The marker's name in the spool directory (a dot name: the spool lister
/// skips it).
pub const MARKER: &str = ".daemon-unresponsive";

/// How long a marker keeps hooks from trying the socket.
pub const MARKER_TTL: Duration = Duration::from_secs(30);

pub fn marker_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(MARKER)
}

/// When the daemon was last found unresponsive, if that was less than
/// [`MARKER_TTL`] ago.
pub fn recently_unresponsive(spool_dir: &Path, now: SystemTime) -> Option<SystemTime> {
    let at = std::fs::metadata(marker_path(spool_dir))
        .and_then(|m| m.modified())
        .ok()?;
    // A marker from the future (a clock stepped back) counts as fresh
    // only within the TTL too.
    let age = now.duration_since(at).unwrap_or_else(|e| e.duration());
    (age < MARKER_TTL).then_some(at)
}

/// Records that the daemon did not answer in time (best effort: without
/// the marker, the next hook merely waits its timeout too).
pub fn mark_unresponsive(spool_dir: &Path) {
    let path = marker_path(spool_dir);
    // Written anew, so its mtime is now.
    let _ = std::fs::write(path, b"");
}

/// The daemon answered: hooks may use the socket again.
pub fn clear(spool_dir: &Path) {
    let _ = std::fs::remove_file(marker_path(spool_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_fresh_for_its_ttl_then_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        assert_eq!(recently_unresponsive(dir.path(), now), None);
        mark_unresponsive(dir.path());
        assert!(recently_unresponsive(dir.path(), now + Duration::from_secs(1)).is_some());
        assert_eq!(
            recently_unresponsive(dir.path(), now + MARKER_TTL + Duration::from_secs(2)),
            None
        );
        clear(dir.path());
        assert_eq!(recently_unresponsive(dir.path(), now), None);
    }
}
