//! The fault proxy's byte plumbing: bodies copied through a channel
//! (throttled, or cut short) and client connections that can end in a
//! reset.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{BoxError, ProxyBody, lock};

/// Copies `body` through a channel, paced by `pace` and failed after
/// `limit` bytes, keeping the size hint so `Content-Length` still applies.
pub(super) fn pump<B>(body: B, pace: Option<(Arc<Pace>, u64)>, limit: Option<u64>) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    let hint = body.size_hint();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut body = body;
        let mut sent = 0u64;
        let chunk = pace.as_ref().map_or(usize::MAX, |(_, rate)| {
            usize::try_from(rate / 10)
                .unwrap_or(usize::MAX)
                .clamp(1024, 64 * 1024)
        });
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // Trailers: nothing here uses them.
            };
            while !data.is_empty() {
                if limit.is_some_and(|l| sent >= l) {
                    truncate(&tx).await;
                    return;
                }
                let room = limit.map_or(usize::MAX, |l| (l - sent) as usize);
                let piece = data.split_to(data.len().min(chunk).min(room));
                if let Some((pace, rate)) = &pace {
                    pace.take(piece.len(), *rate).await;
                }
                sent += piece.len() as u64;
                if tx.send(Ok(Frame::data(piece))).await.is_err() {
                    return;
                }
            }
        }
        if limit.is_some_and(|l| sent >= l && hint.exact() != Some(sent)) {
            truncate(&tx).await;
        }
    });
    ChannelBody { rx, hint }.boxed()
}

/// Ends a body early. hyper drops what it has not yet written when a body
/// fails, so the bytes already passed on get a moment to leave first.
async fn truncate(tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = tx.send(Err(super::Injected::Truncated.into())).await;
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    hint: SizeHint,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A shared link: each chunk waits for its turn at `rate` bytes/s.
#[derive(Default)]
pub(super) struct Pace {
    next_free: Mutex<Option<Instant>>,
}

impl Pace {
    async fn take(&self, bytes: usize, rate: u64) {
        let done = {
            let mut next = lock(&self.next_free);
            let now = Instant::now();
            // An idle link saves up no credit: no bursts after a pause.
            let start = next.map_or(now, |t| t.max(now));
            let done = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            *next = Some(done);
            done
        };
        tokio::time::sleep_until(done).await;
    }
}

/// A client connection that closes with a reset (RST) instead of a FIN
/// once `reset` is set, as when a server or middlebox drops it.
pub(super) struct ResettableStream {
    pub(super) inner: TcpStream,
    pub(super) reset: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(std::sync::atomic::Ordering::Acquire) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl tokio::io::AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
