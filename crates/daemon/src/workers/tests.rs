//! The worker's retry loop on tokio's paused clock, mini-redis style: the
//! real worker, queue, store and file:// cache, with a probe in front of
//! the cache that fails the first attempts. Virtual time drives both the
//! worker's sleeps and the queue's timestamps (see `clock.rs`), so the
//! attempt times are checked to the second against the policy, and hours
//! of failures take a moment.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_queue::{Job, JobState, Queue, Source};
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_testkit as tk;
use nix_outbox_upload::{Target, TargetConfig, UploadError};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::outcome::Outcome;
use super::{record, worker_loop};
use crate::service::Daemon;
use crate::test_target::{Probe, denied, disk_full};
use crate::{
    Clock, DEFAULT_PRESENT_TTL, Failure, Jitter, Options, RetryPolicy, Service, TargetEntry,
};

/// Unix time when each test starts.
const START: u64 = 1_700_000_000;
const SEED: u64 = 0x5eed;

struct Rig {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    d: Arc<Daemon>,
    probe: Arc<Probe>,
    target_id: String,
    shutdown: CancellationToken,
}

/// One worker over one file:// target whose first `failures` upload
/// attempts fail with `error`.
fn rig(failures: usize, error: fn(&str) -> UploadError) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let clock = Clock::following_tokio(START);
    let probe = Arc::new(Probe::new(cache.clone(), clock, failures, error));
    let config = TargetConfig::parse(&format!("file://{}", cache.display())).unwrap();
    let target_id = config.id();
    assert_eq!(target_id, probe.id());
    let queue = Queue::open(&dir.path().join("queue.sqlite")).unwrap();
    let store_dir = StoreDir::default();
    let svc = Arc::new(Service {
        pool: StorePool::new(StoreAddress::from_env().unwrap(), store_dir.clone(), 4),
        store_dir,
        targets: vec![TargetEntry {
            config,
            id: target_id.clone(),
            target: probe.clone(),
        }],
        keys: vec![SecretKey::generate("retry-test-1").unwrap()],
        spool_dir: dir.path().join("spool"),
        workers: 1,
        queue: Arc::new(Mutex::new(queue)),
        wake: Notify::new(),
        new_requests: Notify::new(),
        // The probe target keeps no logs; this test is about NAR retries.
        extras: crate::config::CacheExtras {
            upload_build_logs: false,
            ..Default::default()
        },
    });
    let options = Options {
        clock,
        retry: RetryPolicy::default(),
        jitter: Jitter::seeded(SEED),
        present_ttl: DEFAULT_PRESENT_TTL,
        ..Options::default()
    };
    Rig {
        _dir: dir,
        cache,
        d: Daemon::new(svc, options),
        probe,
        target_id,
        shutdown: CancellationToken::new(),
    }
}

impl Rig {
    /// Queues the store path `full` for the target, due now; returns the
    /// job's path (the basename).
    async fn enqueue(&self, full: &str) -> String {
        let base = full.rsplit('/').next().unwrap().to_owned();
        let (path, target, now) = (base.clone(), self.target_id.clone(), self.d.now());
        let outs = vec![full.to_owned()];
        self.d
            .svc
            .with_queue(move |q| {
                let id = q.add_request(Source::Push, None, &outs, now)?;
                q.expand_request(id, &[path], &[target], now)
            })
            .await
            .unwrap();
        base
    }

    fn start_worker(&self) -> JoinHandle<anyhow::Result<()>> {
        tokio::spawn(worker_loop(self.d.clone(), 0, self.shutdown.clone()))
    }

    async fn stop(&self, worker: JoinHandle<anyhow::Result<()>>) {
        self.shutdown.cancel();
        worker.await.unwrap().unwrap();
    }

    /// Until the job is done, polling each virtual second; fails at the
    /// real-time `deadline`.
    async fn wait_done(&self, path: &str, deadline: std::time::Instant) {
        while self.job(path).await.state != JobState::Done {
            assert!(
                std::time::Instant::now() < deadline,
                "not done: {:?}",
                self.job(path).await
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn job(&self, path: &str) -> Job {
        let (path, target) = (path.to_owned(), self.target_id.clone());
        let job = self.d.svc.with_queue(move |q| q.job(&path, &target));
        job.await.unwrap().expect("the job is never deleted")
    }
}

/// A fresh one-output store path, built by the real Nix.
fn build_fresh(name: &str) -> String {
    let script = format!("echo {} > $out", tk::nonce());
    tk::nix_build(&tk::sh_derivation(name, &["out"], &script)).remove(0)
}

/// The attempt times the policy dictates after `failures`: the first at
/// START, each next one the delay later (rounded up to the second, as the
/// queue stores time), drawing from the same sequence as the daemon.
fn schedule(failures: &[Failure]) -> Vec<Duration> {
    let jitter = Jitter::seeded(SEED);
    let mut at = Duration::from_secs(START);
    let mut times = vec![at];
    for (n, failure) in failures.iter().enumerate() {
        let delay = RetryPolicy::default().delay(n as u32 + 1, *failure, None, jitter.next());
        at += Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0));
        times.push(at);
    }
    times
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_on_schedule_until_done() {
    let full = build_fresh("retry-loop");
    let rig = rig(6, disk_full);
    let path = rig.enqueue(&full).await;
    let worker = rig.start_worker();

    // The last attempt talks to the real store; give it real time.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    rig.wait_done(&path, deadline).await;
    rig.stop(worker).await;

    // Six failures (attempts 1..=6, each retried up to 2^n s later), then
    // the upload: exactly when the policy said.
    let times = rig.probe.attempt_times();
    assert_eq!(times, schedule(&[Failure::Transient; 6]));
    assert!(times[6] - times[0] >= Duration::from_secs(6), "{times:?}");
    let job = rig.job(&path).await;
    assert_eq!(job.attempts, 7);
    assert_eq!(job.last_error, None);
    // In the cache, and remembered as present there.
    let hash = &path[..32];
    assert!(rig.cache.join(format!("{hash}.narinfo")).exists());
    let (target, hashes, now) = (rig.target_id.clone(), vec![hash.to_owned()], rig.d.now());
    let known = rig
        .d
        .svc
        .with_queue(move |q| q.known_present(&target, &hashes, now, 3600));
    assert_eq!(known.await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_keep_the_job_at_the_capped_pace() {
    let rig = rig(usize::MAX, denied);
    // Never built: every attempt fails before the store is asked anything.
    let path = rig
        .enqueue(&format!("/nix/store/{:032}-never-built", 7))
        .await;
    let worker = rig.start_worker();
    tokio::time::sleep(Duration::from_secs(12 * 3600)).await;
    rig.stop(worker).await;

    let times = rig.probe.attempt_times();
    assert_eq!(times, schedule(&vec![Failure::Permanent; times.len() - 1]));
    // At the cap from the third retry on, and never beyond it.
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert!((15..=30).contains(&gaps[0]), "{gaps:?}");
    assert!(
        gaps[2..].iter().all(|g| (150..=300).contains(g)),
        "{gaps:?}"
    );
    assert!(times.len() > 12 * 3600 / 300, "{} attempts", times.len());

    // Still queued, with what to do about it, as `status` shows it.
    let job = rig.job(&path).await;
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.attempts as usize, times.len());
    let status = rig.d.svc.with_queue(|q| q.status(5)).await.unwrap();
    let t = &status.targets[0];
    assert_eq!((t.failing, t.done, t.skipped), (1, 0, 0));
    let msg = t.recent_failures[0].last_error.clone().unwrap();
    for needle in [
        "needs fixing",
        "writable by the user",
        "stays queued",
        "5 min",
    ] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_servers_retry_after_is_never_cut_short() {
    let rig = rig(usize::MAX, disk_full);
    // Longer than the policy's own cap: only the server's word explains it.
    *rig.probe.retry_after.lock().unwrap() = Some(Duration::from_secs(600));
    let path = rig
        .enqueue(&format!("/nix/store/{:032}-never-built", 8))
        .await;
    let worker = rig.start_worker();
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    rig.stop(worker).await;

    let times = rig.probe.attempt_times();
    let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert!(gaps.len() >= 3 * 3600 / 660 - 1, "{gaps:?}");
    // At least what was asked, plus at most 10% so that workers told the
    // same do not return in step (and the queue's whole seconds).
    assert!(gaps.iter().all(|g| (600..=661).contains(g)), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g != gaps[0]), "jittered: {gaps:?}");
    assert_eq!(rig.job(&path).await.state, JobState::Pending);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_the_queue_refuses_is_recorded_once_it_accepts() {
    let full = build_fresh("settle");
    let rig = rig(0, disk_full);
    // Another process takes the database's write lock while the upload
    // runs, and keeps it for longer than the busy timeout: recording the
    // outcome fails, as it does on a full disk.
    let db = rig._dir.path().join("queue.sqlite");
    let locker: Arc<Mutex<Option<rusqlite::Connection>>> = Arc::default();
    let held = locker.clone();
    *rig.probe.before_narinfo.lock().unwrap() = Some(Box::new(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        *held.lock().unwrap() = Some(conn);
    }));
    let path = rig.enqueue(&full).await;
    let worker = rig.start_worker();

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while locker.lock().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reached the narinfo"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The outcome is written after the lock was taken: wait until the
    // queue has refused it (after its busy timeout, in real time: SQLite's
    // busy wait does not follow tokio's paused clock).
    while rig.d.metrics.queue_write_refusals() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outcome was never refused"
        );
        assert!(!worker.is_finished(), "the worker ended on a queue error");
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(100)))
            .await
            .unwrap();
    }
    assert!(!worker.is_finished(), "the worker ended on a queue error");
    let hash = &path[..32];
    assert!(rig.cache.join(format!("{hash}.narinfo")).exists());

    assert_eq!(rig.job(&path).await.state, JobState::InFlight);

    // The lock goes: the outcome is recorded, and the job is done.
    drop(locker.lock().unwrap().take());
    rig.wait_done(&path, deadline).await;
    assert!(!worker.is_finished());
    rig.stop(worker).await;
    let job = rig.job(&path).await;
    assert_eq!((job.attempts, job.last_error), (1, None));
}

#[tokio::test(start_paused = true)]
async fn an_outcome_for_a_job_no_longer_in_flight_is_dropped_not_retried() {
    let rig = rig(0, disk_full);
    // Never claimed, so never in flight: as when an earlier attempt to
    // record did commit after all.
    let path = rig
        .enqueue(&format!(
            "{}/{}-x",
            rig.d.svc.store_dir.as_str(),
            "0".repeat(32)
        ))
        .await;
    let (p, target, now) = (path.clone(), rig.target_id.clone(), rig.d.now());
    let stop = rig.shutdown.clone();
    let settled = record::outcome(&rig.d, &stop, p, target, Outcome::Done, now);
    // Virtual time: an hour of retries would pass in a moment.
    tokio::time::timeout(Duration::from_secs(3600), settled)
        .await
        .expect("settle kept retrying a write that can never succeed");
    assert_eq!(rig.job(&path).await.state, JobState::Pending);
}

#[tokio::test(start_paused = true)]
async fn a_stop_ends_the_retries_of_a_refused_outcome() {
    let rig = rig(0, disk_full);
    let (d, stop) = (rig.d.clone(), rig.shutdown.clone());
    // A write the queue refuses every time (any error but "not in flight").
    let refused = |_: &mut Queue| Err::<(), _>(nix_outbox_queue::QueueError::NoSuchRequest(1));
    let settling = tokio::spawn(async move {
        record::until_written(&d, &stop, "record", "meanwhile", refused).await
    });
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        !settling.is_finished(),
        "gave up on an outcome while running"
    );
    rig.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(60), settling)
        .await
        .expect("the stop did not end the retries")
        .unwrap();
}
