//! `Retry-After` is honoured: a cache that answers `503` with
//! `Retry-After` is not asked again before the time it named, whether the
//! wait is spent inside the request (short) or handed to the queue's retry
//! policy (long).
//!
//! No real server answers 503 on demand, so the cache here is a scripted
//! HTTP/1.1 responder on 127.0.0.1: it answers each request with the next
//! line of its script and records when each arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix_outbox_upload::{TargetConfig, UploadError, open_target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Scripted {
    base: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

/// Serves `script` (status line + headers, without the final CRLF) in
/// order; after it runs out, answers 404.
async fn serve(script: Vec<&'static str>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/cache", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script.into_iter()));
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (script, seen) = (script.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // HEAD and GET only: a request ends at the blank line.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    seen.lock().unwrap().push(Instant::now());
                    let head = script
                        .lock()
                        .unwrap()
                        .next()
                        .unwrap_or("HTTP/1.1 404 Not Found");
                    let reply = format!("{head}\r\nContent-Length: 0\r\n\r\n");
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Scripted { base, arrivals }
}

fn gaps(arrivals: &[Instant]) -> Vec<Duration> {
    arrivals.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_inside_the_request() {
    let server = serve(vec![
        "HTTP/1.1 503 Slow Down\r\nRetry-After: 1",
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2",
    ])
    .await;
    let target = open_target(&TargetConfig::parse(&server.base).unwrap()).unwrap();
    let present = target.has_narinfo(&"0".repeat(32)).await.unwrap();
    assert!(!present, "the third answer, 404, means absent");
    let arrivals = server.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 3, "two refusals, then the answer");
    let gaps = gaps(&arrivals);
    // Lower bounds only: never earlier than asked (later is fine).
    assert!(gaps[0] >= Duration::from_secs(1), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_secs(2), "{gaps:?}");
    assert_eq!(target.retry_after(), None, "the pause is over");
}

#[tokio::test]
async fn a_long_retry_after_goes_back_to_the_queue() {
    let server = serve(vec!["HTTP/1.1 503 Slow Down\r\nRetry-After: 120"]).await;
    let target = open_target(&TargetConfig::parse(&server.base).unwrap()).unwrap();
    let e = target.has_narinfo(&"0".repeat(32)).await.unwrap_err();
    assert!(
        matches!(e, UploadError::Remote { .. }) && e.is_transient(),
        "{e:?}"
    );
    assert!(e.to_string().contains("Retry-After"), "{e}");
    // One request: object_store's own retry was not sent, since the
    // server asked for two minutes.
    assert_eq!(server.arrivals.lock().unwrap().len(), 1);
    let left = target.retry_after().expect("the server's pause is known");
    assert!(
        left > Duration::from_secs(100) && left <= Duration::from_secs(120),
        "{left:?}"
    );
    // And every other request of this target waits for it too.
    let e = target.has_narinfo(&"1".repeat(32)).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(server.arrivals.lock().unwrap().len(), 1);
}
