//! Making many files durable with one disk sync.
//!
//! A file:// cache used to fsync every file and its directory: four syncs
//! per path, each waiting for the disk, so a closure of thousands of small
//! paths spent its time waiting. Instead, files are written and renamed
//! without a sync, and a writer that needs durability calls
//! [`GroupSync::barrier`]: one `syncfs(2)` of the cache's filesystem makes
//! everything written before it began durable, and every writer that
//! asked meanwhile is served by the same call (a group commit).
//!
//! How the file target uses it (the crash model, in `docs/design.md`):
//! - a NAR is written to a temporary name, then a barrier, then renamed
//!   (a NAR file two paths share may replace one a narinfo names, so it
//!   must never have its name before its contents are on disk);
//! - a listing is written and renamed without a barrier of its own;
//! - a narinfo (or any file that must not be lost) is written to a
//!   temporary name, then a barrier (which also covers the NAR's name and
//!   the listing), then renamed into place, then a barrier: it is never
//!   visible after a crash before its NAR, and is durable when its writer
//!   reports success.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct GroupSync {
    /// The cache root; its `nar/` is synced too if it is another
    /// filesystem (a mount point).
    root: PathBuf,
    /// Barriers asked for so far: each caller's ticket.
    asked: AtomicU64,
    /// The highest ticket a completed sync covers.
    synced: tokio::sync::Mutex<u64>,
    /// Syncs run, for tests and metrics.
    runs: AtomicU64,
}

impl GroupSync {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            asked: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
            runs: AtomicU64::new(0),
        }
    }

    /// Returns once everything this process wrote to the cache before the
    /// call is on disk. Concurrent callers share one sync.
    pub(crate) async fn barrier(&self) -> io::Result<()> {
        // Taken after the caller's writes completed: a sync that starts
        // after this ticket was handed out covers them.
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            return Ok(());
        }
        // Every ticket handed out so far belongs to writes already done.
        let upto = self.asked.load(Ordering::SeqCst);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_filesystems(&root))
            .await
            .map_err(|e| io::Error::other(format!("sync task failed: {e}")))??;
        self.runs.fetch_add(1, Ordering::Relaxed);
        *synced = upto;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// Syncs the filesystem of `root`, and that of `root/nar` if it differs.
fn sync_filesystems(root: &std::path::Path) -> io::Result<()> {
    let dir = File::open(root)?;
    sync_fs(&dir)?;
    let nar = root.join("nar");
    if let (Ok(r), Ok(n)) = (dir.metadata(), std::fs::metadata(&nar))
        && r.dev() != n.dev()
    {
        sync_fs(&File::open(&nar)?)?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn sync_fs(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open descriptor for the duration of the call.
    // Since Linux 5.8 syncfs reports writeback errors of that filesystem.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_fs(f: &File) -> io::Result<()> {
    // No syncfs: sync(2) covers every filesystem, and reports nothing.
    let _ = f.as_raw_fd();
    // SAFETY: plain syscall without arguments.
    unsafe { libc::sync() };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barriers_asked_while_a_sync_runs_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(GroupSync::new(dir.path().to_owned()));
        // As if a sync were running: every barrier asked now waits for it.
        let running = sync.synced.lock().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let s = sync.clone();
            tasks.spawn(async move { s.barrier().await.unwrap() });
        }
        while sync.asked.load(Ordering::SeqCst) < 64 {
            tokio::task::yield_now().await;
        }
        drop(running);
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert_eq!(sync.runs(), 1, "64 waiting barriers, one sync");
        // A barrier after that syncs again: its writes may be new.
        sync.barrier().await.unwrap();
        assert_eq!(sync.runs(), 2);
    }

    #[tokio::test]
    async fn a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(dir.path().join("gone"));
        assert_eq!(
            sync.barrier().await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
