//! Making many files durable with one disk sync.
//!
//! Each writer names what it needs on disk (files, and directories whose
//! entries changed). The writer that runs the sync takes everything named
//! so far: a few paths are fsynced one by one (so a lone upload waits for
//! its own data only, not for whatever else is dirty on the filesystem);
//! a larger group gets one `syncfs(2)`.
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
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Up to this many paths are fsynced one by one; more get one syncfs. A
/// lone path's upload names at most three at a time (its NAR; its narinfo
/// with `nar/` and the listing; the cache directory), so it syncs just
/// its own files; several paths at once share a syncfs (one fsync each
/// would wait for one journal commit each).
const FSYNC_AT_MOST: usize = 3;

pub(crate) struct GroupSync {
    /// The cache root; its `nar/` is synced too if it is another
    /// filesystem (a mount point).
    root: PathBuf,
    /// Barriers asked for so far: each caller's ticket.
    asked: AtomicU64,
    /// The highest ticket a completed sync covers.
    synced: tokio::sync::Mutex<u64>,
    /// What the writers that asked since the last sync need on disk.
    named: Mutex<Vec<PathBuf>>,
    /// Syncs run, for tests and metrics.
    runs: AtomicU64,
}

impl GroupSync {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            asked: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
            named: Mutex::new(Vec::new()),
            runs: AtomicU64::new(0),
        }
    }

    /// Returns once `paths` (files written, directories whose entries
    /// changed) and everything named by earlier callers are on disk.
    /// Concurrent callers share one sync.
    pub(crate) async fn barrier(&self, paths: &[&Path]) -> io::Result<()> {
        // Named before the ticket is taken: a sync that covers the ticket
        // took these paths too (it drains them after reading `asked`).
        self.lock_named()
            .extend(paths.iter().map(|p| p.to_path_buf()));
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            return Ok(());
        }
        // Every ticket handed out so far belongs to writes already done.
        let upto = self.asked.load(Ordering::SeqCst);
        let mut named = std::mem::take(&mut *self.lock_named());
        named.sort();
        named.dedup();
        let root = self.root.clone();
        let res = tokio::task::spawn_blocking(move || {
            let res = sync_paths(&root, &named);
            (named, res)
        })
        .await
        .map_err(|e| io::Error::other(format!("sync task failed: {e}")))?;
        if let (named, Err(e)) = res {
            // The next sync tries them again: their writers, waiting for
            // it, must not be told they are on disk.
            self.lock_named().extend(named);
            return Err(e);
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        *synced = upto;
        Ok(())
    }

    /// Names paths for the next sync without waiting for it (a NAR's new
    /// directory entry, which its narinfo's barrier then covers).
    pub(crate) fn name(&self, paths: &[&Path]) {
        self.lock_named()
            .extend(paths.iter().map(|p| p.to_path_buf()));
    }

    fn lock_named(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // A list of paths cannot be left half-updated by a panic.
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

/// Makes `named` durable: each fsynced if they are few, else one syncfs
/// of `root`'s filesystem (and of `root/nar`'s, if another).
fn sync_paths(root: &Path, named: &[PathBuf]) -> io::Result<()> {
    if named.len() <= FSYNC_AT_MOST {
        for p in named {
            // A directory is opened read-only too; fsync works on either.
            match File::open(p).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // Gone (renamed, or removed by a writer that gave up):
                // nothing of it left to make durable here.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
    sync_filesystems(root)
}

/// Syncs the filesystem of `root`, and that of `root/nar` if it differs.
fn sync_filesystems(root: &Path) -> io::Result<()> {
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
            tasks.spawn(async move { s.barrier(&[]).await.unwrap() });
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
        sync.barrier(&[]).await.unwrap();
        assert_eq!(sync.runs(), 2);
    }

    #[tokio::test]
    async fn few_paths_are_fsynced_and_many_get_a_syncfs() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..20).map(|i| dir.path().join(format!("f{i}"))).collect();
        const { assert!(FSYNC_AT_MOST >= 3 && FSYNC_AT_MOST < 20) };
        for f in &files {
            std::fs::write(f, b"x").unwrap();
        }
        let sync = GroupSync::new(dir.path().to_owned());
        let few: Vec<&Path> = files[..3].iter().map(PathBuf::as_path).collect();
        sync.barrier(&few).await.unwrap();
        // A named path that is gone has nothing left to sync.
        let gone = dir.path().join("gone");
        sync.barrier(&[&gone]).await.unwrap();
        assert_eq!(sync.runs(), 2);
        // A large group is one syncfs of the cache's filesystem.
        let many: Vec<&Path> = files
            .iter()
            .map(PathBuf::as_path)
            .chain([gone.as_path()])
            .collect();
        sync.barrier(&many).await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_root_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::new(dir.path().join("gone"));
        let many: Vec<PathBuf> = (0..=FSYNC_AT_MOST)
            .map(|i| dir.path().join(format!("{i}")))
            .collect();
        let many: Vec<&Path> = many.iter().map(PathBuf::as_path).collect();
        assert_eq!(
            sync.barrier(&many).await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
