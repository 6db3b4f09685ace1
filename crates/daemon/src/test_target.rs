//! For the service's tests: a real `FileTarget` behind a probe that counts
//! what is asked of it and can fail `ensure_cache_info` (the first thing an
//! upload asks, before the store is touched) a given number of times.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use nix_outbox_upload::{BoxFuture, FileTarget, NarWriter, Target, UploadError};

use crate::Clock;

pub struct Probe {
    inner: FileTarget,
    clock: Clock,
    failures_left: AtomicUsize,
    error: fn(&str) -> UploadError,
    /// When each `ensure_cache_info` call came (one per upload attempt).
    pub attempts: Mutex<Vec<Duration>>,
    /// How many existence checks reached the cache directory.
    pub narinfo_checks: AtomicUsize,
    /// What the probe says the server asked for (`Retry-After`).
    pub retry_after: Mutex<Option<Duration>>,
    /// Run once, just before the first narinfo is written.
    pub before_narinfo: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Probe {
    /// A probe on the cache directory `root` that fails the first
    /// `failures` upload attempts (`usize::MAX`: all) with `error`.
    pub fn new(
        root: PathBuf,
        clock: Clock,
        failures: usize,
        error: fn(&str) -> UploadError,
    ) -> Self {
        Self {
            inner: FileTarget::new(root),
            clock,
            failures_left: AtomicUsize::new(failures),
            error,
            attempts: Mutex::new(Vec::new()),
            narinfo_checks: AtomicUsize::new(0),
            retry_after: Mutex::new(None),
            before_narinfo: Mutex::new(None),
        }
    }

    pub fn attempt_times(&self) -> Vec<Duration> {
        self.attempts.lock().unwrap().clone()
    }

    pub fn checks(&self) -> usize {
        self.narinfo_checks.load(Ordering::SeqCst)
    }
}

/// A full disk: transient.
pub fn disk_full(target: &str) -> UploadError {
    io_error(target, std::io::ErrorKind::StorageFull)
}

/// No permission: permanent.
pub fn denied(target: &str) -> UploadError {
    io_error(target, std::io::ErrorKind::PermissionDenied)
}

fn io_error(target: &str, kind: std::io::ErrorKind) -> UploadError {
    UploadError::TargetIo {
        target: target.to_owned(),
        op: "write",
        path: format!("{target}/nix-cache-info"),
        source: std::io::Error::from(kind),
    }
}

impl Target for Probe {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn retry_after(&self) -> Option<Duration> {
        *self.retry_after.lock().unwrap()
    }

    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.attempts.lock().unwrap().push(self.clock.unix());
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            let e = (self.error)(self.inner.id());
            return Box::pin(async move { Err(e) });
        }
        self.inner.ensure_cache_info(store_dir)
    }

    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        self.narinfo_checks.fetch_add(1, Ordering::SeqCst);
        self.inner.has_narinfo(hash_part)
    }

    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        if let Some(f) = self.before_narinfo.lock().unwrap().take() {
            f();
        }
        self.inner.put_narinfo(hash_part, text)
    }

    fn put_listing<'a>(
        &'a self,
        hash_part: &'a str,
        json: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.put_listing(hash_part, json)
    }

    fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
        self.inner.begin_nar()
    }
    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        self.inner.nar_slots()
    }
}

/// A service with no target, its queue and spool in `dir`: for tests of
/// the daemon's plumbing (the socket, the stop), not of uploads.
pub fn bare_service(dir: &std::path::Path) -> std::sync::Arc<crate::Service> {
    use std::sync::{Arc, Mutex};
    let queue = nix_outbox_queue::Queue::open(&dir.join("queue.sqlite")).unwrap();
    let store_dir = StoreDir::default();
    Arc::new(crate::Service {
        pool: nix_outbox_store::StorePool::new(
            nix_outbox_store::StoreAddress::from_env().unwrap(),
            store_dir.clone(),
            2,
        ),
        store_dir,
        targets: Vec::new(),
        keys: vec![nix_outbox_core::keys::SecretKey::generate("bare-test-1").unwrap()],
        spool_dir: dir.join("spool"),
        workers: 1,
        queue: Arc::new(Mutex::new(queue)),
        wake: tokio::sync::Notify::new(),
        new_requests: tokio::sync::Notify::new(),
        extras: crate::CacheExtras::default(),
    })
}
