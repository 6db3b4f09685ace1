//! Uploading the paths of one closure concurrently, publishing each
//! narinfo as soon as it may appear.
//!
//! Two phases per path (see `pipeline.rs`): its NAR, then its narinfo.
//! - NARs go up concurrently, the largest first (they bound the total
//!   time; small ones fill the gaps), each holding one of the target's
//!   slots ([`Target::nar_slots`], shared by every job on that target)
//!   and its share of the process-wide [`MEMORY`] budget.
//! - A narinfo is published once its NAR is in the cache **and** every
//!   reference is published, present, or served by an upstream. So at
//!   every instant, not only at the end, each narinfo in the cache has its
//!   NAR and its references: a crash anywhere leaves at most NARs nothing
//!   points to yet.
//! - A path that fails blocks only its referrers; everything else still
//!   lands, and the first error is returned at the end (the job stays
//!   pending with it, and its retry finds the rest present).

use std::collections::{BTreeSet, HashMap};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use nix_outbox_core::StorePath;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_store::{PathInfo, StorePool};
use tokio::sync::Semaphore;

use super::ClosureReport;
use crate::error::UploadError;
use crate::pipeline::{NarOutcome, StagedNar, publish, upload_nar};
use crate::target::Target;
use crate::url::TargetConfig;

/// One unit of the memory budget.
const UNIT: u64 = 64 * 1024;
/// The most memory that the buffers of all NAR uploads in flight may hold
/// together, across jobs and targets: 160 MiB. With the rest of the
/// process (~30 MiB) and what the allocator keeps of freed buffers
/// (measured: a mixed closure's peak RSS ran ~25 % over the charged sum),
/// the peak RSS stays within 256 MiB.
pub const MEMORY_BUDGET: u64 = 160 * 1024 * 1024;
/// What one NAR upload is charged at most: what the pipeline buffers of a
/// large NAR at worst. Measured: a 200 MB incompressible NAR to S3 peaked
/// at 126 MiB RSS (~100 MiB over the idle process: zstd's worker buffers,
/// four 8 MiB parts, the HTTP client's copies); compressible data needs
/// about half. So one large NAR at a time, beside the small ones.
const MAX_PER_NAR: u64 = 128 * 1024 * 1024;
/// What any upload costs besides its data: the compressor's state.
const OVERHEAD_PER_NAR: u64 = 2 * 1024 * 1024;

/// The budget, in [`UNIT`]s.
pub(crate) static MEMORY: Semaphore = Semaphore::const_new((MEMORY_BUDGET / UNIT) as usize);

/// Slots for targets that name none (test doubles): a few at a time.
static DEFAULT_SLOTS: Semaphore = Semaphore::const_new(4);

/// The memory units a NAR of `nar_size` bytes is charged: what it can
/// buffer (at most the whole NAR, never more than [`MAX_PER_NAR`]).
fn memory_units(nar_size: u64) -> u32 {
    let bytes = nar_size.min(MAX_PER_NAR) + OVERHEAD_PER_NAR;
    bytes.div_ceil(UNIT) as u32
}

/// Where one path to upload stands.
enum Stage {
    /// Its NAR is going up (or waiting for a slot).
    Nar,
    /// Its NAR is in the cache; its narinfo waits for `waiting` references.
    Staged(Box<StagedNar>),
    /// Its narinfo is being written.
    Publishing,
    /// Published, or found present meanwhile: its referrers may follow.
    Done,
    /// Failed, gone from the store, or blocked: its referrers never follow.
    Failed,
}

struct Node {
    stage: Stage,
    /// References still to be published (among the paths uploaded here).
    waiting: usize,
    /// Paths uploaded here that reference this one.
    referrers: Vec<usize>,
}

/// What one NAR or narinfo task ended with.
enum Event {
    Nar(
        usize,
        Result<NarOutcome, UploadError>,
        Option<crate::UploadClaim>,
    ),
    /// Another job (or machine) published it while we waited for its claim.
    AlreadyThere(usize),
    Published(usize, Result<(), UploadError>),
}

/// Uploads `todo` (paths of one closure, references before referrers,
/// none of them in the cache) and publishes each as soon as it may.
/// Adds to `report` what was uploaded, found present meanwhile, went
/// missing or got blocked; returns the first error, after everything that
/// could still land has landed.
pub(super) async fn upload_all(
    pool: &StorePool,
    target: &dyn Target,
    cfg: &TargetConfig,
    keys: &[SecretKey],
    todo: &[&PathInfo],
    report: &mut ClosureReport,
) -> Result<(), UploadError> {
    let index: HashMap<&StorePath, usize> =
        todo.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
    let mut nodes: Vec<Node> = todo
        .iter()
        .map(|_| Node {
            stage: Stage::Nar,
            waiting: 0,
            referrers: Vec::new(),
        })
        .collect();
    for (i, info) in todo.iter().enumerate() {
        // A self-reference is not a dependency.
        let refs: BTreeSet<usize> = info
            .references
            .iter()
            .filter_map(|r| index.get(r).copied())
            .filter(|&j| j != i)
            .collect();
        nodes[i].waiting = refs.len();
        for j in refs {
            nodes[j].referrers.push(i);
        }
    }
    // Largest first: semaphores are fair, so the order asked is the order
    // served.
    let mut by_size: Vec<usize> = (0..todo.len()).collect();
    by_size.sort_by_key(|&i| std::cmp::Reverse(todo[i].nar_size));
    let slots = target.nar_slots().unwrap_or(&DEFAULT_SLOTS);
    let sd = pool.store_dir();

    let mut tasks = FuturesUnordered::new();
    for i in by_size {
        let info = todo[i];
        tasks.push(Box::pin(async move {
            let hash = info.path.hash_part();
            let claim = target.claim_upload(hash).await;
            if claim.waited {
                match target.has_narinfo(hash).await {
                    Ok(true) => return Event::AlreadyThere(i),
                    Ok(false) => {}
                    Err(e) => return Event::Nar(i, Err(e), Some(claim)),
                }
            }
            let Ok(_memory) = MEMORY.acquire_many(memory_units(info.nar_size)).await else {
                unreachable!("the memory budget is never closed");
            };
            let Ok(_slot) = slots.acquire().await else {
                return Event::Nar(i, Err(UploadError::Internal("target closed".into())), None);
            };
            let res = upload_nar(pool, target, cfg, info).await;
            Event::Nar(i, res, Some(claim))
        })
            as std::pin::Pin<
                Box<dyn std::future::Future<Output = Event> + Send + '_>,
            >);
    }

    let mut first_error: Option<UploadError> = None;
    // Claims are held until the path is published or given up, so that
    // another job does not upload it meanwhile.
    let mut claims: HashMap<usize, crate::UploadClaim> = HashMap::new();
    let mut sizes = vec![(0u64, 0u64); todo.len()];
    while let Some(event) = tasks.next().await {
        // Paths whose narinfo may now be written.
        let mut ready = Vec::new();
        match event {
            Event::AlreadyThere(i) => {
                report.already_present += 1;
                ready.extend(finish(&mut nodes, i));
            }
            Event::Nar(i, Ok(NarOutcome::Staged(staged)), claim) => {
                claims.extend(claim.map(|c| (i, c)));
                sizes[i] = staged.sizes();
                nodes[i].stage = Stage::Staged(staged);
                ready.push(i);
            }
            Event::Nar(i, Ok(NarOutcome::NotValid), _) => {
                report.missing.push(todo[i].path.clone());
                nodes[i].stage = Stage::Failed;
            }
            Event::Nar(i, Err(e), _) | Event::Published(i, Err(e)) => {
                tracing::debug!(path = %todo[i].path, "upload failed: {e}");
                first_error.get_or_insert(e);
                claims.remove(&i);
                nodes[i].stage = Stage::Failed;
            }
            Event::Published(i, Ok(())) => {
                claims.remove(&i);
                report.uploaded += 1;
                report.nar_bytes += sizes[i].0;
                report.file_bytes += sizes[i].1;
                ready.extend(finish(&mut nodes, i));
            }
        }
        for c in ready {
            if nodes[c].waiting > 0 || !matches!(nodes[c].stage, Stage::Staged(_)) {
                continue;
            }
            let Stage::Staged(staged) = std::mem::replace(&mut nodes[c].stage, Stage::Publishing)
            else {
                unreachable!("matched just above")
            };
            tasks.push(Box::pin(async move {
                Event::Published(c, publish(target, sd, keys, *staged).await)
            }));
        }
    }
    // What never got published because a reference failed or went
    // missing: blocked (and its NAR, if up, is referenced by nothing).
    for (i, node) in nodes.iter().enumerate() {
        if matches!(node.stage, Stage::Staged(_)) && first_error.is_none() {
            tracing::warn!(
                path = %todo[i].path,
                "not uploading: a path it references is no longer in the store"
            );
            report.blocked.push(todo[i].path.clone());
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Marks `i` done (in the cache) and returns its referrers, one reference
/// closer to publication.
fn finish(nodes: &mut [Node], i: usize) -> Vec<usize> {
    nodes[i].stage = Stage::Done;
    let referrers = nodes[i].referrers.clone();
    for &r in &referrers {
        nodes[r].waiting -= 1;
    }
    referrers
}
