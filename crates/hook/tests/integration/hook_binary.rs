//! Runs the built `nix-outbox-hook` the way Nix does: no arguments, a bare
//! environment with only the variables under test, and checks it always
//! exits 0, prints at most one line, and either hands the request to the
//! (stand-in) daemon or spools it.

use std::ffi::{OsStr, OsString};
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use nix_outbox_core::StoreDir;
use nix_outbox_hook::protocol::{MAX_REQUEST_BYTES, decode, read_request_frame};
use nix_outbox_hook::spool::{list_spool, read_spool_file};

const H1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
const H2: &str = "0c7c1hhqxpa4yddk1qyw2k8c7dj5jgkn";
/// Loose upper bound for a hook run: far above the 300 ms timeout, so it
/// cannot flake, yet catches a hook that hangs.
const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    socket: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_state(dir.path().join("state"), dir)
    }

    fn with_state(state: PathBuf, dir: tempfile::TempDir) -> Self {
        Self::with_timeout(state, dir, 300)
    }

    fn with_timeout(state: PathBuf, dir: tempfile::TempDir, timeout_ms: u64) -> Self {
        let socket = dir.path().join("hook.sock");
        let config = dir.path().join("config.toml");
        let text = format!(
            "state-dir = {:?}\nsocket = {:?}\nhook-timeout-ms = {timeout_ms}\nunknown-key = true\n",
            state.to_str().unwrap(),
            socket.to_str().unwrap()
        );
        std::fs::write(&config, text).unwrap();
        Self {
            _dir: dir,
            config,
            state,
            socket,
        }
    }

    fn spool(&self) -> PathBuf {
        self.state.join("spool")
    }

    fn spooled(&self) -> Vec<PathBuf> {
        list_spool(&self.spool()).unwrap()
    }

    fn listen(&self) -> UnixListener {
        UnixListener::bind(&self.socket).unwrap()
    }

    /// Runs the hook with `env` plus NIX_OUTBOX_CONFIG and nothing else.
    fn run(&self, env: &[(&str, &OsStr)]) -> Output {
        let start = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_nix-outbox-hook"))
            .env_clear()
            .env("NIX_OUTBOX_CONFIG", &self.config)
            .envs(env.iter().copied())
            .current_dir("/")
            .output()
            .unwrap();
        assert!(start.elapsed() < BOUND, "hook took {:?}", start.elapsed());
        assert!(out.status.success(), "exit status {:?}", out.status);
        assert!(
            out.stdout.is_empty(),
            "stdout: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let lines = stderr(&out).lines().count();
        assert!(lines <= 1, "more than one stderr line: {:?}", stderr(&out));
        out
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn out_path(h: &str, name: &str) -> String {
    format!("/nix/store/{h}-{name}")
}

fn drv_path() -> String {
    out_path(H1, "hello-2.12.drv")
}

/// Accepts one connection, reads the frame, then lets `reply` answer.
fn daemon(
    listener: UnixListener,
    reply: impl FnOnce(&mut UnixStream) + Send + 'static,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let frame = read_request_frame(&mut s, MAX_REQUEST_BYTES).unwrap();
        reply(&mut s);
        frame
    })
}

fn assert_no_connection(listener: &UnixListener) {
    listener.set_nonblocking(true).unwrap();
    let e = listener.accept().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn no_daemon_spools_with_one_line() {
    let s = Setup::new();
    let outs = format!(
        "{} {}",
        out_path(H1, "hello-2.12"),
        out_path(H2, "hello-2.12-man")
    );
    let out = s.run(&[("DRV_PATH", os(&drv_path())), ("OUT_PATHS", os(&outs))]);
    let err = stderr(&out);
    let want = format!(
        "nix-outbox-hook: daemon unavailable at {} (no such socket); queued 2 paths in {}\n",
        s.socket.display(),
        s.spool().display()
    );
    assert_eq!(err, want);
    let files = s.spooled();
    assert_eq!(files.len(), 1);
    let req = read_spool_file(&files[0], &StoreDir::default()).unwrap();
    assert_eq!(req.drv_path.unwrap().name(), "hello-2.12.drv");
    assert_eq!(req.out_paths.len(), 2);
}

#[test]
fn acknowledged_request_is_silent_and_exact() {
    let s = Setup::new();
    let listener = s.listen();
    let h = daemon(listener, |s| s.write_all(b"ok 7\n").unwrap());
    let outs = format!("{} {}", out_path(H1, "a"), out_path(H2, "b"));
    let out = s.run(&[("DRV_PATH", os(&drv_path())), ("OUT_PATHS", os(&outs))]);
    assert_eq!(stderr(&out), "");
    let frame = String::from_utf8(h.join().unwrap()).unwrap();
    let want = format!(
        "nix-outbox-hook 1\ndrv {}\nout {}\nout {}\nend\n",
        drv_path(),
        out_path(H1, "a"),
        out_path(H2, "b")
    );
    assert_eq!(frame, want);
    assert!(s.spooled().is_empty());
}

#[test]
fn hung_daemon_costs_only_the_timeout_then_spools() {
    let s = Setup::new();
    let h = daemon(s.listen(), |s| {
        // Never answer; wait until the hook gives up and hangs up.
        let _ = s.read_to_end(&mut Vec::new());
    });
    let start = Instant::now();
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "a")))]);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let err = stderr(&out);
    assert!(
        err.contains("did not take the request (no acknowledgement within 300 ms)"),
        "{err}"
    );
    assert!(err.contains("queued 1 path in"), "{err}");
    assert_eq!(s.spooled().len(), 1);
    h.join().unwrap();
}

/// Issue 14: with the daemon hung, every build used to wait the whole
/// timeout. After one timeout the next hooks spool without connecting,
/// until the daemon answers (it removes the marker) or the marker ages.
#[test]
fn after_one_timeout_the_next_hooks_spool_without_connecting() {
    let s = Setup::new();
    let listener = s.listen();
    // Nobody accepts: connections wait in the backlog, as with a daemon
    // stopped by SIGSTOP.
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "a")))]);
    assert!(
        stderr(&out).contains("no acknowledgement within 300 ms"),
        "{}",
        stderr(&out)
    );
    let (first, _) = listener.accept().unwrap();
    drop(first);
    let marker = nix_outbox_hook::unresponsive::marker_path(&s.spool());
    assert!(marker.exists());
    for name in ["b", "c"] {
        let out = s.run(&[("OUT_PATHS", os(&out_path(H2, name)))]);
        let err = stderr(&out);
        assert!(
            err.contains("did not answer a hook") && err.contains("queued 1 path in"),
            "{err}"
        );
        assert_no_connection(&listener);
    }
    assert_eq!(s.spooled().len(), 3);
    // The daemon answered someone (it clears the marker): hooks connect again.
    nix_outbox_hook::unresponsive::clear(&s.spool());
    listener.set_nonblocking(false).unwrap();
    let h = daemon(listener, |s| s.write_all(b"ok 9\n").unwrap());
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "d")))]);
    assert_eq!(stderr(&out), "");
    h.join().unwrap();
}

/// Writes the daemon's heartbeat as the daemon does, naming process `pid`.
fn heartbeat_for(spool: &Path, pid: u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    // Field 22 (starttime) is the 20th after the command name.
    let started = after_name.split_ascii_whitespace().nth(19).unwrap();
    std::fs::create_dir_all(spool).unwrap();
    let file = nix_outbox_hook::liveness::path(spool);
    std::fs::write(file, format!("{pid} {started}\n")).unwrap();
}

/// Issue 14: a daemon stopped by SIGSTOP is known to be hung from its
/// heartbeat, so even the first hook spools without connecting (before,
/// it waited its whole timeout) and leaves the marker for the next ones.
#[test]
fn a_stopped_daemon_is_not_waited_for_even_once() {
    let s = Setup::new();
    let listener = s.listen();
    let mut stopped = Command::new("sleep").arg("60").spawn().unwrap();
    heartbeat_for(&s.spool(), stopped.id());
    // SAFETY: plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(stopped.id() as i32, libc::SIGSTOP) }, 0);
    let mut state = String::new();
    for _ in 0..500 {
        state = std::fs::read_to_string(format!("/proc/{}/stat", stopped.id())).unwrap();
        if state.contains(") T ") {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(state.contains(") T "), "{state}");
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "a")))]);
    let _ = stopped.kill();
    let _ = stopped.wait();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "is hung (its process {} is stopped)",
            stopped.id()
        )) && err.contains("queued 1 path in"),
        "{err}"
    );
    assert_no_connection(&listener);
    assert_eq!(s.spooled().len(), 1);
    assert!(nix_outbox_hook::unresponsive::marker_path(&s.spool()).exists());
}

/// Issue 14: a daemon that takes the request, then hangs, is given up as
/// soon as its heartbeat goes stale, not after `hook-timeout-ms` (60 s
/// here, past the run's bound).
#[test]
fn a_daemon_whose_heartbeat_stops_is_given_up_before_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::with_timeout(dir.path().join("state"), dir, 60_000);
    // This test process plays the daemon: alive, but nothing beats.
    heartbeat_for(&s.spool(), std::process::id());
    let h = daemon(s.listen(), |s| {
        // Never answers; waits until the hook gives up and closes.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    });
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "a")))]);
    let err = stderr(&out);
    assert!(
        err.contains("no acknowledgement, and the daemon is hung: its hook thread has not run for")
            && err.contains("queued 1 path in"),
        "{err}"
    );
    h.join().unwrap();
    assert_eq!(s.spooled().len(), 1);
    assert!(nix_outbox_hook::unresponsive::marker_path(&s.spool()).exists());
}

#[test]
fn refusing_daemon_means_spooled() {
    let s = Setup::new();
    let h = daemon(s.listen(), |s| {
        s.write_all(b"error queue is broken\n").unwrap()
    });
    let out = s.run(&[("OUT_PATHS", os(&out_path(H1, "a")))]);
    let err = stderr(&out);
    assert!(
        err.contains("(request refused: queue is broken); queued 1 path"),
        "{err}"
    );
    assert_eq!(s.spooled().len(), 1);
    h.join().unwrap();
}

#[test]
fn unwritable_spool_says_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    // Tests run as root, so permissions would not stop us: put the state
    // dir under a regular file instead.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let s = Setup::with_state(file.join("state"), dir);
    let a = out_path(H1, "a");
    let out = s.run(&[("OUT_PATHS", os(&a))]);
    let err = stderr(&out);
    assert!(err.contains("queueing failed"), "{err}");
    assert!(err.contains("1 path NOT queued"), "{err}");
    assert!(
        err.trim_end()
            .ends_with(&format!("run: nix-outbox push {a}")),
        "{err}"
    );
}

#[test]
fn garbage_env_sends_nothing() {
    let s = Setup::new();
    let listener = s.listen();
    let outs = "/etc/passwd /nix/store/../etc/shadow /nix/store/* relative /nix/store/x";
    let out = s.run(&[("DRV_PATH", os("/tmp/evil.drv")), ("OUT_PATHS", os(outs))]);
    let err = stderr(&out);
    assert!(
        err.starts_with("nix-outbox-hook: nothing to queue: ignored DRV_PATH"),
        "{err}"
    );
    assert!(err.contains("and 1 more"), "{err}");
    assert_no_connection(&listener);
    assert!(!s.spool().exists());

    let bad = OsString::from_vec(b"/nix/store/\xff\xfe".to_vec());
    let out = s.run(&[("OUT_PATHS", &bad)]);
    assert!(stderr(&out).contains("not UTF-8"), "{}", stderr(&out));
    assert_no_connection(&listener);
}

#[test]
fn empty_out_paths_sends_the_drv() {
    // Nix 2.8.0 (nix#6446) runs hooks with an empty OUT_PATHS.
    let s = Setup::new();
    let h = daemon(s.listen(), |s| s.write_all(b"ok 1\n").unwrap());
    let out = s.run(&[("DRV_PATH", os(&drv_path())), ("OUT_PATHS", os(""))]);
    assert_eq!(stderr(&out), "");
    let req = decode(&h.join().unwrap(), &StoreDir::default()).unwrap();
    assert_eq!(
        req.drv_path.map(|p| p.name().to_owned()).as_deref(),
        Some("hello-2.12.drv")
    );
    assert!(req.out_paths.is_empty());

    // And spooled, when the daemon is away, names the outputs to expect.
    let s = Setup::new();
    let out = s.run(&[("DRV_PATH", os(&drv_path())), ("OUT_PATHS", os(""))]);
    assert!(stderr(&out).contains(&format!("queued the outputs of {}", drv_path())));
    assert_eq!(s.spooled().len(), 1);
}

#[test]
fn broken_config_still_exits_zero() {
    let s = Setup::new();
    std::fs::write(&s.config, "state-dir = [\n").unwrap();
    // Nothing valid to send either, so the hook touches no default path.
    let out = s.run(&[("OUT_PATHS", os("/etc/passwd"))]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("config {}: line 1", s.config.display())),
        "{err}"
    );
}

#[test]
fn arguments_and_missing_env_are_harmless() {
    // Without any env at all (no HOME, no config var) and stray arguments.
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nix-outbox-hook"))
        .arg("--unexpected")
        .env_clear()
        .output()
        .unwrap();
    assert!(start.elapsed() < BOUND);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("nothing to queue"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn custom_store_dir_is_honoured() {
    let s = Setup::new();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str("store-dir = \"/opt/store\"\n");
    std::fs::write(&s.config, text).unwrap();
    let p = format!("/opt/store/{H1}-a");
    let out = s.run(&[("OUT_PATHS", os(&format!("{p} {}", out_path(H2, "b"))))]);
    let err = stderr(&out);
    assert!(err.contains("queued 1 path"), "{err}");
    let sd = StoreDir::new("/opt/store").unwrap();
    let req = read_spool_file(&s.spooled()[0], &sd).unwrap();
    assert_eq!(sd.display(&req.out_paths[0]), p);
    assert!(Path::new(&s.config).exists());
}

/// 1,100 distinct output paths, as a derivation with that many outputs has.
fn many_outputs() -> String {
    (0..1100)
        .map(|i| out_path(&format!("{i:0>5}{}", &H2[5..]), "many"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Issue 14: past 1024 outputs (or 64 KiB) the hook used to drop the rest.
/// With the derivation, it sends the derivation alone, and the daemon
/// resolves every output from it.
#[test]
fn more_outputs_than_a_request_holds_send_the_drv_alone() {
    let s = Setup::new();
    let h = daemon(s.listen(), |s| s.write_all(b"ok 1\n").unwrap());
    let out = s.run(&[
        ("DRV_PATH", os(&drv_path())),
        ("OUT_PATHS", os(&many_outputs())),
    ]);
    assert_eq!(stderr(&out), "");
    let frame = String::from_utf8(h.join().unwrap()).unwrap();
    assert_eq!(
        frame,
        format!("nix-outbox-hook 1\ndrv {}\nend\n", drv_path())
    );
}

/// Without a derivation, the paths are split over requests that each fit;
/// none is dropped, and what the daemon does not take is spooled.
#[test]
fn more_outputs_without_a_drv_are_split_and_all_spooled() {
    let s = Setup::new();
    let out = s.run(&[("OUT_PATHS", os(&many_outputs()))]);
    assert!(
        stderr(&out).contains("queued 1100 paths in"),
        "{}",
        stderr(&out)
    );
    let sd = StoreDir::default();
    let files = s.spooled();
    assert_eq!(files.len(), 2);
    let total: usize = files
        .iter()
        .map(|f| read_spool_file(f, &sd).unwrap().out_paths.len())
        .sum();
    assert_eq!(total, 1100);
}

/// Issue 14: a panic inside the hook still exits 0 with one line that says
/// what may not be queued and what to run.
#[test]
fn a_panic_exits_zero_with_one_line() {
    let s = Setup::new();
    let out = s.run(&[
        ("NIX_OUTBOX_HOOK_TEST_PANIC", os("1")),
        ("DRV_PATH", os(&drv_path())),
    ]);
    let err = stderr(&out);
    assert!(
        err.starts_with("nix-outbox-hook: internal error (")
            && err.contains("NIX_OUTBOX_HOOK_TEST_PANIC")
            && err.contains("may NOT be queued")
            && err.contains("nix-outbox push"),
        "{err}"
    );
}
