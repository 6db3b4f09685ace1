//! The known-present cache in front of a target: a decorator whose
//! `has_narinfo` answers from what the target was recently seen to hold,
//! and asks the target only about the rest.
//!
//! `upload_closure` asks the target about every path of a job's closure,
//! one round trip each, so a job whose closure is mostly in the cache
//! already (the usual case: a new build on top of an unchanged toolchain)
//! spends its time asking. Positive answers and every narinfo we write are
//! remembered, in memory and in the queue's `present` table (so they
//! survive a restart), for a TTL: a path deleted from the cache is
//! uploaded again at most a TTL later. Negative answers are never cached:
//! the path is about to be uploaded.
//!
//! The in-memory set is (re)read from the queue at the first question and
//! every [`RELOAD_EVERY`] after, which also drops expired entries and
//! applies a `forget_present` made by another process. New entries are
//! written in one batch per job ([`KnownPresent::flush`]). The cache is only
//! an optimisation: when the queue fails, the target is asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use nix_outbox_queue::Queue;
use nix_outbox_upload::{BoxFuture, NarWriter, Target, UploadClaim, UploadError};

use crate::Clock;
use crate::service::on_queue;

/// How often the in-memory set is read again from the queue.
pub const RELOAD_EVERY: Duration = Duration::from_secs(300);

/// A target whose existence checks go through the known-present cache.
pub struct KnownPresent {
    inner: Arc<dyn Target>,
    /// The queue's name for the target (the configured URL).
    queue_id: String,
    queue: Arc<Mutex<Queue>>,
    clock: Clock,
    ttl_secs: i64,
    state: Mutex<State>,
    /// Paths being uploaded to this target right now, by any worker.
    uploads: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A claim on one path's upload: releases the per-path lock, and forgets
/// the lock once nobody else holds or waits for it.
struct Claim {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    uploads: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    hash: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map's own reference left: no waiter, no holder.
        if map
            .get(&self.hash)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.hash);
        }
    }
}

#[derive(Default)]
struct State {
    /// When `known` was last read from the queue; `None`: never.
    loaded_at: Option<i64>,
    /// Hash part → when the target was seen to hold it.
    known: HashMap<String, i64>,
    /// Seen since the last flush: not in the queue yet.
    unsaved: Vec<(String, i64)>,
}

impl KnownPresent {
    pub fn new(
        inner: Arc<dyn Target>,
        queue_id: String,
        queue: Arc<Mutex<Queue>>,
        clock: Clock,
        ttl: Duration,
    ) -> Self {
        Self {
            inner,
            queue_id,
            queue,
            clock,
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            state: Mutex::new(State::default()),
            uploads: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the maps inconsistent in a way that
        // matters: at worst an entry is missing and the target is asked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The same rule as the queue's: seen within the TTL, not in the future.
    fn is_fresh(&self, checked_at: i64, now: i64) -> bool {
        checked_at > now.saturating_sub(self.ttl_secs) && checked_at <= now
    }

    fn is_known(&self, hash_part: &str) -> bool {
        let now = self.clock.now();
        let state = self.state();
        state
            .known
            .get(hash_part)
            .is_some_and(|&t| self.is_fresh(t, now))
    }

    fn record(&self, hash_part: &str) {
        let now = self.clock.now();
        let mut state = self.state();
        state.known.insert(hash_part.to_owned(), now);
        state.unsaved.push((hash_part.to_owned(), now));
    }

    /// Reads the set from the queue if it never was, or not for
    /// [`RELOAD_EVERY`], pruning the queue's expired entries on the way.
    async fn reload_if_due(&self) {
        let now = self.clock.now();
        {
            let mut state = self.state();
            let due = state
                .loaded_at
                .is_none_or(|at| now < at || now - at >= RELOAD_EVERY.as_secs() as i64);
            if !due {
                return;
            }
            // Claimed before reading, so concurrent workers read once.
            state.loaded_at = Some(now);
        }
        let (id, ttl) = (self.queue_id.clone(), self.ttl_secs);
        let loaded = on_queue(&self.queue, move |q| {
            q.prune_present(&id, now, ttl)?;
            // The same periodic chore for the skip records (same ids).
            q.prune_skipped(&id, now)?;
            q.present_entries(&id, now, ttl)
        })
        .await;
        match loaded {
            Ok(entries) => {
                let mut state = self.state();
                let mut known: HashMap<String, i64> = entries.into_iter().collect();
                // Seen since, and not written yet: keep them.
                for (hash, at) in &state.unsaved {
                    known.insert(hash.clone(), *at);
                }
                state.known = known;
            }
            Err(e) => tracing::warn!(
                "cannot read which paths {} holds from the queue ({e:#}); asking the target",
                self.queue_id
            ),
        }
    }

    /// How many paths have an upload claimed or waited for (for tests).
    #[cfg(test)]
    pub fn uploads_in_progress(&self) -> usize {
        self.uploads.lock().unwrap().len()
    }

    /// Writes what was seen since the last flush to the queue, in one
    /// transaction. Failing only costs questions later, so it is logged,
    /// not returned.
    pub async fn flush(&self) {
        let batch = std::mem::take(&mut self.state().unsaved);
        // One time for the batch: the oldest, so no entry looks younger
        // than it is.
        let Some(oldest) = batch.iter().map(|(_, at)| *at).min() else {
            return;
        };
        let paths: Vec<String> = batch.into_iter().map(|(hash, _)| hash).collect();
        let id = self.queue_id.clone();
        let saved = on_queue(&self.queue, move |q| q.mark_present(&id, &paths, oldest)).await;
        if let Err(e) = saved {
            tracing::warn!(
                "cannot record paths present in {} in the queue ({e:#}); they will be checked again",
                self.queue_id
            );
        }
    }
}

impl Target for KnownPresent {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after()
    }

    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        self.inner.ensure_cache_info(store_dir)
    }

    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            self.reload_if_due().await;
            if self.is_known(hash_part) {
                return Ok(true);
            }
            let present = self.inner.has_narinfo(hash_part).await?;
            if present {
                self.record(hash_part);
            }
            Ok(present)
        })
    }

    fn has_narinfos<'a>(
        &'a self,
        hash_parts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<bool>, UploadError>> {
        Box::pin(async move {
            self.reload_if_due().await;
            let mut answers: Vec<bool> = hash_parts.iter().map(|h| self.is_known(h)).collect();
            // Only the unknown go to the target, in one batch.
            let (ask_at, ask): (Vec<usize>, Vec<String>) = answers
                .iter()
                .enumerate()
                .filter(|(_, known)| !**known)
                .map(|(i, _)| (i, hash_parts[i].clone()))
                .unzip();
            if ask.is_empty() {
                return Ok(answers);
            }
            let asked = self.inner.has_narinfos(&ask).await?;
            for ((i, hash), present) in ask_at.into_iter().zip(&ask).zip(asked) {
                if present {
                    self.record(hash);
                }
                answers[i] = present;
            }
            Ok(answers)
        })
    }

    fn claim_upload<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, UploadClaim> {
        Box::pin(async move {
            let lock = {
                let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
                map.entry(hash_part.to_owned()).or_default().clone()
            };
            let (guard, waited) = match lock.clone().try_lock_owned() {
                Ok(guard) => (guard, false),
                Err(_) => (lock.lock_owned().await, true),
            };
            UploadClaim {
                waited,
                guard: Some(Box::new(Claim {
                    guard: Some(guard),
                    uploads: self.uploads.clone(),
                    hash: hash_part.to_owned(),
                })),
            }
        })
    }

    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            self.inner.put_narinfo(hash_part, text).await?;
            self.record(hash_part);
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

    // Logs and realisations are not cached here (only narinfos are), but
    // they must reach the real target rather than the trait's defaults.
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
        self.inner.begin_nar()
    }
    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        self.inner.nar_slots()
    }
}

#[cfg(test)]
mod tests;
