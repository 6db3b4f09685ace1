//! The hook socket: one request per connection, acknowledged with
//! `ok <id>` only after the request is durably committed to the queue.
//! Oversized, slow or malformed requests get an `error` reply (when the peer
//! is still there) and the daemon keeps serving.

use std::sync::Arc;
use std::time::Duration;

use nix_outbox_hook::protocol::{self, MAX_REQUEST_BYTES, Reply};
use nix_outbox_queue::Source;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::Daemon;

/// How long a client may take to send its request. The hook sends it in
/// one write; anything slower is stuck or hostile.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn accept_loop(
    d: Arc<Daemon>,
    listener: UnixListener,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    tokio::spawn(handle(d.clone(), stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!("accepting a hook connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(d: Arc<Daemon>, mut stream: UnixStream) {
    let reply = match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut stream)).await {
        Err(_) => Reply::error("timed out waiting for the request"),
        Ok(Err(e)) => Reply::error(&e),
        // A connection closed without a byte: a liveness probe (or a hook
        // that gave up before writing); nothing to answer or warn about.
        Ok(Ok(frame)) if frame.is_empty() => {
            tracing::debug!("a connection closed without a request");
            return;
        }
        Ok(Ok(frame)) => match protocol::decode(&frame, &d.svc.store_dir) {
            Err(e) => {
                tracing::warn!("refused a malformed hook request: {e}");
                Reply::error(&format!("malformed request: {e}"))
            }
            Ok(req) => match commit(&d, req).await {
                Ok(id) => Reply::Ok(id as u64),
                Err(e) => {
                    // Not acknowledged: the hook spools the request instead.
                    tracing::error!("cannot commit a hook request: {e:#}");
                    Reply::error(&format!("cannot commit to the queue: {e:#}"))
                }
            },
        },
    };
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

async fn commit(d: &Daemon, req: protocol::HookRequest) -> anyhow::Result<i64> {
    let sd = &d.svc.store_dir;
    let drv = req.drv_path.as_ref().map(|p| sd.display(p));
    let outs: Vec<String> = req.out_paths.iter().map(|p| sd.display(p)).collect();
    let now = d.now();
    let id = d
        .svc
        .with_queue(move |q| q.add_request(Source::Hook, drv.as_deref(), &outs, now))
        .await?;
    d.svc.wake.notify_waiters();
    Ok(id)
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
