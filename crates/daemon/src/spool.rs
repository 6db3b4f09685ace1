//! Ingesting requests the hook spooled while the daemon was down or hung:
//! each file is committed to the queue first and deleted only after the
//! commit, so a crash in between at worst ingests it twice (harmless: jobs
//! are deduplicated). Unreadable files are moved aside, never deleted.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_hook::spool::{list_spool, read_spool_file};
use nix_outbox_queue::Source;
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

/// How often the spool is scanned (the hook cannot wake a daemon that was
/// not listening, so we poll; a spooled request waits at most this long).
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

pub async fn ingest_loop(d: Arc<Daemon>, stop: CancellationToken) -> anyhow::Result<()> {
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

pub async fn ingest_once(d: &Daemon) -> anyhow::Result<usize> {
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
            Err(e) => {
                let rejected = svc.spool_dir.join("rejected");
                std::fs::create_dir_all(&rejected)?;
                let dest = rejected.join(file.file_name().unwrap_or_default());
                std::fs::rename(&file, &dest)?;
                d.metrics.spool_request(false);
                tracing::error!(
                    "spool file {} is unreadable ({e}); moved to {}",
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
