//! In-flight progress: which jobs are uploading now and how many bytes
//! they have written, kept in the daemon's memory (the queue only knows a
//! job is `in_flight`) and written every second to `<state-dir>/progress.json`
//! for `nix-outbox status` and `push --wait`.
//!
//! The file is a snapshot, not a record: written atomically (temp file and
//! rename) but never fsynced, removed at shutdown, and trusted by readers
//! only while the daemon is up and the file is fresh.
//!
//! Bytes are counted where the target's NAR writer receives them, by a
//! [`Tracked`] target wrapped around the real one: these are *compressed*
//! bytes, compared with the NAR size the store records (the only size known
//! in advance).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix_outbox_core::{StoreDir, atomic_write};
use nix_outbox_upload::{
    BoxFuture, ClosureReport, Compression, NarDigest, NarWriter, Target, UploadClaim, UploadError,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

/// The file `nix-outbox status` reads, as JSON. Field names are stable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressFile {
    /// The daemon's process id.
    pub pid: u32,
    /// When the daemon wrote this (unix seconds); it writes at least every
    /// [`HEARTBEAT`].
    pub updated_at: i64,
    /// Where `/metrics` is served (the bound address, also for port 0).
    pub metrics_address: Option<String>,
    pub in_flight: Vec<InFlightJob>,
    /// Per configured target, since the daemon started.
    pub totals: Vec<TargetTotals>,
}

/// One job being uploaded now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InFlightJob {
    pub target: String,
    /// The job's store path (basename).
    pub path: String,
    /// When the upload started (unix seconds).
    pub started_at: i64,
    /// Paths in the job's closure, once computed.
    pub closure_paths: Option<u64>,
    /// Of those, how many the target lacked, once asked.
    pub to_upload: Option<u64>,
    /// NAR uploads started so far (those in flight included).
    pub nars_started: u64,
    /// NARs going up right now (a closure's paths go up concurrently).
    pub nars_in_flight: u64,
    /// Paths published (narinfo written) so far.
    pub published: u64,
    /// The NAR sizes the store records for the NARs in flight, summed.
    pub in_flight_nar_bytes: u64,
    /// Compressed bytes written for the whole job so far.
    pub written: u64,
    /// `written` over the time since `started_at`.
    pub bytes_per_second: u64,
}

/// What a target received since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetTotals {
    pub target: String,
    pub paths_uploaded: u64,
    pub nar_bytes: u64,
    pub file_bytes: u64,
}

/// How often the file is rewritten when nothing changed, so a reader can
/// tell a live daemon's file from one left by a crash.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The jobs uploading now.
#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    jobs: BTreeMap<u64, Arc<JobProgress>>,
    totals: BTreeMap<String, TargetTotals>,
}

/// One job's counters, updated by its [`Tracked`] target.
pub struct JobProgress {
    target: String,
    path: String,
    started_at: i64,
    started: Instant,
    /// `u64::MAX`: not known yet.
    closure_paths: AtomicU64,
    to_upload: AtomicU64,
    nars_started: AtomicU64,
    nars_in_flight: AtomicU64,
    published: AtomicU64,
    in_flight_nar_bytes: AtomicU64,
    written: AtomicU64,
}

/// A job registered as in flight until dropped.
pub struct JobGuard<'a> {
    in_flight: &'a InFlight,
    id: u64,
    progress: Arc<JobProgress>,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.in_flight.lock().jobs.remove(&self.id);
    }
}

impl JobGuard<'_> {
    /// `target` with its NAR bytes counted for this job.
    pub fn track<'t>(&self, target: &'t dyn Target) -> Tracked<'t> {
        Tracked {
            inner: target,
            progress: self.progress.clone(),
        }
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job of `path` to `target` as started at `now`.
    pub fn start(&self, target: &str, path: &str, now: i64) -> JobGuard<'_> {
        let progress = Arc::new(JobProgress {
            target: target.to_owned(),
            path: path.to_owned(),
            started_at: now,
            started: Instant::now(),
            closure_paths: AtomicU64::new(u64::MAX),
            to_upload: AtomicU64::new(u64::MAX),
            nars_started: AtomicU64::new(0),
            nars_in_flight: AtomicU64::new(0),
            published: AtomicU64::new(0),
            in_flight_nar_bytes: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        s.jobs.insert(id, progress.clone());
        JobGuard {
            in_flight: self,
            id,
            progress,
        }
    }

    pub(super) fn add_totals(&self, target: &str, report: &ClosureReport) {
        let mut s = self.lock();
        let t = s
            .totals
            .entry(target.to_owned())
            .or_insert_with(|| TargetTotals {
                target: target.to_owned(),
                ..Default::default()
            });
        t.paths_uploaded += report.uploaded as u64;
        t.nar_bytes += report.nar_bytes;
        t.file_bytes += report.file_bytes;
    }

    /// The jobs in flight (oldest first) and the totals per target.
    pub fn snapshot(&self, targets: &[String]) -> (Vec<InFlightJob>, Vec<TargetTotals>) {
        let s = self.lock();
        let known = |a: &AtomicU64| Some(a.load(Relaxed)).filter(|v| *v != u64::MAX);
        let jobs = s
            .jobs
            .values()
            .map(|j| {
                let written = j.written.load(Relaxed);
                let secs = j.started.elapsed().as_secs_f64();
                InFlightJob {
                    target: j.target.clone(),
                    path: j.path.clone(),
                    started_at: j.started_at,
                    closure_paths: known(&j.closure_paths),
                    to_upload: known(&j.to_upload),
                    nars_started: j.nars_started.load(Relaxed),
                    nars_in_flight: j.nars_in_flight.load(Relaxed),
                    published: j.published.load(Relaxed),
                    in_flight_nar_bytes: j.in_flight_nar_bytes.load(Relaxed),
                    written,
                    bytes_per_second: if secs > 0.0 {
                        (written as f64 / secs) as u64
                    } else {
                        0
                    },
                }
            })
            .collect();
        let totals = targets
            .iter()
            .map(|t| {
                s.totals.get(t).cloned().unwrap_or_else(|| TargetTotals {
                    target: t.clone(),
                    ..Default::default()
                })
            })
            .collect();
        (jobs, totals)
    }
}

/// A target whose NAR writes are counted into a job's progress; every
/// other call goes to the wrapped target unchanged.
pub struct Tracked<'a> {
    inner: &'a dyn Target,
    progress: Arc<JobProgress>,
}

impl Target for Tracked<'_> {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after()
    }
    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        self.inner.nar_slots()
    }
    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.ensure_cache_info(store_dir)
    }
    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        self.inner.has_narinfo(hash_part)
    }
    fn has_narinfos<'a>(
        &'a self,
        hash_parts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<bool>, UploadError>> {
        Box::pin(async move {
            let answers = self.inner.has_narinfos(hash_parts).await?;
            let missing = answers.iter().filter(|p| !**p).count() as u64;
            self.progress
                .closure_paths
                .store(hash_parts.len() as u64, Relaxed);
            self.progress.to_upload.store(missing, Relaxed);
            Ok(answers)
        })
    }
    fn claim_upload<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, UploadClaim> {
        self.inner.claim_upload(hash_part)
    }
    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            self.inner.put_narinfo(hash_part, text).await?;
            self.progress.published.fetch_add(1, Relaxed);
            Ok(())
        })
    }
    fn put_listing<'a>(
        &'a self,
        hash_part: &'a str,
        json: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.put_listing(hash_part, json)
    }
    fn has_build_log<'a>(&'a self, drv: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        self.inner.has_build_log(drv)
    }
    fn put_build_log<'a>(
        &'a self,
        drv: &'a str,
        log: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.put_build_log(drv, log)
    }
    fn has_realisation<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        self.inner.has_realisation(id)
    }
    fn put_realisation<'a>(
        &'a self,
        id: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.put_realisation(id, json)
    }
    fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
        Box::pin(async move {
            let inner = self.inner.begin_nar().await?;
            Ok(Box::new(Counting {
                inner,
                progress: self.progress.clone(),
                counted: None,
            }) as Box<dyn NarWriter>)
        })
    }
}

/// A NAR writer counting the bytes it passes on, and itself among the
/// NARs in flight from `prepare` until it is finished, aborted or dropped.
struct Counting {
    inner: Box<dyn NarWriter>,
    progress: Arc<JobProgress>,
    /// The NAR size added to `in_flight_nar_bytes`, once counted in flight.
    counted: Option<u64>,
}

impl Counting {
    fn done(&mut self) {
        if let Some(size) = self.counted.take() {
            self.progress.nars_in_flight.fetch_sub(1, Relaxed);
            self.progress.in_flight_nar_bytes.fetch_sub(size, Relaxed);
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.done();
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.written.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl NarWriter for Counting {
    fn prepare(
        &mut self,
        expected: &NarDigest,
        compression: Compression,
    ) -> Result<(), UploadError> {
        let p = &self.progress;
        p.nars_started.fetch_add(1, Relaxed);
        if self.counted.is_none() {
            p.nars_in_flight.fetch_add(1, Relaxed);
            // NarSize 0: a store too old to record it; counted as 0.
            p.in_flight_nar_bytes.fetch_add(expected.size, Relaxed);
            self.counted = Some(expected.size);
        }
        self.inner.prepare(expected, compression)
    }
    fn finish(
        mut self: Box<Self>,
        file_name: String,
    ) -> BoxFuture<'static, Result<String, UploadError>> {
        let inner = std::mem::replace(&mut self.inner, Box::new(Finished));
        let progress = self.progress.clone();
        let counted = self.counted.take();
        drop(self);
        Box::pin(async move {
            let res = inner.finish(file_name).await;
            if let Some(size) = counted {
                progress.nars_in_flight.fetch_sub(1, Relaxed);
                progress.in_flight_nar_bytes.fetch_sub(size, Relaxed);
            }
            res
        })
    }
    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        let inner = std::mem::replace(&mut self.inner, Box::new(Finished));
        self.done();
        inner.abort()
    }
}

/// What a [`Counting`] holds once its writer was handed on.
struct Finished;

impl Write for Finished {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("NAR writer already finished"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl NarWriter for Finished {
    fn finish(self: Box<Self>, _: String) -> BoxFuture<'static, Result<String, UploadError>> {
        Box::pin(async { Err(UploadError::Internal("NAR writer already finished".into())) })
    }
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// Reads a progress file; `None` when missing or unreadable (a reader
/// then shows the queue alone).
pub fn read(path: &Path) -> Option<ProgressFile> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `<state-dir>/progress.json` every second while anything changes
/// and every [`HEARTBEAT`] otherwise; removes it at shutdown.
pub(crate) async fn write_loop(
    d: Arc<Daemon>,
    path: PathBuf,
    metrics_address: Option<String>,
    close: CancellationToken,
) -> anyhow::Result<()> {
    let mut last: Option<(Vec<InFlightJob>, Vec<TargetTotals>)> = None;
    let mut written_at = Instant::now();
    // Failures are reported when they start and when they stop, not every
    // second: a full disk must not flood the journal.
    let mut failing = false;
    while !close.is_cancelled() {
        let snap = d.metrics.in_flight.snapshot(d.metrics.targets());
        // Throughput changes every second while anything is in flight,
        // so an active daemon rewrites every second; an idle one rarely.
        if last.as_ref() != Some(&snap) || written_at.elapsed() >= HEARTBEAT {
            let file = ProgressFile {
                pid: std::process::id(),
                updated_at: d.now(),
                metrics_address: metrics_address.clone(),
                in_flight: snap.0.clone(),
                totals: snap.1.clone(),
            };
            let p = path.clone();
            match tokio::task::spawn_blocking(move || write_file(&p, &file)).await? {
                Ok(()) => {
                    last = Some(snap);
                    written_at = Instant::now();
                    if std::mem::take(&mut failing) {
                        tracing::info!("{} is written again", path.display());
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "{e}; `nix-outbox status` shows no progress until this is fixed \
                         (free space, or check the state directory's permissions)"
                    );
                }
                Err(e) => tracing::debug!("{e}"),
            }
        }
        tick(&close).await;
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Sleeps a second (or until shutdown). New work does not matter here:
/// the file is refreshed on the next tick anyway.
async fn tick(close: &CancellationToken) {
    tokio::select! {
        _ = close.cancelled() => {}
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}

fn write_file(path: &Path, file: &ProgressFile) -> Result<(), String> {
    let bytes = serde_json::to_vec(file).map_err(|e| format!("cannot encode progress: {e}"))?;
    // 0600: it names the paths being uploaded. Not synced: rewritten every
    // second and worthless after a crash (readers check its pid).
    atomic_write::replace_volatile(path, &bytes, 0o600).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
