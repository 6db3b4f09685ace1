//! The fault proxy in front of a real server (the private nginx), spoken to
//! with raw HTTP/1.1 over a socket, so every fault is seen exactly as a
//! client would see it: bytes, resets and early ends.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix_outbox_testkit::fault_proxy::{Counts, Fault, FaultProxy, Plan};
use nix_outbox_testkit::webdav::WebDavServer;

/// What came back for one request on its own connection: the response
/// head and as much of the body as arrived, or the read error.
struct Reply {
    head: String,
    body: Vec<u8>,
    error: Option<std::io::Error>,
}

impl Reply {
    fn status(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn exchange(port: u16, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
    // Only bounds a hang; no test waits this long.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let error = loop {
        match s.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e),
        }
    };
    let split = got.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (
            String::from_utf8_lossy(&got[..i]).into_owned(),
            got[i + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&got).into_owned(), Vec::new()),
    };
    Reply { head, body, error }
}

fn start() -> (WebDavServer, FaultProxy) {
    let web = WebDavServer::start();
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", web.port));
    (web, proxy)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn passes_requests_and_bodies_unchanged() {
    let (web, proxy) = start();
    let data = payload(300_000);
    let put = exchange(proxy.port(), "PUT", "/d/blob", &data);
    assert!(put.status().starts_with('2'), "{}", put.head);
    assert_eq!(std::fs::read(web.root().join("d/blob")).unwrap(), data);
    let get = exchange(proxy.port(), "GET", "/d/blob", &[]);
    assert_eq!(get.status(), "200", "{}", get.head);
    assert!(get.body == data && get.error.is_none());
    let c = proxy.counts();
    assert_eq!((c.requests, c.passed, c.faults()), (2, 2, 0), "{c:?}");
    // The request line reached nginx as sent.
    let log = std::fs::read_to_string(web.root().join("../access.log")).unwrap();
    assert!(log.contains("\"PUT /d/blob HTTP/1.1\""), "{log}");
}

#[test]
fn slow_down_answers_503_with_retry_after_and_forwards_nothing() {
    let (web, proxy) = start();
    proxy.set_plan(Plan::Always(Fault::SlowDown {
        retry_after_secs: 7,
    }));
    let r = exchange(proxy.port(), "PUT", "/x", b"data");
    assert_eq!(r.status(), "503", "{}", r.head);
    assert_eq!(r.header("retry-after"), Some("7"), "{}", r.head);
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("<Code>SlowDown</Code>"), "{text}");
    assert!(!web.root().join("x").exists());
    assert_eq!(proxy.counts().slow_down, 1);
}

#[test]
fn reset_drops_the_connection_unanswered() {
    let (web, proxy) = start();
    proxy.set_plan(Plan::Always(Fault::Reset));
    let r = exchange(proxy.port(), "PUT", "/x", &payload(100_000));
    assert!(r.head.is_empty(), "answered: {}", r.head);
    let kind = r.error.as_ref().map(|e| e.kind());
    assert_eq!(kind, Some(ErrorKind::ConnectionReset), "{:?}", r.error);
    assert!(!web.root().join("x").exists());
    assert_eq!(proxy.counts().reset, 1);
}

#[test]
fn truncation_cuts_bodies_and_drops_empty_answers_after_forwarding() {
    let (web, proxy) = start();
    let data = payload(10_000);
    proxy.set_plan(Plan::Always(Fault::TruncateResponse));
    // The PUT is carried out, but its (empty) answer never comes.
    let put = exchange(proxy.port(), "PUT", "/t", &data);
    assert!(put.head.is_empty(), "answered: {}", put.head);
    assert_eq!(std::fs::read(web.root().join("t")).unwrap(), data);
    // A body: the head promises all of it, half arrives.
    let get = exchange(proxy.port(), "GET", "/t", &[]);
    assert_eq!(get.status(), "200", "{}", get.head);
    assert_eq!(get.header("content-length"), Some("10000"));
    assert!(get.body == data[..5000], "{} bytes arrived", get.body.len());
    proxy.set_plan(Plan::Pass);
    assert!(exchange(proxy.port(), "GET", "/t", &[]).body == data);
    let c = proxy.counts();
    assert_eq!((c.truncated, c.passed), (2, 1), "{c:?}");
}

#[test]
fn stall_delays_then_forwards() {
    let (_web, proxy) = start();
    proxy.set_plan(Plan::Always(Fault::Stall { secs: 1 }));
    let t = Instant::now();
    let r = exchange(proxy.port(), "PUT", "/s", b"x");
    assert!(r.status().starts_with('2'), "{}", r.head);
    // A lower bound only: the stall cannot end early.
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert_eq!(proxy.counts().stall, 1);
}

#[test]
fn throttle_limits_bandwidth_both_ways() {
    let (_web, proxy) = start();
    let data = payload(200_000);
    proxy.set_plan(Plan::Always(Fault::Throttle {
        bytes_per_sec: 100_000,
    }));
    // 200 kB each way at 100 kB/s: at least ~2 s per direction (lower
    // bounds only; the pace cannot be beaten).
    let t = Instant::now();
    let put = exchange(proxy.port(), "PUT", "/slow", &data);
    assert!(put.status().starts_with('2'), "{}", put.head);
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let get = exchange(proxy.port(), "GET", "/slow", &[]);
    assert!(get.body == data, "{}", get.head);
    assert!(
        t.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(proxy.counts().throttled, 2);
}

#[test]
fn down_refuses_connections_and_up_listens_on_the_same_port() {
    let (_web, proxy) = start();
    // A connection open before `down` is closed by it.
    let mut open = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    proxy.down();
    let err = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    open.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(open.read(&mut b), Ok(0) | Err(_)));
    proxy.up();
    let r = exchange(proxy.port(), "PUT", "/u", b"x");
    assert!(r.status().starts_with('2'), "{}", r.head);
}

#[test]
fn random_plan_mixes_faults_reproducibly_by_seed() {
    let run = |seed| {
        let (web, proxy) = start();
        let mix = [
            (
                0.3,
                Fault::SlowDown {
                    retry_after_secs: 1,
                },
            ),
            (0.2, Fault::Reset),
        ];
        proxy.set_plan(Plan::random(seed, &mix));
        for i in 0..120 {
            exchange(proxy.port(), "PUT", &format!("/r/{i}"), b"x");
        }
        drop(web);
        proxy.counts()
    };
    let a: Counts = run(42);
    assert_eq!(a.requests, 120);
    assert_eq!(a.slow_down + a.reset + a.passed, 120, "{a:?}");
    assert!(a.slow_down > 10 && a.reset > 5 && a.passed > 30, "{a:?}");
    assert_eq!(run(42), a, "same seed, same faults");
}

#[test]
fn targeted_plan_hits_only_matching_requests_and_only_so_often() {
    let (_web, proxy) = start();
    proxy.set_plan(Plan::Targeted {
        matching: "PUT /only".to_owned(),
        fault: Fault::SlowDown {
            retry_after_secs: 1,
        },
        times: 1,
    });
    let status = |path| {
        exchange(proxy.port(), "PUT", path, b"x")
            .status()
            .to_owned()
    };
    assert!(status("/other").starts_with('2'));
    assert_eq!(status("/only"), "503");
    assert!(status("/only").starts_with('2'));
    let c = proxy.counts();
    assert_eq!((c.slow_down, c.passed), (1, 2), "{c:?}");
}
