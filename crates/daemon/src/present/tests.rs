//! The known-present decorator: answers from memory, remembers across
//! restarts through the queue, expires, and honours a forget.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_outbox_queue::Queue;
use nix_outbox_upload::Target;

use crate::test_target::{Probe, disk_full};
use crate::{Clock, KnownPresent, RELOAD_EVERY};

const T: &str = "file:///cache";

/// A valid hash part (digits are nixbase32).
fn hash(i: u32) -> String {
    format!("{i:032}")
}

struct Setup {
    _dir: tempfile::TempDir,
    cache: std::path::PathBuf,
    queue: Arc<Mutex<Queue>>,
    clock: Clock,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let queue = Queue::open(&dir.path().join("queue.sqlite")).unwrap();
        Self {
            _dir: dir,
            cache,
            queue: Arc::new(Mutex::new(queue)),
            clock: Clock::following_tokio(1_000_000),
        }
    }

    /// A fresh decorator (a daemon start) over a fresh probe.
    fn target(&self, ttl: Duration) -> (Arc<Probe>, KnownPresent) {
        let probe = Arc::new(Probe::new(self.cache.clone(), self.clock, 0, disk_full));
        let kp = KnownPresent::new(probe.clone(), T.into(), self.queue.clone(), self.clock, ttl);
        (probe, kp)
    }

    fn put_narinfo_file(&self, h: &str) {
        std::fs::write(self.cache.join(format!("{h}.narinfo")), "x").unwrap();
    }

    fn in_queue(&self, hashes: &[String]) -> usize {
        let q = self.queue.lock().unwrap();
        let now = self.clock.now();
        q.known_present(T, hashes, now, i64::MAX).unwrap().len()
    }
}

#[tokio::test(start_paused = true)]
async fn answers_from_memory_and_remembers_across_restarts() {
    let s = Setup::new();
    let (probe, kp) = s.target(Duration::from_secs(3600));
    s.put_narinfo_file(&hash(1));

    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 1, "the second answer came from memory");
    // Absent paths are asked about every time: they are about to be uploaded.
    assert!(!kp.has_narinfo(&hash(2)).await.unwrap());
    assert!(!kp.has_narinfo(&hash(2)).await.unwrap());
    assert_eq!(probe.checks(), 3);
    // What we upload is known at once.
    kp.put_narinfo(&hash(3), "StorePath: x\n").await.unwrap();
    assert!(kp.has_narinfo(&hash(3)).await.unwrap());
    assert_eq!(probe.checks(), 3);

    let all = [hash(1), hash(2), hash(3)];
    assert_eq!(s.in_queue(&all), 0, "nothing written before the flush");
    kp.flush().await;
    assert_eq!(s.in_queue(&all), 2);
    kp.flush().await; // nothing new: no write

    // A restart reads what was known from the queue.
    let (probe, kp) = s.target(Duration::from_secs(3600));
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert!(kp.has_narinfo(&hash(3)).await.unwrap());
    assert!(!kp.has_narinfo(&hash(2)).await.unwrap());
    assert_eq!(probe.checks(), 1, "only the absent path was asked about");
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_ttl() {
    let s = Setup::new();
    let (probe, kp) = s.target(Duration::from_secs(60));
    s.put_narinfo_file(&hash(1));
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    kp.flush().await;
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    // 60 s old: asked again, and known afresh.
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 2);
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 2);

    // A path deleted from the cache is found missing once its entry expired.
    std::fs::remove_file(s.cache.join(format!("{}.narinfo", hash(1)))).unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(!kp.has_narinfo(&hash(1)).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn reloading_prunes_and_applies_a_forget() {
    let s = Setup::new();
    let (probe, kp) = s.target(Duration::from_secs(3600));
    for i in 1..=3 {
        s.put_narinfo_file(&hash(i));
        assert!(kp.has_narinfo(&hash(i)).await.unwrap());
    }
    kp.flush().await;
    s.queue.lock().unwrap().forget_present(T).unwrap();

    // Until the next reload the daemon still trusts its memory...
    tokio::time::advance(RELOAD_EVERY - Duration::from_secs(1)).await;
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 3);
    // ...then asks the target again.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(kp.has_narinfo(&hash(1)).await.unwrap());
    assert_eq!(probe.checks(), 4);

    // Expired rows leave the table at a reload.
    kp.flush().await;
    let (probe, kp) = s.target(Duration::from_secs(10));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(kp.has_narinfo(&hash(2)).await.unwrap());
    let left = s
        .queue
        .lock()
        .unwrap()
        .present_entries(T, s.clock.now(), i64::MAX);
    let left: Vec<String> = left.unwrap().into_iter().map(|(h, _)| h).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(probe.narinfo_checks.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_asks_the_target_only_about_the_unknown() {
    let s = Setup::new();
    let (probe, kp) = s.target(Duration::from_secs(3600));
    let all: Vec<String> = (1..=100).map(hash).collect();
    // Half of them in the cache; none known yet.
    for h in all.iter().step_by(2) {
        s.put_narinfo_file(h);
    }
    let answers = kp.has_narinfos(&all).await.unwrap();
    let want: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
    assert_eq!(answers, want, "answers in the order asked");
    assert_eq!(probe.checks(), 100);

    // Asked again: the 50 present come from memory, the 50 absent are
    // asked about again (they are about to be uploaded).
    assert_eq!(kp.has_narinfos(&all).await.unwrap(), want);
    assert_eq!(probe.checks(), 150);

    // After a restart too, from the queue.
    kp.flush().await;
    let (probe, kp) = s.target(Duration::from_secs(3600));
    assert_eq!(kp.has_narinfos(&all).await.unwrap(), want);
    assert_eq!(probe.checks(), 50);
    // Nothing unknown left to ask: no question at all.
    let present: Vec<String> = all.iter().step_by(2).cloned().collect();
    assert_eq!(kp.has_narinfos(&present).await.unwrap(), vec![true; 50]);
    assert_eq!(probe.checks(), 50);
}

#[tokio::test(start_paused = true)]
async fn one_upload_per_path_at_a_time() {
    let s = Setup::new();
    let (_probe, kp) = s.target(Duration::from_secs(3600));
    let kp = Arc::new(kp);
    let first = kp.claim_upload(&hash(1)).await;
    assert!(!first.waited);
    // Another path is not held up.
    let other = kp.claim_upload(&hash(2)).await;
    assert!(!other.waited);

    // The same path waits until the first claim ends, and says it waited.
    let kp2 = kp.clone();
    let second = tokio::spawn(async move { kp2.claim_upload(&hash(1)).await.waited });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!second.is_finished(), "the second claim must wait");
    drop(first);
    assert!(second.await.unwrap(), "the second claim waited");
    drop(other);
    assert!(
        kp.uploads_in_progress() == 0,
        "locks are forgotten once released"
    );
}
