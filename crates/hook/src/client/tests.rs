use std::os::unix::net::UnixListener;
use std::thread;

use nix_outbox_core::StorePath;

use super::*;
use crate::protocol::{MAX_REQUEST_BYTES, decode, read_request_frame};

const T: Duration = Duration::from_millis(300);
/// Loose bound for "returned about when the timeout said": never flaky.
const SLACK: Duration = Duration::from_secs(5);

fn req() -> HookRequest {
    HookRequest {
        drv_path: Some(
            StorePath::from_base_name("7rjj86a15146cq1d3qy068lml7n8ykzm-x.drv").unwrap(),
        ),
        out_paths: vec![StorePath::from_base_name("0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn-x").unwrap()],
    }
}

/// A one-connection daemon stand-in: `reply` gets the accepted stream.
fn serve(
    reply: impl FnOnce(UnixStream) + Send + 'static,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    thread::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let h = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        reply(s);
    });
    (dir, path, h)
}

fn read_frame(s: &mut UnixStream) -> HookRequest {
    let bytes = read_request_frame(s, MAX_REQUEST_BYTES).unwrap();
    decode(&bytes, &StoreDir::default()).unwrap()
}

fn send_default(path: &Path) -> Result<u64, SendError> {
    send(path, &req(), &StoreDir::default(), T)
}

#[test]
fn acknowledged_request_returns_the_id() {
    let (_d, path, h) = serve(|mut s| {
        assert_eq!(read_frame(&mut s), req());
        s.write_all(b"ok 42\n").unwrap();
    });
    assert_eq!(send_default(&path).unwrap(), 42);
    h.join().unwrap();
}

#[test]
fn missing_socket_and_refused_connection_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let e = send_default(&dir.path().join("none.sock")).unwrap_err();
    assert_eq!(e.to_string(), "no such socket");
    // A socket file whose listener is gone refuses connections.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = send_default(&stale).unwrap_err();
    assert_eq!(e.to_string(), "connection refused");
    assert!(start.elapsed() < T, "{:?}", start.elapsed());
}

#[test]
fn error_reply_is_refused() {
    let (_d, path, h) = serve(|mut s| {
        read_frame(&mut s);
        s.write_all(b"error queue database is locked\n").unwrap();
    });
    let e = send_default(&path).unwrap_err();
    assert!(
        matches!(&e, SendError::Refused(m) if m == "queue database is locked"),
        "{e}"
    );
    h.join().unwrap();
}

#[test]
fn silent_daemon_times_out() {
    let (_d, path, h) = serve(|mut s| {
        read_frame(&mut s);
        // Hold the connection open past the client's deadline.
        thread::sleep(T * 3);
    });
    let start = Instant::now();
    let e = send_default(&path).unwrap_err();
    assert!(matches!(e, SendError::TimedOut(_)), "{e}");
    assert!(
        start.elapsed() >= T && start.elapsed() < SLACK,
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.to_string(), "no acknowledgement within 300 ms");
    h.join().unwrap();
}

#[test]
fn trickling_daemon_cannot_extend_the_deadline() {
    let (_d, path, h) = serve(|mut s| {
        read_frame(&mut s);
        for _ in 0..30 {
            if s.write_all(b"e").is_err() {
                return;
            }
            thread::sleep(T / 5);
        }
    });
    let start = Instant::now();
    let e = send_default(&path).unwrap_err();
    assert!(matches!(e, SendError::TimedOut(_)), "{e}");
    assert!(start.elapsed() < SLACK, "{:?}", start.elapsed());
    h.join().unwrap();
}

#[test]
fn garbage_and_eof_are_errors() {
    let (_d, path, h) = serve(|mut s| {
        read_frame(&mut s);
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
    });
    let e = send_default(&path).unwrap_err();
    assert!(matches!(e, SendError::BadReply(_)), "{e}");
    h.join().unwrap();

    let (_d, path, h) = serve(|mut s| {
        read_frame(&mut s);
    });
    let e = send_default(&path).unwrap_err();
    assert!(matches!(e, SendError::Closed), "{e}");
    h.join().unwrap();
}

#[test]
fn full_backlog_does_not_block_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Shrink the backlog so it is full after one pending connection; the
    // listener never accepts, like a wedged daemon.
    // SAFETY: the listener's fd is open and already listening.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let start = Instant::now();
    let mut held = Vec::new();
    let mut timed_out = false;
    for _ in 0..5 {
        match connect(&path, T) {
            Ok(s) => held.push(s),
            Err(e) => {
                assert!(is_timeout(&e), "{e}");
                timed_out = true;
                break;
            }
        }
    }
    assert!(timed_out, "connect never blocked ({} held)", held.len());
    assert!(start.elapsed() < SLACK, "{:?}", start.elapsed());
    // And through `send`: still a timeout, not a hang.
    let e = send_default(&path).unwrap_err();
    assert!(matches!(e, SendError::TimedOut(_)), "{e}");
}

#[test]
fn overlong_socket_path_is_rejected() {
    let long = Path::new("/tmp").join("s".repeat(200));
    let e = send_default(&long).unwrap_err();
    assert!(matches!(e, SendError::Connect(_)), "{e}");
    assert!(e.to_string().contains("longer than"), "{e}");
}

#[test]
fn empty_request_is_not_sent() {
    let e = send(
        Path::new("/nonexistent"),
        &HookRequest::default(),
        &StoreDir::default(),
        T,
    );
    assert!(matches!(e, Err(SendError::Unsendable)));
}
