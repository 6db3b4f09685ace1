//! The one way to run the daemon and to stop it, after mini-redis's
//! `server::run` and attic's shutdown: the caller binds the listener and
//! holds a [`CancellationToken`]; cancelling it starts the drain.
//!
//! Three phases, three tokens:
//! - `shutdown` (the caller's): the stop was asked for;
//! - `stop`, its child: no new upload or expansion starts. Also cancelled
//!   alone when the hook socket fails, so the daemon then drains and exits
//!   with the error (and is restarted) rather than run on with every hook
//!   spooling;
//! - `close`: after the drain, the hook socket, `/metrics` and the progress
//!   file stop last, so hooks need not spool during the drain, and the
//!   uploads in flight can be watched while they finish.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::futures::Notified;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::service::{Daemon, Options, Service};
use crate::{expander, listener, metrics, nix_db, spool, systemd, workers};

/// Runs the daemon until `shutdown` is cancelled, then drains: no new
/// upload or expansion starts, the hook socket keeps acknowledging, and
/// uploads in flight get up to `options.stop_timeout` to finish. Those
/// still running then are cut off and stay `in_flight` in the queue, to be
/// retried at the next start (the same path as after a crash).
pub async fn run(
    svc: Arc<Service>,
    listener: UnixListener,
    mut options: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (stop_timeout, on_ready) = (options.stop_timeout, options.on_ready.take());
    let observe = std::mem::take(&mut options.observe);
    let nix_db = options.nix_db.take();
    let d = Daemon::new(svc, options);
    // A fresh daemon answers: hooks that saw an earlier one hang may use
    // the socket at once.
    nix_outbox_hook::unresponsive::clear(&d.svc.spool_dir);
    for t in &d.svc.targets {
        t.target
            .ensure_cache_info(&d.svc.store_dir)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(
                    "cannot write nix-cache-info to {}: {e} (will retry with the first upload)",
                    t.id
                )
            });
    }
    let close = CancellationToken::new();
    let mut accepting = listener::spawn(d.clone(), listener, close.clone())?;
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    tasks.spawn(spool::ingest_loop(d.clone(), stop.clone()));
    tasks.spawn(expander::expand_loop(d.clone(), stop.clone()));
    if let Some(src) = nix_db {
        let (d, stop) = (d.clone(), stop.clone());
        tasks.spawn_blocking(move || {
            nix_db::follow(d, src, stop);
            Ok(())
        });
    }
    let mut observers = JoinSet::new();
    let metrics_address = match observe.metrics_listener {
        Some(l) => {
            let addr = l.local_addr()?.to_string();
            observers.spawn(metrics::serve(d.clone(), l, close.clone()));
            Some(addr)
        }
        None => None,
    };
    if let Some(path) = observe.progress_file {
        observers.spawn(metrics::write_loop(
            d.clone(),
            path,
            metrics_address,
            close.clone(),
        ));
    }
    tasks.spawn(workers::run_workers(d.clone(), stop.clone()));
    if let Some(ready) = on_ready {
        ready();
    }
    let failed = tokio::select! {
        _ = stop.cancelled() => None,
        res = &mut accepting => Some(match res {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow::anyhow!("the hook socket closed unexpectedly"),
            Err(_) => anyhow::anyhow!("the hook socket's thread panicked"),
        }),
    };
    if let Some(e) = &failed {
        tracing::error!("{e:#}; stopping (hooks spool their requests until a restart)");
    }
    stop.cancel();
    d.svc.wake.notify_waiters();
    d.svc.new_requests.notify_waiters();
    drain(&d, &mut tasks, stop_timeout).await;
    close.cancel();
    if failed.is_none()
        && let Ok(Err(e)) = accepting.await
    {
        tracing::error!("daemon task failed: {e:#}");
    }
    while let Some(res) = observers.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::error!("daemon task failed: {e:#}");
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits for the loops to end (workers end after their current job), for
/// at most `limit`; then cuts off what still runs.
async fn drain(d: &Daemon, tasks: &mut JoinSet<anyhow::Result<()>>, limit: Duration) {
    let in_flight = d
        .svc
        .with_queue(|q| q.status(0))
        .await
        .map(|s| s.targets.iter().map(|t| t.in_flight).sum::<u64>())
        .unwrap_or(0);
    if in_flight > 0 {
        let msg = format!(
            "stopping: no new uploads; waiting up to {}s for {in_flight} upload(s) in flight",
            limit.as_secs()
        );
        tracing::info!("{msg}");
        systemd::notify_status(&msg);
    }
    let joined = tokio::time::timeout(limit, async {
        while let Some(res) = tasks.join_next().await {
            if let Ok(Err(e)) = res {
                tracing::error!("daemon task failed: {e:#}");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(
            "stop-timeout-secs ({}s) reached with uploads still in flight; they stay queued and \
             are retried at the next start",
            limit.as_secs()
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Sleeps until `woken` fires, `stop` is cancelled, or `max` passes. Take
/// `woken` (and `enable` it) before looking for work, so that a notice sent
/// between the look and the sleep is not missed.
pub(crate) async fn idle(woken: Pin<&mut Notified<'_>>, stop: &CancellationToken, max: Duration) {
    tokio::select! {
        _ = woken => {}
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(max) => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix_outbox_core::StoreDir;
    use nix_outbox_hook::HookRequest;
    use tokio::net::UnixListener;
    use tokio_util::sync::CancellationToken;

    use crate::Options;
    use crate::test_target::bare_service;

    /// Issue 14: if the hook socket's thread fails (here its committer
    /// panics), the daemon must not run on with every hook spooling: it
    /// drains and returns the error, so that it is restarted.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_hook_socket_stops_the_daemon_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hook.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let options = Options {
            panic_on_commit: true,
            stop_timeout: Duration::from_secs(5),
            ..Options::default()
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(super::run(
            bare_service(dir.path()),
            listener,
            options,
            shutdown.clone(),
        ));
        let sd = StoreDir::default();
        let req = HookRequest {
            drv_path: None,
            out_paths: vec![
                sd.parse_path(&format!("{}/{}-x", sd.as_str(), "0".repeat(32)))
                    .unwrap(),
            ],
        };
        // The request is not acknowledged: its commit never happens.
        let sent = tokio::task::spawn_blocking(move || {
            nix_outbox_hook::client::send(
                &socket,
                &req,
                &StoreDir::default(),
                Duration::from_secs(10),
            )
        })
        .await
        .unwrap();
        assert!(sent.is_err(), "{sent:?}");
        // A hang guard, not a measurement: the daemon ends by itself.
        let ended = tokio::time::timeout(Duration::from_secs(120), running)
            .await
            .expect("the daemon kept running without its hook socket")
            .unwrap();
        let e = ended.expect_err("the daemon must return the socket's failure");
        assert!(e.to_string().contains("committer failed"), "{e:#}");
        assert!(!shutdown.is_cancelled(), "it stopped on its own");
    }
}
