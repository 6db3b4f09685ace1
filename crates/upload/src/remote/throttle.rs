//! Honouring a server's `Retry-After`, and keeping to the target's
//! budget of requests in flight (`max-connections`).
//!
//! object_store retries 5xx and 429 answers by itself, on its own backoff,
//! and ignores `Retry-After` (S3 sends it with `503 SlowDown`, most HTTP
//! servers with 429/503). So its HTTP client is wrapped: every answer is
//! looked at, and a `Retry-After` on a 429 or 5xx sets a per-target "not
//! before" time that every later request of that target waits for —
//! object_store's own retries included, so no request is ever sent earlier
//! than the server asked.
//!
//! A short wait (≤ [`WAIT_IN_REQUEST`]) is spent inside the request. A
//! longer one fails the request at once, without sending it, as a
//! transient error that object_store does not retry; the job then goes
//! back to the queue and [`Throttle::remaining`] tells the retry policy how
//! long the server asked for, instead of holding a worker for minutes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use tokio::time::Instant;

/// The longest `Retry-After` waited out inside a request.
pub const WAIT_IN_REQUEST: Duration = Duration::from_secs(30);

/// When a target's server next accepts requests, as far as it told us.
#[derive(Debug, Default)]
pub struct Throttle {
    not_before: Mutex<Option<Instant>>,
}

impl Throttle {
    /// How long the server still asked us to wait; `None` once that passed
    /// (or if it never asked).
    pub fn remaining(&self) -> Option<Duration> {
        let at = (*self.lock())?;
        let left = at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Records "come back after `wait`"; a later time never shortens an
    /// earlier, longer request.
    fn note(&self, wait: Duration) {
        let at = Instant::now() + wait;
        let mut slot = self.lock();
        if slot.is_none_or(|old| old < at) {
            *slot = Some(at);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // An Option<Instant> cannot be left half-written by a panic.
        self.not_before.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The value of a `Retry-After` header: delay-seconds or an HTTP date.
/// A date in the past means "now"; anything unparsable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurd values saturate; the retry policy caps what it honours.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// object_store's default (reqwest) connector, with every client it makes
/// reporting to and waiting for `throttle`.
#[derive(Debug)]
pub struct ThrottledConnector {
    pub throttle: Arc<Throttle>,
    /// One permit per request in flight: the target's `max-connections`,
    /// shared by every job (and by every client the connector makes).
    pub requests: Arc<tokio::sync::Semaphore>,
}

impl HttpConnector for ThrottledConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(ThrottledService {
            inner,
            throttle: self.throttle.clone(),
            requests: self.requests.clone(),
        }))
    }
}

#[derive(Debug)]
struct ThrottledService {
    inner: HttpClient,
    throttle: Arc<Throttle>,
    requests: Arc<tokio::sync::Semaphore>,
}

/// The error of a request not sent because the server asked for a pause.
#[derive(Debug, thiserror::Error)]
#[error("the server asked us to wait {} s before the next request (Retry-After)", .0.as_secs())]
struct AskedToWait(Duration);

#[async_trait::async_trait]
impl HttpService for ThrottledService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        if let Some(wait) = self.throttle.remaining() {
            if wait > WAIT_IN_REQUEST {
                // `Unknown`: object_store does not retry it.
                return Err(HttpError::new(HttpErrorKind::Unknown, AskedToWait(wait)));
            }
            tokio::time::sleep(wait).await;
        }
        // Held until the answer's headers: with HTTP/1.1 one request is one
        // connection, so this also bounds the connections (kept alive and
        // reused by the client's pool).
        let Ok(_permit) = self.requests.acquire().await else {
            unreachable!("the request budget is never closed");
        };
        let resp = self.inner.execute(req).await?;
        let status = resp.status().as_u16();
        if status == 429 || status >= 500 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            if let Some(wait) = wait {
                tracing::info!(status, "the server asked us to wait {} s", wait.as_secs());
                self.throttle.note(wait);
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let p = |v| parse_retry_after(v, now);
        assert_eq!(p("120"), Some(Duration::from_secs(120)));
        assert_eq!(p(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            p("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            p("Sun, 06 Nov 1994 08:51:37 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-5", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_request_wins_and_expires() {
        let t = Throttle::default();
        assert_eq!(t.remaining(), None);
        t.note(Duration::from_secs(60));
        t.note(Duration::from_secs(5));
        assert_eq!(t.remaining(), Some(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(t.remaining(), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.remaining(), None);
    }
}
