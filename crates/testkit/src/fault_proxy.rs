//! A fault-injecting HTTP/1.1 reverse proxy for tests and benchmarks.
//!
//! It listens on 127.0.0.1 (a port the kernel picks) in front of an
//! upstream `host:port` (s3s-fs, the private nginx) and forwards each
//! request unchanged: method, path and query, headers (their case too,
//! `Host` included) and body bytes (HTTP/1.1 chunk boundaries may move). S3 clients therefore sign for the proxy's
//! address, and the upstream checks the signature against the very `Host`
//! they signed. Each request gets a fresh upstream connection, so a fault
//! never leaves a half-used upstream connection behind for the next one.
//!
//! It runs on its own tokio runtime, so sync tests drive it, and a
//! [`Plan`] chosen at run time decides, per request, which [`Fault`] to
//! inject. [`FaultProxy::down`] / [`FaultProxy::up`] stop and resume
//! listening. [`FaultProxy::counts`] tells what really happened, so a test
//! can check that the faults it meant to survive were injected at all.
//! [`FaultProxy::fill_in`] answers requests the upstream does not implement
//! (ListMultipartUploads, which s3s-fs lacks), faults applied as usual.

mod fill_in;
mod plumbing;
mod watch;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub use fill_in::FillIn;
use fill_in::fill_in;
use plumbing::{Pace, ResettableStream, pump};
pub use watch::Seen;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// What to do to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Answer `503` with an S3 `SlowDown` error and `Retry-After`, without
    /// forwarding (the request body is read first, as S3 does).
    SlowDown { retry_after_secs: u64 },
    /// Read the request, then reset the connection (RST) without answering.
    Reset,
    /// Hold the request this long, then forward it.
    Stall { secs: u64 },
    /// Forward, then send the response head (its `Content-Length` kept)
    /// and only half of the body, and close. A response without a body
    /// (HEAD, empty) is not answered at all, after the upstream acted on
    /// the request: the client cannot tell whether it took effect.
    TruncateResponse,
    /// Forward with the bandwidth limited to this, in each direction,
    /// shared by all requests throttled at the same time (a slow link).
    Throttle { bytes_per_sec: u64 },
}

/// Which fault each request gets; replaceable while the proxy runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Forward everything untouched.
    Pass,
    /// The same fault for every request.
    Always(Fault),
    /// For the n-th request (in arrival order), a draw from a sequence
    /// fixed by `seed` picks a fault by probability; the remainder passes.
    Random { seed: u64, mix: Vec<(f64, Fault)> },
    /// `fault` for the next `times` requests whose request line
    /// (`METHOD /path?query`) contains `matching`; all others pass.
    Targeted {
        matching: String,
        fault: Fault,
        times: u64,
    },
}

impl Plan {
    /// A random plan; the probabilities must add up to at most 1.
    pub fn random(seed: u64, mix: &[(f64, Fault)]) -> Self {
        let total: f64 = mix.iter().map(|(p, _)| p).sum();
        assert!(
            mix.iter().all(|(p, _)| *p >= 0.0) && total <= 1.0 + 1e-9,
            "fault probabilities must be ≥ 0 and add up to ≤ 1: {mix:?}"
        );
        Self::Random {
            seed,
            mix: mix.to_vec(),
        }
    }

    /// Per request: 20% SlowDown (Retry-After 1 s), 10% Reset, 10%
    /// TruncateResponse, 5% Stall (3 s), else pass.
    pub fn standard_mix(seed: u64) -> Self {
        Self::random(
            seed,
            &[
                (
                    0.20,
                    Fault::SlowDown {
                        retry_after_secs: 1,
                    },
                ),
                (0.10, Fault::Reset),
                (0.10, Fault::TruncateResponse),
                (0.05, Fault::Stall { secs: 3 }),
            ],
        )
    }

    /// The fault for the `n`-th request (0-based, in arrival order), so a
    /// test can see in advance what a plan will do; `Targeted` plans depend
    /// on the request itself, and give `None` here.
    pub fn fault_for(&self, n: u64) -> Option<Fault> {
        match self {
            Plan::Pass | Plan::Targeted { .. } => None,
            Plan::Always(f) => Some(*f),
            Plan::Random { seed, mix } => {
                let draw = splitmix64(seed.wrapping_add(n.wrapping_mul(GOLDEN_GAMMA)));
                // 53 bits: exactly representable, uniform in [0, 1).
                let u = (draw >> 11) as f64 / (1u64 << 53) as f64;
                let mut acc = 0.0;
                mix.iter().find_map(|(p, f)| {
                    acc += p;
                    (u < acc).then_some(*f)
                })
            }
        }
    }
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub connections: u64,
    /// Requests received (whatever happened to them).
    pub requests: u64,
    /// Requests forwarded with no fault.
    pub passed: u64,
    pub slow_down: u64,
    pub reset: u64,
    pub stall: u64,
    pub truncated: u64,
    pub throttled: u64,
    /// Requests the upstream could not be reached for (answered `502`).
    pub upstream_errors: u64,
    /// Requests being handled now (received, response head not yet
    /// returned), and the most there ever were at once.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

impl Counts {
    /// Faults injected, all kinds together.
    pub fn faults(&self) -> u64 {
        self.slow_down + self.reset + self.stall + self.truncated + self.throttled
    }
}

/// How many request lines [`FaultProxy::recent`] keeps.
const LOG_LINES: usize = 400;

struct Shared {
    upstream: String,
    plan: Mutex<Plan>,
    counts: Mutex<Counts>,
    log: Mutex<std::collections::VecDeque<String>>,
    /// The pace of throttled bytes towards the upstream and back.
    pace_up: Arc<Pace>,
    pace_down: Arc<Pace>,
    /// Open client connections, aborted all at once by `down`.
    conns: Mutex<JoinSet<()>>,
    fill_in: Mutex<Option<FillIn>>,
    /// The round-trip time added (see [`FaultProxy::set_latency`]).
    latency: Mutex<Duration>,
    /// The header recorded for every request (see [`FaultProxy::watch_header`]).
    watch: Mutex<watch::Watch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut lock(&self.counts));
    }

    fn note(&self, line: String) {
        let mut log = lock(&self.log);
        if log.len() == LOG_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}

/// The proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream` (`host:port`) with [`Plan::Pass`].
    pub fn start(upstream: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("tokio runtime for the fault proxy");
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            plan: Mutex::new(Plan::Pass),
            counts: Mutex::default(),
            log: Mutex::default(),
            pace_up: Arc::default(),
            pace_down: Arc::default(),
            conns: Mutex::new(JoinSet::new()),
            fill_in: Mutex::new(None),
            latency: Mutex::new(Duration::ZERO),
            watch: Mutex::new(watch::Watch::default()),
        });
        let (listener, addr) = rt
            .block_on(listen((Ipv4Addr::LOCALHOST, 0).into()))
            .expect("bind 127.0.0.1:0 for the fault proxy");
        let accept = rt.spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`, as an S3 `endpoint=` value.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Applies `plan` to every request from now on (requests already being
    /// handled keep their fault).
    pub fn set_plan(&self, plan: Plan) {
        self.shared.note(format!("plan: {plan:?}"));
        *lock(&self.shared.plan) = plan;
    }

    /// Answers with `f` what the upstream answers `501 Not Implemented`
    /// (see [`FillIn`]). The request still goes upstream first, so the
    /// upstream checks it as far as it can (an S3 server: its signature).
    pub fn fill_in(&self, f: impl Fn(&str, &str, &str) -> Option<String> + Send + Sync + 'static) {
        *lock(&self.shared.fill_in) = Some(Arc::new(f));
    }

    /// Stops listening (new connections are refused) and closes every open
    /// connection, requests in progress included, as a crashed server would.
    pub fn down(&self) {
        let rt = self.rt();
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
            // Once the task is gone, so is its listening socket.
            let _ = rt.block_on(accept);
        }
        let mut conns = std::mem::take(&mut *lock(&self.shared.conns));
        rt.block_on(conns.shutdown());
        self.shared.note("down".to_owned());
    }

    /// Listens again, on the same port. Panics if someone else took the
    /// port in the meantime.
    pub fn up(&self) {
        let mut accept = lock(&self.accept);
        if accept.is_some() {
            return;
        }
        let rt = self.rt();
        let (listener, _) = rt
            .block_on(listen(self.addr))
            .unwrap_or_else(|e| panic!("fault proxy: cannot listen on {} again: {e}", self.addr));
        *accept = Some(rt.spawn(accept_loop(listener, self.shared.clone())));
        self.shared.note("up".to_owned());
    }

    /// Makes the cache `rtt` away (this kernel has no netem): a new
    /// connection waits one `rtt` before its first request is read (the
    /// TCP handshake), every request half of it before it goes upstream,
    /// and every answer the other half before it goes back.
    pub fn set_latency(&self, rtt: Duration) {
        self.shared.note(format!("latency: {rtt:?}"));
        *lock(&self.shared.latency) = rtt;
    }

    /// From now on, records header `name` of every request (and forgets
    /// what was recorded before): [`FaultProxy::seen`].
    pub fn watch_header(&self, name: &str) {
        lock(&self.shared.watch).set(name);
    }

    /// The requests since [`FaultProxy::watch_header`], in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.watch).seen()
    }

    pub fn counts(&self) -> Counts {
        *lock(&self.shared.counts)
    }

    /// The last requests (method, path, what was done) and plan changes,
    /// one per line: for failure messages.
    pub fn recent(&self) -> String {
        let log = lock(&self.shared.log);
        log.iter().map(|l| format!("{l}\n")).collect()
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime present until drop")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Connections hold no state worth waiting for.
            rt.shutdown_background();
        }
    }
}

async fn listen(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let socket = TcpSocket::new_v4()?;
    // Lets `up` take the port back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        shared.count(|c| c.connections += 1);
        let mut conns = lock(&shared.conns);
        while conns.try_join_next().is_some() {}
        conns.spawn(serve(stream, shared.clone()));
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let rtt = *lock(&shared.latency);
    if !rtt.is_zero() {
        tokio::time::sleep(rtt).await;
    }
    let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream {
        inner: stream,
        reset: reset.clone(),
    });
    let service = hyper::service::service_fn(move |req| {
        let (shared, reset) = (shared.clone(), reset.clone());
        async move { handle(req, shared, reset).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .auto_date_header(false)
        .header_read_timeout(None)
        .serve_connection(io, service)
        .await;
}

#[derive(Debug, thiserror::Error)]
enum Injected {
    #[error("connection reset by the fault proxy")]
    Reset,
    #[error("response truncated by the fault proxy")]
    Truncated,
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Response<ProxyBody>, Injected> {
    shared.count(|c| {
        c.in_flight += 1;
        c.max_in_flight = c.max_in_flight.max(c.in_flight);
    });
    watch::record(&shared.watch, &req);
    let half = *lock(&shared.latency) / 2;
    if !half.is_zero() {
        tokio::time::sleep(half).await;
    }
    let res = handle_fault(req, &shared, reset).await;
    if !half.is_zero() {
        tokio::time::sleep(half).await;
    }
    shared.count(|c| c.in_flight -= 1);
    res
}

async fn handle_fault(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    reset: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Response<ProxyBody>, Injected> {
    let n = {
        let mut c = lock(&shared.counts);
        c.requests += 1;
        c.requests - 1
    };
    let line = format!("{} {}", req.method(), req.uri());
    let fault = match &mut *lock(&shared.plan) {
        Plan::Targeted {
            matching,
            fault,
            times,
        } if *times > 0 && line.contains(matching.as_str()) => {
            *times -= 1;
            Some(*fault)
        }
        plan => plan.fault_for(n),
    };
    let line = format!("#{n} {line}");
    shared.note(match fault {
        Some(f) => format!("{line} → {f:?}"),
        None => line,
    });
    match fault {
        None => {
            shared.count(|c| c.passed += 1);
            Ok(forward(req, shared, None, false).await)
        }
        Some(Fault::SlowDown { retry_after_secs }) => {
            shared.count(|c| c.slow_down += 1);
            let _ = req.into_body().collect().await;
            Ok(slow_down(retry_after_secs, n))
        }
        Some(Fault::Reset) => {
            shared.count(|c| c.reset += 1);
            let _ = req.into_body().collect().await;
            reset.store(true, std::sync::atomic::Ordering::Release);
            Err(Injected::Reset)
        }
        Some(Fault::Stall { secs }) => {
            shared.count(|c| c.stall += 1);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok(forward(req, shared, None, false).await)
        }
        Some(Fault::TruncateResponse) => {
            shared.count(|c| c.truncated += 1);
            let is_head = req.method() == hyper::Method::HEAD;
            let resp = forward(req, shared, None, true).await;
            let empty = is_head || resp.body().size_hint().exact() == Some(0);
            if empty && resp.status() != StatusCode::BAD_GATEWAY {
                return Err(Injected::Truncated);
            }
            Ok(resp)
        }
        Some(Fault::Throttle { bytes_per_sec }) => {
            shared.count(|c| c.throttled += 1);
            Ok(forward(req, shared, Some(bytes_per_sec.max(1)), false).await)
        }
    }
}

fn slow_down(retry_after_secs: u64, n: u64) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
         <Message>Please reduce your request rate.</Message>\
         <RequestId>fault-proxy-{n}</RequestId></Error>"
    );
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/xml")
        .header("content-length", body.len())
        .header("retry-after", retry_after_secs)
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}

/// Sends `req` upstream on a new connection. `rate`: throttle both bodies;
/// `truncate`: pass only half of the response body, then fail it.
async fn forward(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    rate: Option<u64>,
    truncate: bool,
) -> Response<ProxyBody> {
    let (method, target) = (req.method().to_string(), req.uri().to_string());
    let req = req.map(|body| match rate {
        Some(r) => pump(body, Some((shared.pace_up.clone(), r)), None),
        None => body.map_err(BoxError::from).boxed(),
    });
    let resp = match send_upstream(&shared.upstream, req).await {
        Ok(resp) if resp.status() == StatusCode::NOT_IMPLEMENTED => {
            fill_in(resp, &method, &target, shared).await
        }
        Ok(resp) => resp.map(|body| body.map_err(BoxError::from).boxed()),
        Err(e) => {
            shared.count(|c| c.upstream_errors += 1);
            shared.note(format!("upstream {}: {e}", shared.upstream));
            let body = format!("fault proxy: upstream {}: {e}\n", shared.upstream);
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
                .expect("a valid response");
        }
    };
    let limit = truncate.then(|| resp.body().size_hint().exact().unwrap_or(0) / 2);
    let pace = rate.map(|r| (shared.pace_down.clone(), r));
    resp.map(|body| match (pace, limit) {
        (None, None) => body,
        (pace, limit) => pump(body, pace, limit),
    })
}

async fn send_upstream(
    upstream: &str,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, BoxError> {
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await?;
    // Ends by itself once the response body is read or dropped.
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}
