//! The daemon as a child process for the systemd tests: spawned with an
//! inherited listening socket (as systemd passes it) and a NOTIFY_SOCKET,
//! signalled and waited for; and raw hook requests on the socket.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Outbox, outbox_bin};
use nix_outbox_testkit as tk;

/// Generous: only a hang comes near it.
pub const HANG: Duration = Duration::from_secs(180);

/// Sets the config's hook timeout high (the hook must wait for a daemon
/// being started, not spool) and appends `extra`.
pub fn configure(outbox: &Outbox, extra: &str) {
    let text = std::fs::read_to_string(&outbox.config).unwrap();
    // The longest the schema allows (the hook used to ignore a longer one
    // silently and wait its 2 s default; the daemon now refuses it).
    let text = text.replace("hook-timeout-ms = 3000\n", "hook-timeout-ms = 60000\n");
    std::fs::write(&outbox.config, format!("{text}{extra}")).unwrap();
}

/// A fresh store path of about `bytes` random bytes, built in the host store.
pub fn fresh_path(tag: &str, bytes: usize) -> String {
    let expr = tk::sh_derivation(
        &format!("systemd-{tag}-{}", tk::nonce()),
        &["out"],
        &format!("head -c {bytes} /dev/urandom > $out"),
    );
    tk::nix_build(&expr).remove(0)
}

/// A daemon process started by a test; killed (SIGKILL) when dropped.
pub struct Running(pub Child);

impl Running {
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }

    /// Waits for the exit (a hang fails with the log).
    pub fn wait(&mut self, outbox: &Outbox) -> std::process::ExitStatus {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                outbox.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nix-outbox daemon` for `outbox`, logging to its log. With `socket`, the
/// daemon inherits it as fd 3 with LISTEN_FDS=1 and LISTEN_PID set to its
/// own pid (known only after fork: a shell sets it to `$$` and execs the
/// daemon, which keeps the pid), as systemd does.
pub fn spawn_daemon(
    outbox: &Outbox,
    socket: Option<&UnixListener>,
    notify: Option<&Path>,
) -> Running {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(outbox.dir.path().join("outbox.log"))
        .unwrap();
    let mut cmd = match socket {
        None => Command::new(outbox_bin()),
        Some(listener) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
                .arg(outbox_bin());
            let fd = listener.as_raw_fd();
            // SAFETY: only async-signal-safe calls (dup2, fcntl) after fork.
            unsafe {
                c.pre_exec(move || {
                    let rc = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, 3)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c
        }
    };
    cmd.args(["daemon", "--config"])
        .arg(&outbox.config)
        .env("RUST_LOG", "info,nix_daemon=warn")
        .env_remove("NIX_REMOTE")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET");
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Running(child)
}

/// A NOTIFY_SOCKET bound by the test.
pub struct Notify {
    sock: UnixDatagram,
    pub path: std::path::PathBuf,
}

impl Notify {
    pub fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(HANG)).unwrap();
        Self { sock, path }
    }

    /// The next datagram containing `state` (e.g. `READY=1`).
    pub fn expect(&self, state: &str, outbox: &Outbox) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {state} on NOTIFY_SOCKET ({e}):\n{}", outbox.log()));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == state) {
                return msg;
            }
        }
    }
}

/// Sends one hook request for `path` on an open connection.
pub fn send_request(stream: &mut UnixStream, path: &str) {
    stream
        .write_all(format!("nix-outbox-hook 1\nout {path}\nend\n").as_bytes())
        .unwrap();
}

/// Reads the daemon's one-line reply.
pub fn read_reply(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(HANG)).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

/// Waits until the daemon accepts on its socket.
pub fn wait_for_socket(outbox: &Outbox) {
    let deadline = Instant::now() + HANG;
    while UnixStream::connect(outbox.socket()).is_err() {
        assert!(Instant::now() < deadline, "{}", outbox.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}
