//! Upstream caches (`upstream-caches`): binary caches whose paths we do not
//! upload, because clients substitute them from there.
//!
//! Asked read-only, through the upload crate's targets (`has_narinfos`:
//! HEAD for HTTP/S3, `stat` for file://); never written to. In the daemon
//! the answers go through the known-present cache with the upstream URL as
//! its target id, so a path upstream was seen to hold is not asked about
//! again for a TTL.
//!
//! An upstream cache is an optimisation, never a dependency: an error or
//! no answer within [`UPSTREAM_TIMEOUT`] means "not there" (the path is
//! uploaded), and the cache is then left alone for [`OUTAGE_PAUSE`] so an
//! offline machine does not wait a timeout per closure. An outage is
//! logged once when it starts and once when it ends, not per path.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use nix_outbox_queue::Queue;
use nix_outbox_upload::Target;
use tokio::time::Instant;

use crate::{Clock, KnownPresent};

/// How long one batch of existence checks may take before the upstream
/// cache counts as unreachable.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unreachable upstream cache is not asked at all.
pub const OUTAGE_PAUSE: Duration = Duration::from_secs(60);

/// Paths asked per batch: each batch gets its own timeout, so a large
/// closure on a slow link is not mistaken for an outage.
const BATCH: usize = 256;

pub struct UpstreamCache {
    id: String,
    target: Arc<dyn Target>,
    /// The known-present cache `target` goes through, if any (to flush).
    known: Option<Arc<KnownPresent>>,
    timeout: Duration,
    outage: Mutex<Outage>,
}

#[derive(Default)]
struct Outage {
    /// Set while the cache is considered unreachable.
    down: bool,
    /// Not asked before this.
    retry_at: Option<Instant>,
}

impl UpstreamCache {
    /// Asks `target` directly (for `nix-outbox copy`, which has no queue).
    pub fn new(id: String, target: Arc<dyn Target>) -> Self {
        Self {
            id,
            target,
            known: None,
            timeout: UPSTREAM_TIMEOUT,
            outage: Mutex::default(),
        }
    }

    /// Answers through the known-present cache kept in `queue` under the
    /// upstream's URL.
    pub(crate) fn remembered(
        mut self,
        queue: Arc<Mutex<Queue>>,
        clock: Clock,
        ttl: Duration,
    ) -> Self {
        let known = Arc::new(KnownPresent::new(
            self.target.clone(),
            self.id.clone(),
            queue,
            clock,
            ttl,
        ));
        self.target = known.clone();
        self.known = Some(known);
        self
    }

    /// The upstream cache's URL, as configured.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which of `hash_parts` the upstream cache has; `false` for all it
    /// could not answer about.
    pub async fn has(&self, hash_parts: &[String]) -> Vec<bool> {
        let mut answers = vec![false; hash_parts.len()];
        for (n, chunk) in hash_parts.chunks(BATCH).enumerate() {
            if self.outage().retry_at.is_some_and(|at| Instant::now() < at) {
                break;
            }
            let failure =
                match tokio::time::timeout(self.timeout, self.target.has_narinfos(chunk)).await {
                    Ok(Ok(found)) => {
                        answers[n * BATCH..n * BATCH + chunk.len()].copy_from_slice(&found);
                        let mut outage = self.outage();
                        if std::mem::take(&mut outage.down) {
                            tracing::info!(
                                "upstream cache {} answers again; paths it has are skipped again",
                                self.id
                            );
                        }
                        outage.retry_at = None;
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {} s", self.timeout.as_secs()),
                };
            let mut outage = self.outage();
            outage.retry_at = Some(Instant::now() + OUTAGE_PAUSE);
            if !std::mem::replace(&mut outage.down, true) {
                tracing::warn!(
                    "upstream cache {} cannot be asked ({failure}); until it answers, paths are \
                     uploaded as if it lacked them (asked again every {} s)",
                    self.id,
                    OUTAGE_PAUSE.as_secs()
                );
            }
            break;
        }
        answers
    }

    /// Writes what the cache was seen to hold to the queue.
    pub async fn flush(&self) {
        if let Some(known) = &self.known {
            known.flush().await;
        }
    }

    #[cfg(test)]
    fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The configured upstream caches, opened read-only (only existence checks
/// are ever made on them).
pub fn open_configured(cfg: &crate::Config) -> anyhow::Result<Vec<UpstreamCache>> {
    cfg.upstream_caches
        .iter()
        .map(|c| {
            let target =
                nix_outbox_upload::open_target(c).with_context(|| format!("upstream cache {c}"))?;
            Ok(UpstreamCache::new(c.id(), target))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix_outbox_core::StoreDir;
    use nix_outbox_upload::{BoxFuture, NarWriter, UploadError};

    use super::*;

    /// An upstream that holds `aaaa`, counts questions, and hangs while
    /// `hang` is set.
    struct Fake {
        asked: AtomicUsize,
        hang: std::sync::atomic::AtomicBool,
    }

    impl Target for Fake {
        fn id(&self) -> &str {
            "fake://up"
        }
        fn ensure_cache_info<'a>(
            &'a self,
            _: &'a StoreDir,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("upstream caches are never written")
        }
        fn has_narinfo<'a>(&'a self, hash: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
            Box::pin(async move {
                self.asked.fetch_add(1, Ordering::SeqCst);
                if self.hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                Ok(hash == "aaaa")
            })
        }
        fn put_narinfo<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("upstream caches are never written")
        }
        fn put_listing<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("upstream caches are never written")
        }
        fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
            unreachable!("upstream caches are never written")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_upstream_means_not_present_and_is_left_alone_for_a_while() {
        let fake = Arc::new(Fake {
            asked: AtomicUsize::new(0),
            hang: true.into(),
        });
        let up = UpstreamCache::new("fake://up".into(), fake.clone())
            .with_timeout(Duration::from_secs(10));
        let hashes = vec!["aaaa".to_owned(), "bbbb".to_owned()];
        assert_eq!(up.has(&hashes).await, [false, false]);
        let asked = fake.asked.load(Ordering::SeqCst);
        // During the pause nothing is asked and nothing waits.
        assert_eq!(up.has(&hashes).await, [false, false]);
        assert_eq!(fake.asked.load(Ordering::SeqCst), asked);
        // After it, the upstream is asked again, and answers.
        fake.hang.store(false, Ordering::SeqCst);
        tokio::time::advance(OUTAGE_PAUSE).await;
        assert_eq!(up.has(&hashes).await, [true, false]);
        assert!(!up.outage().down);
    }

    #[tokio::test]
    async fn answers_line_up_across_batches() {
        let fake = Arc::new(Fake {
            asked: AtomicUsize::new(0),
            hang: false.into(),
        });
        let up = UpstreamCache::new("fake://up".into(), fake.clone());
        let mut hashes: Vec<String> = (0..BATCH + 3).map(|i| format!("h{i}")).collect();
        hashes[BATCH + 1] = "aaaa".into();
        let found = up.has(&hashes).await;
        assert_eq!(found.len(), hashes.len());
        let held: Vec<usize> = (0..found.len()).filter(|&i| found[i]).collect();
        assert_eq!(held, [BATCH + 1], "only the one it has");
        assert_eq!(fake.asked.load(Ordering::SeqCst), hashes.len());
    }
}
