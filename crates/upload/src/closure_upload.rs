//! Uploading a path with everything it references, references first, so
//! the cache never holds a narinfo whose references it lacks — at any
//! moment, not just at the end.

use std::collections::BTreeSet;

use nix_outbox_core::StorePath;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_store::{PathInfo, StorePool, closure};

use crate::error::UploadError;
use crate::target::{BoxFuture, Target};
use crate::url::TargetConfig;

mod schedule;

pub use schedule::MEMORY_BUDGET;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosureReport {
    /// Paths uploaded now.
    pub uploaded: usize,
    /// Paths the cache already had (their narinfo exists).
    pub already_present: usize,
    /// Paths not valid in the store: garbage-collected or never built.
    /// Includes the root itself when it is gone.
    pub missing: Vec<StorePath>,
    /// Valid paths left out because one of their references is missing:
    /// uploading them would publish a path the cache cannot complete.
    pub blocked: Vec<StorePath>,
    /// Uncompressed and compressed bytes uploaded.
    pub nar_bytes: u64,
    pub file_bytes: u64,
    /// Paths the target lacks that the [`PathSelector`] left out, with why.
    /// Either the root alone (then nothing else was uploaded: nothing we
    /// publish needs its closure), or references an upstream serves, whose
    /// referrers are still uploaded: clients get them from that upstream.
    pub skipped: Vec<(StorePath, Skip)>,
}

/// Why a path is left out of an upload although the target lacks it.
/// The spellings are stable labels (the queue stores them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The store holds a valid signature by one of the upstream keys.
    UpstreamKey,
    /// An upstream cache has its narinfo.
    UpstreamCache,
    /// Its name matches an exclude pattern.
    Excluded,
    /// Include patterns are set and its name matches none of them.
    NotIncluded,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamKey => "upstream-key",
            Self::UpstreamCache => "upstream-cache",
            Self::Excluded => "excluded",
            Self::NotIncluded => "not-included",
        }
    }
}

/// A skip decision: the reason and its detail, which comes from the
/// configuration (a key name, an upstream URL, a pattern), so the pair is
/// a bounded label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Skip {
    pub reason: SkipReason,
    pub detail: String,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.detail;
        match self.reason {
            SkipReason::UpstreamKey => write!(f, "signed by upstream key {d}"),
            SkipReason::UpstreamCache => write!(f, "served by upstream cache {d}"),
            SkipReason::Excluded => write!(f, "excluded by pattern {d:?}"),
            SkipReason::NotIncluded => write!(f, "matches no include pattern"),
        }
    }
}

/// Decides which paths of a closure not to upload (filters, upstream
/// caches). Asked once per closure, only about paths the target lacks,
/// so a closure already uploaded costs no questions. It cannot fail: a
/// selector that cannot tell (an upstream cache unreachable) must answer
/// "upload", since uploading too much is harmless and too little is not.
///
/// A reference of a path that is uploaded must be skipped only when
/// something else serves it (an upstream): the cache must never publish
/// a narinfo whose references nobody serves. Rules that are the user's
/// choice alone (name patterns) may therefore only skip the `root`.
pub trait PathSelector: Send + Sync {
    /// One answer per path, in the order given; `None`: upload it.
    /// `root` is the path whose closure `paths` are part of (it may be
    /// among them).
    fn skips<'a>(
        &'a self,
        root: &'a StorePath,
        paths: &'a [&'a PathInfo],
    ) -> BoxFuture<'a, Vec<Option<Skip>>>;
}

/// Uploads every path: no filters.
pub struct UploadAll;

impl PathSelector for UploadAll {
    fn skips<'a>(
        &'a self,
        _root: &'a StorePath,
        paths: &'a [&'a PathInfo],
    ) -> BoxFuture<'a, Vec<Option<Skip>>> {
        Box::pin(async move { vec![None; paths.len()] })
    }
}

/// Uploads the closure of `root` to `target`, skipping what the cache
/// already has. A missing root (or missing reference) is reported, not an
/// error; the first upload error stops the closure, leaving the cache
/// consistent (every narinfo in it has its references).
pub async fn upload_closure(
    pool: &StorePool,
    target: &dyn Target,
    cfg: &TargetConfig,
    keys: &[SecretKey],
    root: &StorePath,
) -> Result<ClosureReport, UploadError> {
    upload_closure_selected(pool, target, cfg, keys, root, &UploadAll).await
}

/// [`upload_closure`], leaving out what `selector` skips. A skipped root
/// uploads nothing (its closure is needed by nothing we publish); a
/// skipped reference does not block its referrers.
pub async fn upload_closure_selected(
    pool: &StorePool,
    target: &dyn Target,
    cfg: &TargetConfig,
    keys: &[SecretKey],
    root: &StorePath,
    selector: &dyn PathSelector,
) -> Result<ClosureReport, UploadError> {
    target.ensure_cache_info(pool.store_dir()).await?;
    let closure = closure(pool, std::slice::from_ref(root)).await?;
    let mut report = ClosureReport {
        missing: closure.missing,
        ..Default::default()
    };
    let mut unavailable: BTreeSet<StorePath> = report.missing.iter().cloned().collect();
    // Every question at once, concurrently: a closure that is already in
    // the cache (the usual case for all but its newest paths) then costs
    // one batch, not a round trip per path. A narinfo written by someone
    // else meanwhile only means we upload the same contents again.
    let hash_parts: Vec<String> = closure
        .paths
        .iter()
        .map(|info| info.path.hash_part().to_owned())
        .collect();
    let present = target.has_narinfos(&hash_parts).await?;
    let lacking: Vec<&PathInfo> = closure
        .paths
        .iter()
        .zip(&present)
        .filter(|(_, present)| !**present)
        .map(|(info, _)| info)
        .collect();
    let mut skips = lacking
        .iter()
        .map(|info| info.path.clone())
        .zip(selector.skips(root, &lacking).await)
        .filter_map(|(path, skip)| Some((path, skip?)))
        .collect::<std::collections::BTreeMap<_, _>>();
    if let Some(skip) = skips.remove(root) {
        report.already_present = present.iter().filter(|p| **p).count();
        report.skipped.push((root.clone(), skip));
        return Ok(report);
    }
    // `closure` orders references before referrers: a path whose
    // reference is gone from the store is blocked, and so are its
    // referrers, before anything is uploaded.
    let mut todo = Vec::new();
    for (info, present) in closure.paths.iter().zip(present) {
        if info.references.iter().any(|r| unavailable.contains(r)) {
            tracing::warn!(
                path = %info.path,
                "not uploading: a path it references is no longer in the store"
            );
            unavailable.insert(info.path.clone());
            report.blocked.push(info.path.clone());
        } else if present {
            report.already_present += 1;
        } else if let Some(skip) = skips.remove(&info.path) {
            report.skipped.push((info.path.clone(), skip));
        } else {
            todo.push(info);
        }
    }
    schedule::upload_all(pool, target, cfg, keys, &todo, &mut report).await?;
    Ok(report)
}
