//! The hook's side of the socket: hand one request to the daemon and wait,
//! for a bounded time, for its durable acknowledgement.
//!
//! Everything runs against one deadline, so a daemon that is down, stuck,
//! not accepting, or trickling bytes costs the build at most `timeout`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix_outbox_core::StoreDir;
use thiserror::Error;

use crate::protocol::{HookRequest, ReadError, Reply, ReplyError, read_reply};

#[derive(Debug, Error)]
pub enum SendError {
    #[error("{}", describe_connect(.0))]
    Connect(io::Error),
    #[error("no acknowledgement within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// Given up before the timeout: the daemon's heartbeat says it is hung.
    #[error("no acknowledgement, and the daemon is hung: {0}")]
    Hung(String),
    #[error("sending the request failed: {0}")]
    Write(io::Error),
    #[error("reading the reply failed: {0}")]
    Read(io::Error),
    #[error("the daemon closed the connection without replying")]
    Closed,
    #[error("unintelligible reply: {0}")]
    BadReply(ReplyError),
    #[error("request refused: {0}")]
    Refused(String),
    #[error("the request is empty or over the protocol limits")]
    Unsendable,
}

fn describe_connect(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such socket".to_owned(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

/// Sends `req` to the daemon at `socket` and returns the request id from
/// its `ok` reply. Returns within about `timeout` whatever the daemon does.
pub fn send(
    socket: &Path,
    req: &HookRequest,
    sd: &StoreDir,
    timeout: Duration,
) -> Result<u64, SendError> {
    send_watched(socket, req, sd, timeout, &mut || None)
}

/// How often a wait for the reply asks its watch whether to give up.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// [`send`], giving up early (with [`SendError::Hung`]) as soon as `hung`
/// returns a reason while the reply is awaited. The hook passes a check of
/// the daemon's heartbeat (see [`crate::liveness`]), so a daemon that hangs
/// costs it less than the whole timeout.
pub fn send_watched(
    socket: &Path,
    req: &HookRequest,
    sd: &StoreDir,
    timeout: Duration,
    hung: &mut dyn FnMut() -> Option<String>,
) -> Result<u64, SendError> {
    let deadline = Instant::now() + timeout;
    if !req.fits(sd) {
        return Err(SendError::Unsendable);
    }
    let timed_out = || SendError::TimedOut(timeout);
    let stream = connect(socket, timeout).map_err(|e| {
        if is_timeout(&e) {
            timed_out()
        } else {
            SendError::Connect(e)
        }
    })?;
    let mut io = Deadlined {
        stream: &stream,
        deadline,
        hung,
        why_hung: None,
    };
    if let Err(e) = io.write_all(&req.encode(sd)) {
        if is_timeout(&e) {
            return Err(timed_out());
        }
        // A daemon that rejects a request early may close before reading it
        // all; its `error` line, if any, says more than EPIPE does.
        if let Ok(bytes) = read_reply(&mut io)
            && let Ok(Reply::Error(msg)) = Reply::decode(&bytes)
        {
            return Err(SendError::Refused(msg));
        }
        return Err(SendError::Write(e));
    }
    let bytes = match read_reply(&mut io) {
        Ok(b) => b,
        Err(ReadError::TooLarge(_)) => return Err(SendError::BadReply(ReplyError::TooLong)),
        Err(ReadError::Io(e)) if is_timeout(&e) => {
            return Err(match io.why_hung.take() {
                Some(why) => SendError::Hung(why),
                None => timed_out(),
            });
        }
        Err(ReadError::Io(e)) => return Err(SendError::Read(e)),
    };
    if bytes.is_empty() {
        return Err(SendError::Closed);
    }
    match Reply::decode(&bytes) {
        Ok(Reply::Ok(id)) => Ok(id),
        Ok(Reply::Error(msg)) => Err(SendError::Refused(msg)),
        Err(e) => Err(SendError::BadReply(e)),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads and writes with per-call timeouts recomputed from one deadline, so
/// many slow calls cannot add up past it. A read also ends early once
/// `hung` gives a reason, which it keeps in `why_hung`.
struct Deadlined<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
    hung: &'a mut dyn FnMut() -> Option<String>,
    why_hung: Option<String>,
}

impl Deadlined<'_> {
    fn left(&self) -> io::Result<Duration> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.left()?;
            self.stream.set_read_timeout(Some(left.min(WATCH_EVERY)))?;
            let mut s = self.stream;
            match s.read(buf) {
                Err(e) if is_timeout(&e) && left > WATCH_EVERY => {
                    if let Some(why) = (self.hung)() {
                        self.why_hung = Some(why);
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                res => return res,
            }
        }
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects like `UnixStream::connect`, but bounded: when the daemon stops
/// accepting and its listen backlog is full, a plain connect(2) blocks
/// indefinitely. Linux bounds that wait by the socket's send timeout
/// (failing with EAGAIN), which std offers no way to set before connecting.
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_os_str().as_bytes();
    // Keep a trailing NUL: some systems expect one.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path is empty or longer than {} bytes",
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let fd = socket()?;
    // At least 1 µs: a zero timeval would mean "wait forever".
    let micros = timeout.as_micros().max(1);
    let tv = libc::timeval {
        tv_sec: (micros / 1_000_000).try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: `fd` is an open socket; `tv` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un and `len` lies within it.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                len as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // A retried connect that completed in the meantime.
            Some(libc::EISCONN) => break,
            _ => return Err(e),
        }
    }
    Ok(UnixStream::from(fd))
}

fn socket() -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let ty = libc::SOCK_STREAM;
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        // SAFETY: `fd` is open; F_SETFD with FD_CLOEXEC has no other effect.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests;
