//! The storage side of a binary cache, independent of where it lives.
//!
//! A binary cache is a flat key space: `nix-cache-info`, `<hash>.narinfo`,
//! `<hash>.ls` and `nar/<name>.nar<ext>`. A [`Target`] offers exactly
//! the operations the upload pipeline needs on it, so a file directory, an
//! S3 bucket or an HTTP endpoint only differ in how each is carried out.
//!
//! The trait is dyn-compatible (the daemon holds `Arc<dyn Target>`), hence
//! boxed futures rather than `async fn`.

pub(crate) mod file;
pub(crate) mod object;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{StreamExt as _, TryStreamExt as _};

use nix_outbox_core::StoreDir;
use nix_outbox_core::store_path::HASH_PART_LEN;

use crate::compress::Compression;
use crate::error::{NarDigest, UploadError};
use crate::url::{TargetConfig, TargetLocation};
use file::FileTarget;
use object::ObjectStoreTarget;

/// How many existence checks one closure keeps in flight. Enough to hide
/// a WAN round trip (32 × ~50 ms ≈ 640 checks/s), few enough that S3's
/// per-prefix request rate (5,500 GET/HEAD per second) is never a concern
/// even with every worker asking at once.
pub const EXISTENCE_CONCURRENCY: usize = 64;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A binary cache we upload to.
///
/// Every write must be atomic: a reader (a substituting Nix) sees either
/// nothing or the complete object under a key, never a prefix. Ordering
/// between objects is the caller's business (NAR before narinfo,
/// references before referrers).
pub trait Target: Send + Sync {
    /// The cache's identity, e.g. `file:///var/cache/nix` or
    /// `s3://bucket?endpoint=host:9000` ([`TargetConfig::id`]); used in
    /// messages and as the queue's target id.
    fn id(&self) -> &str;

    /// How long the cache's server still asked us to wait (`Retry-After`)
    /// before the next request, if it did; the retry policy never
    /// schedules a retry earlier.
    fn retry_after(&self) -> Option<std::time::Duration> {
        None
    }

    /// Makes the cache usable: checks it is reachable, and writes
    /// `nix-cache-info` (`StoreDir: <store dir>`) if it is missing. Fails
    /// if the cache belongs to another store directory. Cheap after the
    /// first success.
    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>>;

    /// Whether `<hash_part>.narinfo` exists, i.e. the path is in the cache.
    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>>;

    /// [`has_narinfo`](Target::has_narinfo) for many paths, answers in the
    /// order asked. The default asks up to [`EXISTENCE_CONCURRENCY`] at a
    /// time: against a remote cache each question is a round trip, and a
    /// closure of thousands of paths asked one by one would take minutes.
    fn has_narinfos<'a>(
        &'a self,
        hash_parts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<bool>, UploadError>> {
        Box::pin(async move {
            // Collected first (futures are lazy: nothing runs before the
            // stream polls it) so the stream's type holds no closure, which
            // the compiler cannot prove `Send` for every lifetime.
            let checks: Vec<BoxFuture<'a, Result<bool, UploadError>>> =
                hash_parts.iter().map(|h| self.has_narinfo(h)).collect();
            futures_util::stream::iter(checks)
                .buffered(EXISTENCE_CONCURRENCY)
                .try_collect()
                .await
        })
    }

    /// Claims the upload of `hash_part` to this cache for the caller, until
    /// the returned claim is dropped. Waits while someone else holds it, so
    /// two jobs whose closures share a path (two outputs of one derivation
    /// referring to a third, say) do not both upload it: the second finds
    /// it present afterwards ([`UploadClaim::waited`] says to look again).
    /// The default claims nothing: a target used by one closure at a time
    /// needs no coordination.
    fn claim_upload<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, UploadClaim> {
        let _ = hash_part;
        Box::pin(async { UploadClaim::default() })
    }

    /// Writes (or replaces) `<hash_part>.narinfo`.
    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>>;

    /// Writes (or replaces) the `<hash_part>.ls` file listing (JSON).
    fn put_listing<'a>(
        &'a self,
        hash_part: &'a str,
        json: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>>;

    /// Whether `log/<drv>` (a build log, `drv` a `.drv` basename) exists.
    /// The default, for targets that keep no logs, says no.
    fn has_build_log<'a>(&'a self, drv: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        let _ = drv;
        Box::pin(async { Ok(false) })
    }

    /// Writes (or replaces) `log/<drv>`, the plain-text build log that
    /// `nix log --store <cache>` reads. The default refuses: only targets
    /// that implement it are given logs.
    fn put_build_log<'a>(
        &'a self,
        drv: &'a str,
        log: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        let _ = log;
        Box::pin(async move {
            Err(UploadError::Internal(format!(
                "{}: this target cannot store build logs (log/{drv})",
                self.id()
            )))
        })
    }

    /// Whether the realisation at `key` exists: `realisations/<id>.doi`
    /// (Nix ≤ 2.34) or `build-trace-v2/<drv>/<output>.doi` (Nix 2.35),
    /// checked by [`check_realisation_key`]. The default, for targets that
    /// keep no realisations, says no.
    fn has_realisation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        let _ = key;
        Box::pin(async { Ok(false) })
    }

    /// Writes (or replaces) the realisation at `key` (JSON), a
    /// content-addressed derivation output's. The default refuses.
    fn put_realisation<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        let _ = json;
        Box::pin(async move {
            Err(UploadError::Internal(format!(
                "{}: this target cannot store realisations ({key})",
                self.id()
            )))
        })
    }

    /// Starts a NAR upload. The pipeline then calls
    /// [`NarWriter::prepare`] before writing; a target wrapping another
    /// hands its writer through untouched.
    fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>>;

    /// The slots that NAR uploads to this target take, one each while the
    /// NAR goes up: its `max-connections`, shared by every job that uploads
    /// through this target object. `None`: a few (test doubles).
    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        None
    }
}

/// The right to upload one path to one cache; see
/// [`Target::claim_upload`].
#[derive(Default)]
pub struct UploadClaim {
    /// Another upload of the path had to end before this claim was given:
    /// the path may be in the cache now.
    pub waited: bool,
    /// Whatever holds the claim; dropping it releases the claim.
    pub guard: Option<Box<dyn Send + Sync>>,
}

/// A NAR upload in progress. Bytes are written synchronously (the pipeline
/// runs on a blocking thread); nothing is visible in the cache until
/// [`finish`](NarWriter::finish).
///
/// `write` errors should be [`UploadError`]s wrapped with
/// [`UploadError::into_io`], so the pipeline can report them precisely.
/// Dropping a writer without finishing it must abandon the upload (best
/// effort, without blocking for long): the pipeline's writer is dropped
/// inside the store client when the NAR stream fails.
pub trait NarWriter: Write + Send {
    /// Called once, before the first write, with what the store records
    /// for the NAR (NarHash, NarSize) and the compression it is written
    /// with. A writer that must name the NAR before all of it is written
    /// (an object store streaming parts while compression runs) names it
    /// from these and sizes its parts by the NarSize; the default ignores
    /// them.
    fn prepare(
        &mut self,
        _expected: &NarDigest,
        _compression: Compression,
    ) -> Result<(), UploadError> {
        Ok(())
    }

    /// Makes everything written so far durable and visible under `nar/`,
    /// atomically, and returns the name it is visible as (the narinfo's URL
    /// is `nar/<name>`). `file_name` is Nix's conventional name, the hash
    /// of the compressed bytes; a writer that named the NAR in `prepare`
    /// ignores it. Replacing an existing NAR of the returned name is fine:
    /// the name is unique to the content (or, for prepared names, to the
    /// upload).
    fn finish(
        self: Box<Self>,
        file_name: String,
    ) -> BoxFuture<'static, Result<String, UploadError>>;

    /// Abandons the upload and waits until its partial data is gone.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Opens the target a parsed URL describes. Object stores are set up here
/// (credentials found, client built), which can fail; nothing is sent to
/// them until the first upload.
pub fn open_target(cfg: &TargetConfig) -> Result<Arc<dyn Target>, UploadError> {
    Ok(match &cfg.location {
        TargetLocation::File { root } => {
            Arc::new(FileTarget::new(root.clone()).with_connections(cfg.connections()))
        }
        TargetLocation::S3 { .. } | TargetLocation::Http { .. } => {
            Arc::new(ObjectStoreTarget::open(cfg)?)
        }
    })
}

/// Refuses a hash part that could name anything but a store path's narinfo
/// (a `/` or `..` would escape the cache). Callers pass
/// `StorePath::hash_part()`, so this only catches bugs.
pub(crate) fn check_hash_part(hash_part: &str) -> Result<(), UploadError> {
    let ok =
        hash_part.len() == HASH_PART_LEN && nix_outbox_core::nixbase32::is_valid_str(hash_part);
    if ok {
        Ok(())
    } else {
        Err(UploadError::Internal(format!(
            "{hash_part:?} is not a store path hash part"
        )))
    }
}

/// Refuses a build log name other than a `.drv` store path basename (which
/// has no `/` and no leading `.`, so `log/<name>` stays in the cache).
pub(crate) fn check_drv_name(name: &str) -> Result<(), UploadError> {
    match nix_outbox_core::StorePath::from_base_name(name) {
        Ok(p) if p.is_derivation() => Ok(()),
        _ => Err(UploadError::Internal(format!(
            "{name:?} is not a derivation's store path basename"
        ))),
    }
}

/// Refuses a realisation id that is not `<algo>:<digest>!<output>` (so
/// `realisations/<id>.doi` stays one file in the cache).
/// Refuses a realisation key other than `realisations/<id>.doi` and
/// `build-trace-v2/<drv>/<output>.doi`, and returns it split into its
/// directory and file name: nothing else may be written through it.
pub(crate) fn check_realisation_key(key: &str) -> Result<(&str, &str), UploadError> {
    let bad = || UploadError::Internal(format!("{key:?} is not a realisation's cache key"));
    let (dir, file) = key.rsplit_once('/').ok_or_else(bad)?;
    let stem = file.strip_suffix(".doi").ok_or_else(bad)?;
    let ok = match dir.split_once('/') {
        None => dir == "realisations" && nix_outbox_store::is_valid_drv_output_id(stem),
        Some((top, drv)) => {
            top == crate::realisation::BUILD_TRACE_DIR
                && nix_outbox_core::StorePath::from_base_name(drv).is_ok_and(|p| p.is_derivation())
                && nix_outbox_store::is_valid_output_name(stem)
        }
    };
    if ok { Ok((dir, file)) } else { Err(bad()) }
}

/// Refuses a NAR file name other than `<nixbase32>.nar[.ext]`.
pub(crate) fn check_nar_name(name: &str) -> Result<(), UploadError> {
    let ok = name.split_once(".nar").is_some_and(|(hash, ext)| {
        !hash.is_empty()
            && nix_outbox_core::nixbase32::is_valid_str(hash)
            && matches!(ext, "" | ".xz" | ".zst")
    });
    if ok {
        Ok(())
    } else {
        Err(UploadError::Internal(format!(
            "{name:?} is not a NAR file name"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers after a (paused-clock) round trip, counting how many
    /// questions are in flight at once.
    #[derive(Default)]
    struct SlowCache {
        in_flight: AtomicUsize,
        most: AtomicUsize,
    }

    impl Target for SlowCache {
        fn id(&self) -> &str {
            "slow://"
        }
        fn ensure_cache_info<'a>(
            &'a self,
            _: &'a StoreDir,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("not part of the test")
        }
        fn has_narinfo<'a>(
            &'a self,
            hash_part: &'a str,
        ) -> BoxFuture<'a, Result<bool, UploadError>> {
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(hash_part.ends_with('0'))
            })
        }
        fn put_narinfo<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("not part of the test")
        }
        fn put_listing<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), UploadError>> {
            unreachable!("not part of the test")
        }
        fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
            unreachable!("not part of the test")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn existence_checks_run_concurrently_and_answer_in_order() {
        let cache = SlowCache::default();
        let asked: Vec<String> = (0..1000).map(|i| format!("{i:032}")).collect();
        let start = tokio::time::Instant::now();
        let answers = cache.has_narinfos(&asked).await.unwrap();
        let want: Vec<bool> = (0..1000).map(|i| i % 10 == 0).collect();
        assert_eq!(answers, want);
        assert_eq!(cache.most.load(Ordering::SeqCst), EXISTENCE_CONCURRENCY);
        // Virtual time: 1000 round trips of 50 ms in batches of 32.
        let rounds = 1000_u64.div_ceil(EXISTENCE_CONCURRENCY as u64);
        assert_eq!(start.elapsed().as_millis() as u64, rounds * 50);
    }
}
