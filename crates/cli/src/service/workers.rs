//! Upload workers: claim a due job, upload the closure of its path to its
//! target (references first, narinfo last, skipping what the target has),
//! then record the outcome. Nothing is ever dropped: a failed job goes back
//! to pending with its error and the retry policy's delay (see `retry.rs`),
//! however often and however it fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix_outbox_queue::{Job, Queue, QueueError, SkippedPath};
use nix_outbox_store::StoreError;
use nix_outbox_upload::{
    BuildLogOutcome, ClosureReport, RealisationOutcome, Target as _, upload_build_log,
    upload_closure_selected, upload_realisation,
};
use tokio::sync::watch;

use super::{Daemon, Failure, idle};

/// How long to sleep when nothing is due, at most (new work wakes us).
const IDLE_MAX: Duration = Duration::from_secs(5);

/// Pauses between attempts at a queue write the queue refused.
const SETTLE_FIRST_PAUSE: Duration = Duration::from_secs(1);
const SETTLE_MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often a job whose target left the configuration is looked at again.
const UNCONFIGURED_RECHECK: Duration = Duration::from_secs(3600);

/// Readies the queue for uploads, then runs the workers until the stop.
/// Uploads that a crash or stop left in flight go back to pending first,
/// and no worker claims a job before that is done. If the queue cannot
/// take that write (its disk is full), it is tried again until it can:
/// the hook socket, the spool and the expander run meanwhile, so the
/// daemon comes up and recovers when space returns instead of exiting.
pub async fn run_workers(d: Arc<Daemon>, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let what = "reset the uploads a crash or stop interrupted";
    let meanwhile = "no upload starts until this succeeds";
    let now = d.now();
    match until_written(&d, &shutdown, what, meanwhile, move |q| q.recover(now)).await {
        None => return Ok(()),
        Some(0) => {}
        Some(n) => {
            tracing::warn!("{n} upload(s) were interrupted by a crash or stop; retrying them")
        }
    }
    // A restart usually follows a fix (credentials, configuration): what
    // was waiting out a backoff is tried again at once. Only a shortcut:
    // if the queue refuses it, the jobs run when their pauses end.
    let now = d.now();
    match d.svc.with_queue(move |q| q.retry_now(None, &[], now)).await {
        Ok(0) => {}
        Ok(due) => tracing::info!("{due} waiting upload(s) are retried now, at start"),
        Err(e) => tracing::warn!(
            "cannot make the waiting uploads due now, at start: {e:#}; each is tried when its pause ends"
        ),
    }
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..d.svc.workers {
        workers.spawn(worker_loop(d.clone(), n, shutdown.clone()));
    }
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("worker failed: {e:#}"),
            Err(e) if e.is_panic() => tracing::error!("a worker panicked: {e}"),
            Err(_) => {}
        }
    }
    Ok(())
}

/// One worker: claims due jobs one at a time and runs each to its
/// recorded outcome. A queue error pauses it; nothing ends it but the stop.
pub(crate) async fn worker_loop(
    d: Arc<Daemon>,
    n: usize,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let svc = &d.svc;
    while !*shutdown.borrow() {
        let woken = svc.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = d.now();
        match svc.with_queue(move |q| q.claim_job(now)).await {
            Ok(Some(job)) => run_job(&d, job, &shutdown).await,
            Ok(None) => {
                // Until the next job is due, to the second: with a paused
                // test clock, retries happen exactly when scheduled.
                let wait = match svc.with_queue(|q| q.next_wakeup()).await {
                    Ok(Some(at)) => d.clock.until(at).min(IDLE_MAX),
                    _ => IDLE_MAX,
                };
                idle(woken, &mut shutdown, wait.max(Duration::from_millis(50))).await;
            }
            Err(e) => {
                tracing::error!("worker {n}: queue error: {e:#}");
                idle(woken, &mut shutdown, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

async fn run_job(d: &Daemon, job: Job, stop: &watch::Receiver<bool>) {
    let Job {
        path,
        target,
        attempts,
        request_id,
        ..
    } = job;
    let svc = &d.svc;
    let sd = &svc.store_dir;
    let Some(index) = svc.targets.iter().position(|t| t.id == target) else {
        // A target removed from the configuration: keep the job visible
        // rather than delete it, and check rarely.
        let msg =
            format!("target {target} is no longer configured; add it back or remove its jobs");
        let (now, at) = (d.now(), d.clock.after(UNCONFIGURED_RECHECK));
        settle(d, stop, move |q| q.retry_job(&path, &target, &msg, at, now)).await;
        return;
    };
    let (entry, present) = (&svc.targets[index], &d.present[index]);
    let root = match sd.parse_path(&format!("{}/{path}", sd.as_str())) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("invalid store path in queue: {e}");
            let now = d.now();
            settle(d, stop, move |q| q.skip_job(&path, &target, &msg, now)).await;
            return;
        }
    };
    // Registered as in flight (with byte counts) for `status` until dropped.
    let (job, started) = (
        d.metrics.in_flight.start(&target, &path, d.now()),
        Instant::now(),
    );
    let tracked = job.track(present.as_ref());
    let result = upload_closure_selected(
        &svc.pool,
        &tracked,
        &entry.config,
        &svc.keys,
        &root,
        &d.selection,
    )
    .await;
    drop(job);
    let skipped = matches!(&result, Ok(r) if r.missing.contains(&root) || r.blocked.contains(&root)
        || r.skipped.iter().any(|(p, _)| p == &root));
    // After the outputs' narinfos, so a log never holds them back; a log
    // that fails keeps the job pending (the outputs are then found present
    // at once) until the log is in too. Counted before the metrics, so
    // such a job is a failure there, not done twice.
    let log_failed = match &result {
        // Realisations likewise, each after its own output's narinfo.
        Ok(_) if !skipped => match upload_log(d, entry, request_id).await {
            Some(failed) => Some(failed),
            None => upload_realisations(d, entry, request_id, &root).await,
        },
        _ => None,
    };
    d.metrics.job_finished(
        &target,
        &result,
        skipped,
        log_failed.as_ref().map(|(_, f)| *f),
        started.elapsed(),
    );
    // Whatever the outcome, what was seen present (or uploaded before a
    // failure) is worth remembering.
    present.flush().await;
    d.selection.flush().await;
    let now = d.now();
    if let Ok(report) = &result {
        record_skips(d, &target, report, now).await;
    }
    match result {
        Ok(report) if report.missing.contains(&root) => {
            tracing::info!(
                "{}: no longer valid (garbage-collected?); skipping",
                sd.display(&root)
            );
            let msg =
                "path is no longer valid in the store (garbage-collected before upload)".to_owned();
            settle(d, stop, move |q| q.skip_job(&path, &target, &msg, now)).await;
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
            settle(d, stop, move |q| q.skip_job(&path, &target, &msg, now)).await;
        }
        Ok(report) if report.skipped.iter().any(|(p, _)| p == &root) => {
            // Left out on purpose (upstream serves it, or a filter): the
            // job is settled, with the reason for `status`.
            let skip = report
                .skipped
                .iter()
                .find(|(p, _)| p == &root)
                .map(|(_, s)| s.to_string())
                .unwrap_or_default();
            let msg = format!("not uploaded: {skip}");
            tracing::info!("{}: {msg}", sd.display(&root));
            settle(d, stop, move |q| q.skip_job(&path, &target, &msg, now)).await;
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
            if let Some((msg, failure)) = log_failed {
                let delay = d.retry.delay(
                    attempts,
                    failure,
                    entry.target.retry_after(),
                    d.jitter.next(),
                );
                let at = d.clock.after(delay);
                let msg = failure_message(&msg, failure, d.retry.cap);
                tracing::warn!("{}: {msg}", sd.display(&root));
                settle(d, stop, move |q| q.retry_job(&path, &target, &msg, at, now)).await;
                return;
            }
            settle(d, stop, move |q| q.finish_job(&path, &target, now)).await;
        }
        Err(e) => {
            let failure = Failure::from_transient(e.is_transient());
            // A server that sent Retry-After is not asked again earlier.
            let delay = d
                .retry
                .delay(attempts, failure, present.retry_after(), d.jitter.next());
            let at = d.clock.after(delay);
            let msg = failure_message(&e, failure, d.retry.cap);
            let shown = sd.display(&root);
            match failure {
                Failure::Transient => tracing::warn!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {}s): {msg}",
                    at - now
                ),
                Failure::Permanent => tracing::error!(
                    "upload of {shown} to {target} failed (attempt {attempts}, retry in {}s): {msg}",
                    at - now
                ),
            }
            settle(d, stop, move |q| q.retry_job(&path, &target, &msg, at, now)).await;
        }
    }
}

/// Records a job's outcome. The upload itself is over; a queue write that
/// fails (the state directory's disk is full, another process holds the
/// database) must neither lose the outcome nor end the worker, which would
/// leave the job in flight and the daemon uploading nothing until a
/// restart. So it is written as [`until_written`] does. A stop ends the
/// retries: the job then stays in flight and is retried after the
/// restart, as after a crash.
pub(crate) async fn settle(
    d: &Daemon,
    stop: &watch::Receiver<bool>,
    record: impl FnOnce(&mut Queue) -> Result<(), QueueError> + Clone + Send + 'static,
) {
    let what = "record an upload's outcome";
    let meanwhile = "the job shows as in flight until then";
    until_written(d, stop, what, meanwhile, record).await;
}

/// Runs a queue write until the queue takes it, pausing 1 s, then twice as
/// long each time up to 30 s, and logging each refusal with `what` was
/// tried and what holds `meanwhile`. None if a stop came first, or if the
/// queue said the job is no longer in flight or gone: an earlier attempt
/// did commit (SQLite can report an error at COMMIT after the fact), or
/// the job was reset meanwhile, and repeating could never succeed.
async fn until_written<T: Send + 'static>(
    d: &Daemon,
    stop: &watch::Receiver<bool>,
    what: &str,
    meanwhile: &str,
    write: impl FnOnce(&mut Queue) -> Result<T, QueueError> + Clone + Send + 'static,
) -> Option<T> {
    let mut pause = SETTLE_FIRST_PAUSE;
    loop {
        let e = match d.svc.with_queue(write.clone()).await {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        if let Some(gone @ (QueueError::JobNotInFlight { .. } | QueueError::NoSuchJob { .. })) =
            e.downcast_ref::<QueueError>()
        {
            tracing::warn!("not trying again to {what}: {gone}");
            return None;
        }
        tracing::error!(
            "cannot {what} in the queue: {e:#}; {meanwhile}; trying again in {}s",
            pause.as_secs()
        );
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => {
                tracing::warn!("stopping before managing to {what}; it is tried again at the next start");
                return None;
            }
        }
        pause = (pause * 2).min(SETTLE_MAX_PAUSE);
    }
}

/// Publishes the build log of the derivation the job's request named
/// (hook requests do), if `upload-build-logs` is on. Returns the error and
/// its pace when it failed in a way a retry can fix; a missing log is
/// normal (substituted, `keep-build-log = false`), and a log we refuse to
/// read (corrupt, a symlink) is skipped with a warning.
async fn upload_log(
    d: &Daemon,
    entry: &super::TargetEntry,
    request_id: i64,
) -> Option<(String, Failure)> {
    let svc = &d.svc;
    if !svc.extras.upload_build_logs {
        return None;
    }
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => {
            return Some((
                format!("build log: reading the request: {e:#}"),
                Failure::Transient,
            ));
        }
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    match upload_build_log(entry.target.as_ref(), &svc.extras.build_log_dir, &drv).await {
        Ok(BuildLogOutcome::Uploaded { bytes }) => {
            tracing::info!("build log of {shown} → {}: {bytes} bytes", entry.id)
        }
        Ok(BuildLogOutcome::AlreadyPresent) => {}
        Ok(BuildLogOutcome::NoLog) => tracing::debug!("no build log kept for {shown}"),
        Err(e) if e.is_retriable() => {
            return Some((
                format!("outputs uploaded, but not the build log yet: {e}"),
                Failure::from_transient(e.is_transient()),
            ));
        }
        Err(e) => tracing::warn!("not uploading the build log of {shown}: {e}"),
    }
    None
}

/// Publishes the signed realisation (`realisations/<id>.doi`) of the
/// output `root` of the request's derivation, when that derivation is
/// content-addressed (floating) and `upload-realisations` is on. Only
/// `root`'s own realisation: the job of each other output publishes its
/// own once its narinfo is in, so a realisation never names a path the
/// cache lacks. Returns a failure a retry can fix, like [`upload_log`].
async fn upload_realisations(
    d: &Daemon,
    entry: &super::TargetEntry,
    request_id: i64,
    root: &nix_outbox_core::StorePath,
) -> Option<(String, Failure)> {
    let svc = &d.svc;
    if !svc.extras.upload_realisations {
        return None;
    }
    let retry = |what: String, e: &dyn std::fmt::Display, transient: bool| {
        let failure = if transient {
            Failure::Transient
        } else {
            Failure::Permanent
        };
        Some((
            format!("outputs uploaded, but not the realisation yet: {what}: {e}"),
            failure,
        ))
    };
    let drv = match svc.with_queue(move |q| q.request(request_id)).await {
        Ok(req) => req?.drv_path?,
        Err(e) => return retry("reading the request".into(), &format!("{e:#}"), true),
    };
    let drv = svc.store_dir.parse_path(&drv).ok()?;
    let shown = svc.store_dir.display(&drv);
    let ids = match nix_outbox_store::ca_realisation_ids(&svc.pool, &drv).await {
        Ok(ids) => ids,
        // Gone (collected) or not something we can hash: nothing to retry.
        Err(e @ (StoreError::NotValid { .. } | StoreError::Derivation { .. })) => {
            tracing::warn!("not uploading realisations of {shown}: {e}");
            return None;
        }
        Err(e) => return retry(format!("hashing {shown}"), &e, true),
    };
    // The realisations the uploaded one depends on (inputs' outputs its
    // output references) come along: their paths are in `root`'s closure,
    // uploaded already, and a substituter needs them all (Nix 2.8's
    // `DrvOutputSubstitutionGoal`), including those of input-addressed or
    // fixed-output inputs, whose jobs upload none.
    let mut todo: Vec<(String, bool)> = ids.into_iter().map(|(_, id)| (id, true)).collect();
    let mut seen: std::collections::HashSet<String> =
        todo.iter().map(|(id, _)| id.clone()).collect();
    while let Some((id, own)) = todo.pop() {
        let json = match svc.pool.get().await {
            Ok(mut conn) => conn.query_realisation(&id).await,
            Err(e) => Err(e),
        };
        let json = match json {
            Ok(Some(json)) => json,
            // Not recorded (e.g. not built here): nothing to publish.
            Ok(None) => continue,
            Err(e) => return retry(format!("querying {id}"), &e, true),
        };
        let parsed = serde_json::from_str::<serde_json::Value>(&json).unwrap_or_default();
        // Of the derivation's own outputs, only the job's (see above).
        if own && parsed["outPath"].as_str() != Some(root.as_str()) {
            continue;
        }
        if let Some(deps) = parsed["dependentRealisations"].as_object() {
            for dep in deps.keys() {
                if nix_outbox_store::is_valid_drv_output_id(dep) && seen.insert(dep.clone()) {
                    todo.push((dep.clone(), false));
                }
            }
        }
        match upload_realisation(entry.target.as_ref(), &id, &json, &svc.keys).await {
            Ok(RealisationOutcome::Uploaded) => {
                tracing::info!("realisation {id} of {shown} → {}", entry.id)
            }
            Ok(RealisationOutcome::AlreadyPresent) => {}
            Err(e) if e.is_retriable() => return retry(id, &e, e.is_transient()),
            Err(e) => tracing::warn!("not uploading realisation {id} of {shown}: {e}"),
        }
    }
    None
}

/// Records the closure paths left out on purpose, for `status`. Only
/// bookkeeping: a failure is logged, never fails the job.
async fn record_skips(d: &Daemon, target: &str, report: &ClosureReport, now: i64) {
    if report.skipped.is_empty() {
        return;
    }
    let skips: Vec<SkippedPath> = report
        .skipped
        .iter()
        .map(|(p, s)| SkippedPath {
            path: p.as_str().to_owned(),
            reason: s.reason.as_str().to_owned(),
            detail: s.detail.clone(),
        })
        .collect();
    tracing::debug!("{} path(s) left out of uploads to {target}", skips.len());
    let id = target.to_owned();
    if let Err(e) = d
        .svc
        .with_queue(move |q| q.mark_skipped(&id, &skips, now))
        .await
    {
        tracing::warn!("cannot record skipped paths for {target} in the queue: {e:#}");
    }
}

/// The job's `last_error`, as `nix-outbox status` shows it. A permanent
/// failure says so: the error names the cause (and usually the remedy),
/// and the reader must know that waiting will not help but that the job is
/// not lost either.
fn failure_message(e: &dyn std::fmt::Display, failure: Failure, cap: Duration) -> String {
    match failure {
        Failure::Transient => e.to_string(),
        Failure::Permanent => format!(
            "needs fixing: {e} (this does not pass by itself; the job stays queued and is \
             retried, at pauses growing to {}, until it succeeds; `nix-outbox retry` \
             retries at once)",
            human(cap)
        ),
    }
}

fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
