//! Upload workers: claim a due job, upload the closure of its path to its
//! target (references first, narinfo last, skipping what the target has),
//! then record the outcome. Nothing is ever dropped: a failed job goes back
//! to pending with its error and a capped, jittered backoff.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_queue::Job;
use nix_outbox_upload::{UploadError, upload_closure};
use tokio::sync::watch;

use super::{Service, backoff_secs, idle, now};

/// How long to sleep when nothing is due, at most (new work wakes us).
const IDLE_MAX: Duration = Duration::from_secs(5);

pub async fn worker_loop(
    svc: Arc<Service>,
    n: usize,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !*shutdown.borrow() {
        match svc.with_queue(|q| q.claim_job(now())).await {
            Ok(Some(job)) => run_job(&svc, job).await?,
            Ok(None) => {
                let wait = match svc.with_queue(|q| q.next_wakeup()).await {
                    Ok(Some(at)) => {
                        Duration::from_secs((at - now()).clamp(0, IDLE_MAX.as_secs() as i64) as u64)
                    }
                    _ => IDLE_MAX,
                };
                idle(&svc, &mut shutdown, wait.max(Duration::from_millis(50))).await;
            }
            Err(e) => {
                tracing::error!("worker {n}: queue error: {e:#}");
                idle(&svc, &mut shutdown, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

async fn run_job(svc: &Arc<Service>, job: Job) -> anyhow::Result<()> {
    let Job {
        path,
        target,
        attempts,
        ..
    } = job;
    let sd = &svc.store_dir;
    let Some(entry) = svc.targets.iter().find(|t| t.id == target) else {
        // A target removed from the configuration: keep the job visible
        // rather than delete it, and check rarely.
        let msg =
            format!("target {target} is no longer configured; add it back or remove its jobs");
        svc.with_queue(move |q| q.retry_job(&path, &target, &msg, now() + 3600, now()))
            .await?;
        return Ok(());
    };
    let root = match sd.parse_path(&format!("{}/{path}", sd.as_str())) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("invalid store path in queue: {e}");
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now()))
                .await?;
            return Ok(());
        }
    };
    let result = upload_closure(
        &svc.pool,
        entry.target.as_ref(),
        &entry.config,
        &svc.keys,
        &root,
    )
    .await;
    match result {
        Ok(report) if report.missing.contains(&root) => {
            tracing::info!(
                "{}: no longer valid (garbage-collected?); skipping",
                sd.display(&root)
            );
            let msg =
                "path is no longer valid in the store (garbage-collected before upload)".to_owned();
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now()))
                .await?;
        }
        Ok(report) if report.blocked.contains(&root) => {
            // A reference vanished between the build and the upload; the
            // cache must never get a narinfo whose references it lacks.
            let missing: Vec<String> = report.missing.iter().map(|p| sd.display(p)).collect();
            let msg = format!(
                "not uploaded: references are no longer valid in the store: {}",
                missing.join(" ")
            );
            tracing::warn!("{}: {msg}", sd.display(&root));
            svc.with_queue(move |q| q.skip_job(&path, &target, &msg, now()))
                .await?;
        }
        Ok(report) => {
            tracing::info!(
                "{} → {target}: {} uploaded ({} NAR bytes, {} compressed), {} already present",
                sd.display(&root),
                report.uploaded,
                report.nar_bytes,
                report.file_bytes,
                report.already_present
            );
            svc.with_queue(move |q| q.finish_job(&path, &target, now()))
                .await?;
        }
        Err(e) => {
            let delay = match &e {
                // A corrupt store path does not heal by itself; check hourly.
                UploadError::HashMismatch { .. } => 3600,
                _ => backoff_secs(attempts, path.len() as u64),
            };
            if matches!(e, UploadError::HashMismatch { .. }) {
                tracing::error!("NOT uploading {}: {e}", sd.display(&root));
            } else {
                tracing::warn!(
                    "upload of {} to {target} failed (attempt {attempts}, retry in {delay}s): {e}",
                    sd.display(&root)
                );
            }
            let msg = e.to_string();
            svc.with_queue(move |q| q.retry_job(&path, &target, &msg, now() + delay as i64, now()))
                .await?;
        }
    }
    Ok(())
}
