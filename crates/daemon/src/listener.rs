//! The hook socket: one request per connection, acknowledged with
//! `ok <id>` only after the request is durably committed to the queue.
//! Oversized, slow or malformed requests get an `error` reply (when the peer
//! is still there) and the daemon keeps serving.
//!
//! Commits are grouped: one task writes to the queue, and every request
//! that arrives while a commit is running goes into the next one, so one
//! disk sync acknowledges many hooks when builds finish together (with one
//! transaction per request, a burst of hooks queued behind the syncs).
//!
//! The socket has a thread of its own (see [`spawn`]): a build waits for
//! its hook, so the acknowledgement must not queue behind upload work for
//! the runtime's threads, and every hand-over between threads is a wake-up
//! that, on a machine busy building, waits for a CPU.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_hook::protocol::{self, MAX_REQUEST_BYTES, Reply};
use nix_outbox_hook::{liveness, unresponsive};
use nix_outbox_queue::Source;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

/// How long a client may take to send its request. The hook sends it in
/// one write; anything slower is stuck or hostile.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stop waits for the connections already accepted: a slow
/// sender's read timeout, plus the commit and the reply.
const STOP_GRACE: Duration = Duration::from_secs(READ_TIMEOUT.as_secs() + 2);

/// The most requests in one transaction: bounds how long the first of
/// them waits for the others to be written.
const MAX_BATCH: usize = 256;

/// A decoded request waiting for the committer, and where its id goes.
struct Pending {
    drv: Option<String>,
    outs: Vec<String>,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// Serves the hook socket on a dedicated thread, with a single-threaded
/// runtime of its own, until `close` is cancelled (see [`accept_loop`]). The
/// commit runs on that thread too, so a hook's request is read, committed
/// and answered without waking any other thread (but the one holding the
/// queue, if it is busy).
///
/// Setting up fails here, before the daemon says it is ready. The
/// receiver yields the loop's outcome once it has ended; it ends before
/// `close` only on a failure (a panic drops the sender), which the
/// caller must treat as fatal: without the socket every hook spools.
///
/// Timestamps of hook requests come from `d.clock`; a clock that follows
/// tokio's (paused in tests) reads this thread's runtime, which is never
/// paused.
pub fn spawn(
    d: Arc<Daemon>,
    listener: UnixListener,
    close: CancellationToken,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered again with the new runtime's reactor: a tokio socket
    // belongs to the runtime that registered it.
    let listener = {
        let _entered = runtime.enter();
        UnixListener::from_std(listener.into_std()?)?
    };
    let (done, outcome) = oneshot::channel();
    std::thread::Builder::new()
        .name("nix-outbox-hooks".into())
        .spawn(move || {
            let res = runtime.block_on(accept_loop(d, listener, close));
            let _ = done.send(res);
        })?;
    Ok(outcome)
}

async fn accept_loop(
    d: Arc<Daemon>,
    listener: UnixListener,
    close: CancellationToken,
) -> anyhow::Result<()> {
    // The committer ends once every handler (each holds a sender) is done.
    let (commits, rx) = mpsc::channel(4 * MAX_BATCH);
    let mut committer = tokio::spawn(commit_loop(d.clone(), rx));
    // Handlers are kept (not detached) so that a stop waits for the
    // requests already accepted to be committed and answered: a runtime
    // shutting down would drop them unanswered.
    let mut handlers = tokio::task::JoinSet::new();
    // Beaten by this loop itself, so that it goes stale when the thread
    // that answers hooks cannot run, whatever the rest of the daemon does.
    let heartbeat = liveness::Heartbeat::start(&d.svc.spool_dir).unwrap_or_else(|e| {
        tracing::warn!(
            "cannot write the heartbeat in {}: {e} (a hung daemon then costs each hook its \
             whole timeout)",
            d.svc.spool_dir.display()
        );
        None
    });
    let mut beats = tokio::time::interval(liveness::BEAT);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = close.cancelled() => break,
            _ = beats.tick(), if heartbeat.is_some() => {
                if let Some(Err(e)) = heartbeat.as_ref().map(liveness::Heartbeat::beat) {
                    tracing::debug!("heartbeat: {e}");
                }
                // Hooks that gave up on this thread (it was stopped, or
                // blocked) marked it unresponsive; beating, it serves
                // again, so they may connect. One stat per beat.
                if unresponsive::recently_unresponsive(&d.svc.spool_dir, std::time::SystemTime::now()).is_some() {
                    tracing::info!("hooks found the daemon unresponsive; it serves them again");
                    unresponsive::clear(&d.svc.spool_dir);
                }
            }
            // It ends only when every sender is gone, so this is a panic:
            // every request would then be refused (and spooled). Stop, so
            // that the daemon fails loudly and is restarted.
            res = &mut committer => {
                let why = match res {
                    Err(e) if e.is_panic() => "it panicked".to_owned(),
                    Err(e) => e.to_string(),
                    Ok(()) => "it stopped".to_owned(),
                };
                handlers.abort_all();
                anyhow::bail!("the hook request committer failed ({why})");
            }
            // Reaps finished handlers so the set stays small.
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    handlers.spawn(handle(d.clone(), commits.clone(), stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!("accepting a hook connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // No new connections from here (the listener is dropped, so hooks
    // spool). A handler may still be reading (up to READ_TIMEOUT), then
    // committing and answering (its drain takes up to a second more).
    drop(listener);
    drop(heartbeat);
    drop(commits);
    let finished = tokio::time::timeout(STOP_GRACE, async {
        while handlers.join_next().await.is_some() {}
        let _ = committer.await;
    })
    .await;
    if finished.is_err() {
        // Unanswered hooks spool their requests: nothing is lost.
        tracing::warn!(
            "stopping with {} hook connection(s) still unanswered after {}s; their hooks spool",
            handlers.len(),
            STOP_GRACE.as_secs()
        );
        handlers.abort_all();
    }
    Ok(())
}

async fn handle(d: Arc<Daemon>, commits: mpsc::Sender<Pending>, mut stream: UnixStream) {
    let connected = std::time::Instant::now();
    // Before reading a byte: whoever may connect could otherwise make the
    // daemon sign and upload any store path.
    let allowed = match stream.peer_cred() {
        Ok(cred) => d.peers.check(cred.uid(), cred.gid()).map_err(|why| {
            let pid = cred.pid().map_or("?".to_owned(), |p| p.to_string());
            tracing::warn!("refused a hook connection from pid {pid}: {why}");
            why
        }),
        Err(e) => Err(format!("cannot tell who is connecting ({e}); refused")),
    };
    let reply = match allowed {
        Err(why) => {
            d.metrics.hook_forbidden();
            reply_and_close(&mut stream, Reply::error(&why)).await;
            return;
        }
        Ok(()) => receive(&d, &commits, &mut stream).await,
    };
    let Some(reply) = reply else { return };
    if matches!(reply, Reply::Ok(_)) {
        // Answering again: hooks that saw us hang may use the socket.
        unresponsive::clear(&d.svc.spool_dir);
    }
    d.metrics
        .hook_request(matches!(reply, Reply::Ok(_)), connected.elapsed());
    reply_and_close(&mut stream, reply).await;
}

/// Reads, decodes and commits one request; `None` for a connection closed
/// without a byte.
async fn receive(
    d: &Daemon,
    commits: &mpsc::Sender<Pending>,
    stream: &mut UnixStream,
) -> Option<Reply> {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_frame(stream)).await {
        Err(_) => Reply::error("timed out waiting for the request"),
        Ok(Err(e)) => Reply::error(&e),
        // A connection closed without a byte: a liveness probe (or a hook
        // that gave up before writing); nothing to answer or warn about.
        Ok(Ok(frame)) if frame.is_empty() => {
            tracing::debug!("a connection closed without a request");
            return None;
        }
        Ok(Ok(frame)) => match protocol::decode(&frame, &d.svc.store_dir) {
            Err(e) => {
                tracing::warn!("refused a malformed hook request: {e}");
                Reply::error(&format!("malformed request: {e}"))
            }
            Ok(req) => match commit(d, commits, req).await {
                Ok(id) => Reply::Ok(id as u64),
                // Not acknowledged: the hook spools the request instead.
                // The committer logged why.
                Err(e) => Reply::error(&format!("cannot commit to the queue: {e}")),
            },
        },
    };
    Some(reply)
}

/// Answers and closes the connection.
async fn reply_and_close(stream: &mut UnixStream, reply: Reply) {
    let _ = stream.write_all(&reply.encode()).await;
    let _ = stream.shutdown().await;
    // Closing with unread input makes the kernel reset the connection, and
    // the peer may lose our reply; drain a bounded amount first.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 8192];
        let mut left = 1usize << 20;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn commit(
    d: &Daemon,
    commits: &mpsc::Sender<Pending>,
    req: protocol::HookRequest,
) -> Result<i64, String> {
    let sd = &d.svc.store_dir;
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        drv: req.drv_path.as_ref().map(|p| sd.display(p)),
        outs: req.out_paths.iter().map(|p| sd.display(p)).collect(),
        reply,
    };
    let gone = || "the daemon is shutting down".to_owned();
    commits.send(pending).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Writes queued requests to the queue, as many per transaction as have
/// arrived (up to [`MAX_BATCH`]), and answers each with its id or error.
async fn commit_loop(d: Arc<Daemon>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let requests: Vec<(Option<String>, Vec<String>)> = batch
            .iter_mut()
            .map(|p| (p.drv.take(), std::mem::take(&mut p.outs)))
            .collect();
        #[cfg(test)]
        assert!(!d.panic_on_commit, "the committer panics, as a test asked");
        let now = d.now();
        // Blocking this thread's runtime while the commit runs is the
        // point: it serves nothing but hooks, whose requests wait for this
        // commit or the next; a blocking-pool thread would add two
        // hand-overs to every acknowledgement.
        let results = {
            let mut q = d.svc.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.add_requests(Source::Hook, &requests, now)
        };
        match results {
            Ok(results) => {
                for (p, res) in batch.drain(..).zip(results) {
                    let res = res.map_err(|e| {
                        tracing::error!("cannot commit a hook request: {e}");
                        e.to_string()
                    });
                    let _ = p.reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!("cannot commit {} hook request(s): {e}", batch.len());
                let msg = e.to_string();
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(msg.clone()));
                }
            }
        }
        // Let the handlers write their replies before this task blocks the
        // thread again with the next commit (and before the expander, on
        // the other runtime, competes for the CPUs and the queue).
        tokio::task::yield_now().await;
        d.svc.new_requests.notify_one();
    }
}

/// Reads until the `end` line or the size limit; the frame is decoded (and
/// its errors reported precisely) by the hook crate's decoder.
async fn read_frame(stream: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if buf.ends_with(b"\nend\n") {
            return Ok(buf);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(format!("request exceeds {MAX_REQUEST_BYTES} bytes"));
        }
    }
}
