//! Turns accepted requests into jobs: resolves the outputs of the build
//! (Nix 2.8.0 gives none in `OUT_PATHS`; the derivation names them), keeps
//! the valid ones and enqueues one job per (output, target) in a single
//! transaction. The closure is expanded later, by the upload of each job,
//! so a request is accepted in milliseconds whatever its closure size.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_core::StorePath;
use nix_outbox_queue::Request;
use nix_outbox_store::{build_outputs, sign_local_paths};
use tokio::sync::watch;

use super::{Daemon, Failure, idle};

pub async fn expand_loop(
    d: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let svc = &d.svc;
    while !*shutdown.borrow() {
        let now = d.now();
        let claimed = svc.with_queue(move |q| q.claim_request(now)).await;
        match claimed {
            Ok(Some(req)) => {
                let (id, attempts) = (req.id, req.attempts);
                if let Err(e) = expand(&d, req).await {
                    // The store being away is the usual cause, and passes.
                    let delay = d
                        .retry
                        .delay(attempts, Failure::Transient, None, d.jitter.next());
                    let at = d.clock.after(delay);
                    tracing::warn!(
                        "request {id}: cannot resolve its outputs yet ({e:#}); retrying in {}s",
                        at - d.now()
                    );
                    let msg = format!("{e:#}");
                    svc.with_queue(move |q| q.defer_request(id, &msg, at))
                        .await?;
                }
            }
            Ok(None) => idle(svc, &mut shutdown, Duration::from_secs(1)).await,
            Err(e) => {
                tracing::error!("queue error while claiming a request: {e:#}");
                idle(svc, &mut shutdown, Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

async fn expand(d: &Daemon, req: Request) -> anyhow::Result<()> {
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
    let paths: Vec<String> = valid.iter().map(|p| p.as_str().to_owned()).collect();
    let targets: Vec<String> = svc.targets.iter().map(|t| t.id.clone()).collect();
    let id = req.id;
    let now = d.now();
    let created = svc
        .with_queue(move |q| q.expand_request(id, &paths, &targets, now))
        .await?;
    tracing::debug!(
        "request {id}: {} output(s), {created} new job(s)",
        valid.len()
    );
    if created > 0 {
        svc.wake.notify_waiters();
    }
    if svc.extras.sign_local_store && !valid.is_empty() {
        // After the commit, and best effort: the uploads matter, and a
        // store that refuses (we are not a trusted user) must not hold
        // them back. The cache's narinfos get our signatures regardless.
        match sign_local_paths(&svc.pool, &valid, &svc.keys).await {
            Ok(n) => tracing::debug!("request {id}: signed {n} path(s) in the local store"),
            Err(e) => tracing::warn!(
                "request {id}: cannot add our signatures to the local store ({e}); \
                 the daemon must connect as a trusted user (trusted-users in nix.conf), \
                 or set sign-local-store = false"
            ),
        }
    }
    Ok(())
}
