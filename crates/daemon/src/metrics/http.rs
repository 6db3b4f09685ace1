//! `GET /metrics` over HTTP/1.1, one request per connection.
//!
//! A minimal responder rather than hyper's server: a scraper sends one GET
//! and reads one response, and that is all this serves. hyper is in the
//! tree only as a client (object_store); its server side would add the
//! `server` features and hyper-util's glue for one fixed response. What
//! is parsed is bounded (8 KiB of request head, 5 s, 8 connections at a
//! time), and only the request line is looked at.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::service::Daemon;

const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 8;
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub(crate) async fn serve(
    d: Arc<Daemon>,
    listener: TcpListener,
    close: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = close.cancelled() => return Ok(()),
            p = slots.clone().acquire_owned() => p?,
        };
        tokio::select! {
            _ = close.cancelled() => return Ok(()),
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let d = d.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        handle(&d, stream).await;
                    });
                }
                Err(e) => {
                    tracing::warn!("accepting a metrics connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(d: &Daemon, mut stream: TcpStream) {
    let deadline = Instant::now() + READ_TIMEOUT;
    let head = match tokio::time::timeout_at(deadline.into(), read_head(&mut stream)).await {
        Ok(Some(h)) => h,
        _ => return,
    };
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            match d.svc.with_queue(|q| q.depth()).await {
                Ok(depth) => {
                    d.metrics.set_queue_depth(&depth);
                    let body = d.metrics.encode();
                    response("200 OK", CONTENT_TYPE, &body, head_only)
                }
                // A scrape that fails is what monitoring should see when
                // the queue cannot be read.
                Err(e) => response(
                    "500 Internal Server Error",
                    "text/plain; charset=utf-8",
                    &format!("cannot read the queue: {e:#}\n"),
                    head_only,
                ),
            }
        }
        Route::NotFound => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n",
            false,
        ),
        Route::BadMethod => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n",
            false,
        ),
        Route::Bad => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "malformed request\n",
            false,
        ),
    };
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads up to the blank line ending the request head; `None` if the peer
/// closed first or the head is too long.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Bad,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::BadMethod,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::Bad);
    }
}
