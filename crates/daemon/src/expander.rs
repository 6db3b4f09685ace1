//! Turns accepted requests into jobs: resolves the outputs of the build
//! (Nix 2.8.0 gives none in `OUT_PATHS`; the derivation names them), keeps
//! the valid ones and enqueues one job per (output, target). Requests that
//! arrived together are claimed in one transaction and expanded in one
//! more, however many there are (up to [`MAX_BATCH`]). The closure is
//! expanded later, by the upload of each job, so a request is accepted in
//! milliseconds whatever its closure size.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_core::StorePath;
use nix_outbox_queue::{Expansion, Request};
use nix_outbox_store::{build_outputs, sign_local_paths};
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::run::idle;
use crate::service::Daemon;

/// The most requests claimed and expanded in one transaction. Bounds the
/// time the first of them waits for the store queries of the others.
const MAX_BATCH: usize = 64;

pub async fn expand_loop(d: Arc<Daemon>, stop: CancellationToken) -> anyhow::Result<()> {
    let svc = &d.svc;
    while !stop.is_cancelled() {
        let woken = svc.new_requests.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = d.now();
        match svc
            .with_queue(move |q| q.claim_requests(now, MAX_BATCH))
            .await
        {
            Ok(claimed) if claimed.is_empty() => idle(woken, &stop, Duration::from_secs(1)).await,
            Ok(claimed) => {
                if let Err(e) = expand_batch(&d, claimed, &stop).await {
                    // The queue failing to record a deferral: the requests
                    // stay `new` and are claimed again after a pause.
                    tracing::error!("queue error while expanding requests: {e:#}");
                    idle(woken, &stop, Duration::from_secs(1)).await;
                }
            }
            Err(e) => {
                tracing::error!("queue error while claiming requests: {e:#}");
                idle(woken, &stop, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

/// Resolves each claimed request through the store, then writes the jobs of
/// all that resolved in one transaction; those that did not are deferred.
/// A request left when the daemon stops stays `new`, claimed again at the
/// next start. A failure to defer one request does not stop the others; it
/// is returned at the end.
async fn expand_batch(
    d: &Daemon,
    claimed: Vec<Request>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let svc = &d.svc;
    let mut first_error = None;
    let mut keep = |res: anyhow::Result<()>| {
        if let Err(e) = res {
            first_error.get_or_insert(e);
        }
    };
    let mut resolved = Vec::with_capacity(claimed.len());
    for req in claimed {
        // A store that answers slowly must not hold a stop past its
        // timeout: the rest of the batch waits for the next start.
        if stop.is_cancelled() {
            break;
        }
        let (id, attempts) = (req.id, req.attempts);
        match resolve(d, req).await {
            Ok(valid) => resolved.push((id, attempts, valid)),
            Err(e) => keep(
                defer(
                    d,
                    id,
                    attempts,
                    &format!("cannot resolve its outputs yet ({e:#})"),
                )
                .await,
            ),
        }
    }
    let targets: Vec<String> = svc.targets.iter().map(|t| t.id.clone()).collect();
    let expansions: Vec<Expansion> = resolved
        .iter()
        .map(|(id, _, valid)| (*id, valid.iter().map(|p| p.as_str().to_owned()).collect()))
        .collect();
    let now = d.now();
    // Which requests got their jobs, in `resolved`'s order.
    let mut expanded = vec![true; resolved.len()];
    let mut created = 0;
    if !expansions.is_empty() {
        let together = svc
            .with_queue({
                let (expansions, targets) = (expansions.clone(), targets.clone());
                move |q| q.expand_requests(&expansions, &targets, now)
            })
            .await;
        match together {
            Ok(n) => created = n,
            // One bad request must not hold back the others: write them
            // one by one, and defer only what fails.
            Err(e) => {
                tracing::debug!(
                    "expanding {} request(s) together failed ({e:#}); one by one",
                    expansions.len()
                );
                for (i, (id, paths)) in expansions.into_iter().enumerate() {
                    let targets = targets.clone();
                    match svc
                        .with_queue(move |q| q.expand_request(id, &paths, &targets, now))
                        .await
                    {
                        Ok(n) => created += n,
                        Err(e) => {
                            expanded[i] = false;
                            let why = format!("cannot record its jobs in the queue ({e:#})");
                            keep(defer(d, id, resolved[i].1, &why).await);
                        }
                    }
                }
            }
        }
    }
    let done: Vec<&(i64, u32, Vec<StorePath>)> = resolved
        .iter()
        .zip(&expanded)
        .filter_map(|(r, ok)| ok.then_some(r))
        .collect();
    tracing::debug!("{} request(s) expanded, {created} new job(s)", done.len());
    if created > 0 {
        svc.wake.notify_waiters();
    }
    if svc.extras.sign_local_store {
        for (id, _, valid) in done.into_iter().filter(|(_, _, v)| !v.is_empty()) {
            sign_locally(d, *id, valid).await;
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Leaves request `id` `new` with `why` as its error, to be claimed again
/// after the retry policy's delay. The store being away is the usual
/// cause, and passes.
async fn defer(d: &Daemon, id: i64, attempts: u32, why: &str) -> anyhow::Result<()> {
    let delay = d
        .retry
        .delay(attempts, Failure::Transient, None, d.jitter.next());
    let at = d.clock.after(delay);
    tracing::warn!("request {id}: {why}; retrying in {}s", at - d.now());
    let msg = why.to_owned();
    Ok(d.svc
        .with_queue(move |q| q.defer_request(id, &msg, at))
        .await?)
}

/// Which of the request's outputs are valid in the store, in upload order
/// (Nix 2.8.0 gives no `OUT_PATHS`: the derivation names the outputs).
async fn resolve(d: &Daemon, req: Request) -> anyhow::Result<Vec<StorePath>> {
    let svc = &d.svc;
    let sd = &svc.store_dir;
    // The paths were validated when accepted; a failure here means the
    // database was edited by hand, so report it rather than guess.
    let parse = |s: &String| {
        sd.parse_path(s)
            .map_err(|e| anyhow::anyhow!("request {}: {e}", req.id))
    };
    let outs: Vec<StorePath> = req.out_paths.iter().map(parse).collect::<Result<_, _>>()?;
    let (valid, invalid) = match &req.drv_path {
        Some(drv) => {
            let drv = parse(drv)?;
            let o = build_outputs(&svc.pool, &drv, &outs).await?;
            (o.valid, o.invalid)
        }
        None => {
            let valid = svc.pool.get().await?.query_valid_paths(sd, &outs).await?;
            outs.into_iter().partition(|p| valid.contains(p))
        }
    };
    for p in &invalid {
        tracing::info!(
            "request {}: {} is not valid (garbage-collected or never built); skipping it",
            req.id,
            sd.display(p)
        );
    }
    Ok(valid)
}

/// Adds our signatures to the store's own record of the paths (after the
/// commit, and best effort: the uploads matter, and a store that refuses,
/// because we are not a trusted user, must not hold them back; the cache's
/// narinfos get our signatures regardless).
async fn sign_locally(d: &Daemon, id: i64, valid: &[StorePath]) {
    let svc = &d.svc;
    match sign_local_paths(&svc.pool, valid, &svc.keys).await {
        Ok(n) => tracing::debug!("request {id}: signed {n} path(s) in the local store"),
        Err(e) => tracing::warn!(
            "request {id}: cannot add our signatures to the local store ({e}); \
             the daemon must connect as a trusted user (trusted-users in nix.conf), \
             or set sign-local-store = false"
        ),
    }
}
