//! Uploading a path with everything it references, references first, so
//! the cache never holds a narinfo whose references it lacks — at any
//! moment, not just at the end.

use std::collections::BTreeSet;

use nix_outbox_core::StorePath;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_store::{StorePool, closure};

use crate::error::UploadError;
use crate::pipeline::{PathOutcome, upload_path};
use crate::target::Target;
use crate::target_url::TargetConfig;

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
    // `closure` orders references before referrers, which is the order
    // narinfos must appear in.
    for (info, present) in closure.paths.iter().zip(present) {
        if info.references.iter().any(|r| unavailable.contains(r)) {
            tracing::warn!(
                path = %info.path,
                "not uploading: a path it references is no longer in the store"
            );
            unavailable.insert(info.path.clone());
            report.blocked.push(info.path.clone());
            continue;
        }
        if present {
            report.already_present += 1;
            continue;
        }
        let claim = target.claim_upload(info.path.hash_part()).await;
        if claim.waited && target.has_narinfo(info.path.hash_part()).await? {
            // Another job uploaded it while we waited.
            report.already_present += 1;
            continue;
        }
        let outcome = upload_path(pool, target, cfg, keys, info).await;
        drop(claim);
        match outcome? {
            PathOutcome::Uploaded {
                nar_size,
                file_size,
            } => {
                report.uploaded += 1;
                report.nar_bytes += nar_size;
                report.file_bytes += file_size;
            }
            PathOutcome::NotValid => {
                unavailable.insert(info.path.clone());
                report.missing.push(info.path.clone());
            }
        }
    }
    Ok(report)
}
