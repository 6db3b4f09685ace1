//! Ingesting requests the hook spooled while the daemon was down or hung:
//! each file is committed to the queue first and deleted only after the
//! commit, so a crash in between at worst ingests it twice (harmless: jobs
//! are deduplicated). Unreadable files are moved aside, never deleted.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix_outbox_hook::spool::{SpoolError, list_spool, read_spool_file};
use nix_outbox_queue::Source;
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

/// How often the spool is scanned (the hook cannot wake a daemon that was
/// not listening, so we poll; a spooled request waits at most this long).
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn ingest_loop(d: Arc<Daemon>, stop: CancellationToken) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        if let Err(e) = ingest_once(&d).await {
            tracing::warn!("spool ingestion failed (will retry): {e:#}");
        }
        // Only the clock and the stop end this wait: nothing tells us
        // about spool files, and commits through the socket are none of
        // this loop's business.
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(SCAN_INTERVAL) => {}
        }
    }
    Ok(())
}

pub(crate) async fn ingest_once(d: &Daemon) -> anyhow::Result<usize> {
    let svc = &d.svc;
    let dir = svc.spool_dir.clone();
    let files = match tokio::task::spawn_blocking(move || list_spool(&dir)).await? {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut n = 0;
    for file in files {
        let sd = svc.store_dir.clone();
        let parsed = {
            let file = file.clone();
            tokio::task::spawn_blocking(move || read_spool_file(&file, &sd)).await?
        };
        match parsed {
            Ok(req) => {
                let sd = &svc.store_dir;
                let drv = req.drv_path.as_ref().map(|d| sd.display(d));
                let outs: Vec<String> = req.out_paths.iter().map(|p| sd.display(p)).collect();
                let now = d.now();
                let id = svc
                    .with_queue(move |q| q.add_request(Source::Spool, drv.as_deref(), &outs, now))
                    .await?;
                std::fs::remove_file(&file)?;
                d.metrics.spool_request(true);
                tracing::info!(
                    "ingested spooled request {} as request {id}",
                    file.display()
                );
                n += 1;
            }
            Err(e) if disposition(&e) == Disposition::Gone => {}
            Err(e) if disposition(&e) == Disposition::TryAgain => {
                tracing::warn!("{e}; trying again at the next spool scan");
            }
            Err(e) => {
                let rejected = rejected_dir(&svc.spool_dir);
                std::fs::create_dir_all(&rejected)?;
                let dest = rejected.join(file.file_name().unwrap_or_default());
                std::fs::rename(&file, &dest)?;
                d.metrics.spool_request(false);
                tracing::error!(
                    "spool file {} does not hold a request ({e}); moved to {} (`nix-outbox \
                     status` lists it; `nix-outbox retry --rejected-spool` puts it back)",
                    file.display(),
                    dest.display()
                );
            }
        }
    }
    if n > 0 {
        svc.new_requests.notify_one();
    }
    Ok(n)
}

/// What to do with a spool file that could not be ingested.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Removed meanwhile (another daemon ingested it): nothing to do.
    Gone,
    /// It cannot be read right now (EMFILE, EACCES, EIO): not the file's
    /// fault. It stays and is tried at the next scan; setting it aside
    /// would lose its paths for good.
    TryAgain,
    /// It was read and holds no request: set aside, never deleted.
    SetAside,
}

fn disposition(e: &SpoolError) -> Disposition {
    match e {
        SpoolError::Read { source, .. } if source.kind() == ErrorKind::NotFound => {
            Disposition::Gone
        }
        SpoolError::Read { .. } => Disposition::TryAgain,
        _ => Disposition::SetAside,
    }
}

/// Where spool files that hold no request are set aside.
pub fn rejected_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("rejected")
}

/// The files set aside in [`rejected_dir`], oldest name first.
pub fn rejected_files(spool_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(rejected_dir(spool_dir)) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Moves every set-aside file back into the spool, for the daemon to try
/// again (after it was repaired, or after a daemon that misjudged it was
/// fixed). Returns how many were moved.
pub fn requeue_rejected(spool_dir: &Path) -> std::io::Result<usize> {
    let files = rejected_files(spool_dir)?;
    for f in &files {
        let name = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // A link never replaces a file of the same name (which a rename
        // would, losing a request); then a new name is found.
        let mut n = 0;
        loop {
            let dest = match n {
                0 => spool_dir.join(&name),
                n => spool_dir.join(format!("again{n}-{name}")),
            };
            match std::fs::hard_link(f, &dest) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
        std::fs::remove_file(f)?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use std::io;

    use nix_outbox_hook::FrameError;

    use super::*;

    fn read_error(e: io::Error) -> SpoolError {
        SpoolError::Read {
            path: "/s/x.req".into(),
            source: e,
        }
    }

    /// Issue 14: a file that cannot be read *now* used to be set aside,
    /// where nothing retried it.
    #[test]
    fn only_a_file_that_holds_no_request_is_set_aside() {
        for errno in [libc::EMFILE, libc::EACCES, libc::EIO, libc::ENFILE] {
            let e = read_error(io::Error::from_raw_os_error(errno));
            assert_eq!(disposition(&e), Disposition::TryAgain, "{e}");
        }
        let gone = read_error(io::Error::from(ErrorKind::NotFound));
        assert_eq!(disposition(&gone), Disposition::Gone);
        let garbage = SpoolError::Decode {
            path: "/s/x.req".into(),
            source: FrameError::Empty,
        };
        assert_eq!(disposition(&garbage), Disposition::SetAside);
    }

    #[test]
    fn set_aside_files_go_back_without_replacing_a_namesake() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path();
        std::fs::create_dir(rejected_dir(spool)).unwrap();
        std::fs::write(rejected_dir(spool).join("a.req"), "old").unwrap();
        std::fs::write(spool.join("a.req"), "new").unwrap();
        assert_eq!(rejected_files(spool).unwrap().len(), 1);
        assert_eq!(requeue_rejected(spool).unwrap(), 1);
        assert!(rejected_files(spool).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(spool.join("a.req")).unwrap(), "new");
        assert_eq!(
            std::fs::read_to_string(spool.join("again1-a.req")).unwrap(),
            "old"
        );
    }
}
