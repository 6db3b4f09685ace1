//! systemd integration: readiness and stop notifications (`sd_notify`) and
//! socket activation (`sd_listen_fds`), through the `sd-notify` crate (a
//! few dozen lines over libc, no libsystemd).
//!
//! Both are no-ops outside systemd: without `NOTIFY_SOCKET` nothing is sent,
//! and without `LISTEN_FDS`/`LISTEN_PID` the daemon binds its own socket.

use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use sd_notify::NotifyState;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SystemdError {
    #[error(
        "invalid socket activation variables (LISTEN_FDS/LISTEN_PID): {0}; start the daemon from nix-outbox.socket or unset them"
    )]
    Environment(std::io::Error),
    #[error(
        "systemd passed {0} sockets; nix-outbox.socket must have exactly one ListenStream= (the hook socket)"
    )]
    SocketCount(usize),
    #[error(
        "the socket systemd passed (fd {fd}) is not a listening Unix stream socket ({what}); use ListenStream=/path/to/hook.sock in nix-outbox.socket"
    )]
    NotUnixStream { fd: RawFd, what: String },
}

/// A listening socket inherited from systemd (or any `sd_listen_fds`
/// caller, such as `systemd-socket-activate`).
pub struct InheritedSocket {
    pub listener: UnixListener,
    /// The path it is bound to, if it has one.
    pub path: Option<PathBuf>,
}

/// Takes the hook socket passed by socket activation, if any: `LISTEN_PID`
/// must name this process, the descriptors start at 3, and exactly one is
/// expected. The variables are removed so that nothing this process starts
/// (`nix-daemon --stdio`) mistakes the socket for its own.
///
/// # Safety
///
/// Changes the environment: call it before any other thread exists (before
/// the tokio runtime is built).
pub unsafe fn take_listen_socket() -> Result<Option<InheritedSocket>, SystemdError> {
    // SAFETY: the caller guarantees that the process is single-threaded.
    let fds: Vec<RawFd> = unsafe { sd_notify::listen_fds_and_unset_env() }
        .map_err(SystemdError::Environment)?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => return Err(SystemdError::SocketCount(more.len())),
    };
    check_listening_unix_stream(fd)?;
    // SAFETY: sd_listen_fds hands the descriptor to this process, which
    // nothing else in it uses; we take ownership once.
    let listener = UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from));
    Ok(Some(InheritedSocket { listener, path }))
}

/// Refuses anything but a listening `AF_UNIX` `SOCK_STREAM` socket: a
/// misconfigured unit (ListenDatagram=, a TCP port, Accept=yes) would
/// otherwise fail later and obscurely in `accept`.
fn check_listening_unix_stream(fd: RawFd) -> Result<(), SystemdError> {
    let bad = |what: String| SystemdError::NotUnixStream { fd, what };
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| bad(format!("SO_DOMAIN: {e}")))?;
    let kind = sockopt(fd, libc::SO_TYPE).map_err(|e| bad(format!("SO_TYPE: {e}")))?;
    let listening =
        sockopt(fd, libc::SO_ACCEPTCONN).map_err(|e| bad(format!("SO_ACCEPTCONN: {e}")))?;
    if domain != libc::AF_UNIX {
        return Err(bad(format!("address family {domain}, not AF_UNIX")));
    }
    if kind != libc::SOCK_STREAM {
        return Err(bad(format!("socket type {kind}, not SOCK_STREAM")));
    }
    if listening == 0 {
        return Err(bad("not listening (an accepted connection?)".to_owned()));
    }
    Ok(())
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `READY=1`: the queue is open, interrupted uploads are recovered and the
/// socket accepts. With `Type=notify`, units ordered after ours start now.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: shutting down (draining in-flight uploads).
pub fn notify_stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A free-form `STATUS=` line, shown by `systemctl status`.
pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    // A lost notification must not stop the daemon: systemd then times the
    // start out (and says so), which is the visible failure.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_unix_stream_sockets_are_accepted() {
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        check_listening_unix_stream(listener.as_raw_fd()).unwrap();
        let stream = std::os::unix::net::UnixStream::connect(dir.path().join("s")).unwrap();
        let e = check_listening_unix_stream(stream.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let e = check_listening_unix_stream(dgram.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("SOCK_STREAM"), "{e}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = check_listening_unix_stream(tcp.as_raw_fd()).unwrap_err();
        assert!(e.to_string().contains("AF_UNIX"), "{e}");
    }
}
