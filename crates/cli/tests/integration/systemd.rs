//! systemd integration without systemd as PID 1: the installed units pass
//! `systemd-analyze verify`; the daemon takes its socket from
//! `systemd-socket-activate` and from a harness that hands one listening
//! socket to successive daemons (a hook connecting between them waits in
//! the backlog and is acknowledged by the next); READY=1 and STOPPING=1
//! reach a NOTIFY_SOCKET; SIGTERM drains in-flight uploads within
//! stop-timeout-secs, through a throttled HTTP target.
//!
//! Deadlines only turn a hang into a failure showing the daemon's log;
//! nothing here asserts how long anything takes.

use crate::support::systemd_harness as harness;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Outbox, has_narinfo, hook_bin, outbox_bin};
use harness::{
    HANG, Notify, Running, configure, fresh_path, read_reply, send_request, spawn_daemon,
    wait_for_socket,
};
use nix_outbox_testkit as tk;
use tk::fault_proxy::{Fault, FaultProxy, Plan};

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    assert!(
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok(),
        "systemd-analyze is missing: apt-get install systemd (scripts/test.sh does)"
    );
    let outbox = Outbox::new("zstd");
    let units = outbox.dir.path().join("units");
    let out = Command::new(outbox_bin())
        .args(["install-systemd", "--prefix"])
        .arg(&units)
        .arg("--config")
        .arg(&outbox.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = std::fs::canonicalize(outbox_bin()).unwrap();
    assert!(
        stdout.contains(
            "systemctl daemon-reload && systemctl enable --now nix-outbox.socket nix-outbox.service"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "post-build-hook = {}",
            bin.with_file_name("nix-outbox-hook").display()
        )),
        "{stdout}"
    );
    let service = std::fs::read_to_string(units.join("nix-outbox.service")).unwrap();
    let socket = std::fs::read_to_string(units.join("nix-outbox.socket")).unwrap();
    let config = std::fs::canonicalize(&outbox.config).unwrap();
    for line in [
        format!(
            "ExecStart={} daemon --config {}",
            bin.display(),
            config.display()
        ),
        format!(
            "ReadWritePaths={}",
            outbox.dir.path().join("state").display()
        ),
        format!("ReadWritePaths={}", outbox.cache.display()),
        "Type=notify".to_owned(),
    ] {
        assert!(service.lines().any(|l| l == line), "{line} in:\n{service}");
    }
    let listen = format!("ListenStream={}", outbox.socket().display());
    assert!(socket.lines().any(|l| l == listen), "{socket}");

    let verify = |dir: &Path| {
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.join("nix-outbox.service"))
            .arg(dir.join("nix-outbox.socket"))
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let out = verify(&units);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And verify does check here: a unit whose binary is missing fails.
    let broken = outbox.dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("nix-outbox.service"),
        service.replace(
            &format!("ExecStart={}", bin.display()),
            "ExecStart=/nonexistent/nix-outbox",
        ),
    )
    .unwrap();
    std::fs::write(broken.join("nix-outbox.socket"), &socket).unwrap();
    let out = verify(&broken);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/nix-outbox"),
        "verify accepted a missing binary: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_socket_activate_starts_the_daemon_for_the_first_hook() {
    let outbox = Outbox::new("zstd");
    configure(&outbox, "");
    let path = fresh_path("activate", 1000);
    let log = std::fs::File::create(outbox.dir.path().join("outbox.log")).unwrap();
    // No daemon runs until the first connection; systemd-socket-activate
    // then execs it (same pid) with the listening socket as fd 3.
    let mut activator = Running(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(outbox.socket())
            .args(["-E", "RUST_LOG=info,nix_daemon=warn"])
            .arg(outbox_bin())
            .args(["daemon", "--config"])
            .arg(&outbox.config)
            .env_remove("NIX_REMOTE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + HANG;
    while !tk::listening(&outbox.socket()) {
        assert!(Instant::now() < deadline, "no socket: {}", outbox.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // As SocketMode=0600 does (the daemon refuses looser modes); the
    // daemon starts only at the first connection, after this.
    chmod(&outbox.socket(), 0o600);
    let hook = Command::new(hook_bin())
        .env("NIX_OUTBOX_CONFIG", &outbox.config)
        .env("OUT_PATHS", &path)
        .env("DRV_PATH", "")
        .output()
        .unwrap();
    let hook_err = String::from_utf8_lossy(&hook.stderr);
    assert!(hook.status.success(), "{hook_err}");
    assert_eq!(
        outbox.spooled(),
        0,
        "the hook spooled: {hook_err}\n{}",
        outbox.log()
    );
    assert!(
        outbox.log().contains("(socket from systemd)"),
        "{}",
        outbox.log()
    );
    outbox.wait();
    assert!(outbox.has(&path), "{}", outbox.log());
    outbox.assert_cache_valid();
    activator.signal(libc::SIGTERM);
    let status = activator.wait(&outbox);
    assert!(status.success(), "{status}: {}", outbox.log());
    assert!(outbox.socket().exists(), "the inherited socket was removed");
}

#[test]
fn a_hook_waits_in_the_backlog_while_the_daemon_restarts() {
    let outbox = Outbox::new("zstd");
    configure(&outbox, "");
    let (first, second) = (fresh_path("first", 1000), fresh_path("second", 1000));
    let listener = UnixListener::bind(outbox.socket()).unwrap();
    chmod(&outbox.socket(), 0o600);
    let notify = Notify::bind(outbox.dir.path());

    let mut a = spawn_daemon(&outbox, Some(&listener), Some(&notify.path));
    notify.expect("READY=1", &outbox);
    let mut conn = UnixStream::connect(outbox.socket()).unwrap();
    send_request(&mut conn, &first);
    assert!(read_reply(&mut conn).starts_with("ok "), "{}", outbox.log());
    a.signal(libc::SIGKILL);
    a.wait(&outbox);

    // No daemon runs: the connection is queued by the kernel, and the
    // request waits in the socket buffer.
    let mut waiting = UnixStream::connect(outbox.socket()).unwrap();
    send_request(&mut waiting, &second);
    let mut b = spawn_daemon(&outbox, Some(&listener), Some(&notify.path));
    let reply = read_reply(&mut waiting);
    assert!(reply.starts_with("ok "), "{reply:?}: {}", outbox.log());
    notify.expect("READY=1", &outbox);
    outbox.wait();
    assert!(
        outbox.has(&first) && outbox.has(&second),
        "{}",
        outbox.log()
    );

    b.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", &outbox);
    let status = b.wait(&outbox);
    assert!(status.success(), "{status}: {}", outbox.log());
    assert!(outbox.socket().exists(), "the inherited socket was removed");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn an_inherited_socket_any_user_can_write_is_refused() {
    let outbox = Outbox::new("zstd");
    let listener = UnixListener::bind(outbox.socket()).unwrap();
    chmod(&outbox.socket(), 0o666);
    let mut d = spawn_daemon(&outbox, Some(&listener), None);
    let status = d.wait(&outbox);
    assert!(!status.success(), "{}", outbox.log());
    assert!(
        outbox.log().contains(
            "nix-outbox.socket has SocketMode=0666: any local user could enqueue uploads; set \
             SocketMode=0600 (or SocketGroup= and 0660), e.g. with nix-outbox install-systemd"
        ),
        "{}",
        outbox.log()
    );
    // Group-writable without socket-group is refused too; 0600 starts.
    chmod(&outbox.socket(), 0o660);
    let status = spawn_daemon(&outbox, Some(&listener), None).wait(&outbox);
    assert!(!status.success(), "{}", outbox.log());
    assert!(outbox.log().contains("SocketMode=0660"), "{}", outbox.log());
    chmod(&outbox.socket(), 0o600);
    let notify = Notify::bind(outbox.dir.path());
    let mut d = spawn_daemon(&outbox, Some(&listener), Some(&notify.path));
    notify.expect("READY=1", &outbox);
    d.signal(libc::SIGTERM);
    assert!(d.wait(&outbox).success(), "{}", outbox.log());
}

/// Issue 14: an abstract socket (`ListenStream=@name`) has no file
/// permissions at all; the daemon refuses to start on one.
#[test]
fn an_inherited_abstract_socket_is_refused() {
    use std::os::linux::net::SocketAddrExt as _;
    let outbox = Outbox::new("zstd");
    let name = format!("nix-outbox-test-{}", tk::nonce());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    let mut d = spawn_daemon(&outbox, Some(&listener), None);
    let status = d.wait(&outbox);
    assert!(!status.success(), "{}", outbox.log());
    assert!(
        outbox
            .log()
            .contains("systemd passed a socket without a path (an abstract socket"),
        "{}",
        outbox.log()
    );
}

/// Issue 14: a socket file owned by another user could have its mode
/// changed by that user at any time.
#[test]
fn an_inherited_socket_owned_by_another_user_is_refused() {
    let outbox = Outbox::new("zstd");
    let listener = UnixListener::bind(outbox.socket()).unwrap();
    chmod(&outbox.socket(), 0o600);
    let c = std::ffi::CString::new(outbox.socket().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; nobody's uid and gid.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    let mut d = spawn_daemon(&outbox, Some(&listener), None);
    let status = d.wait(&outbox);
    assert!(!status.success(), "{}", outbox.log());
    assert!(
        outbox
            .log()
            .contains("is owned by uid 65534, neither root nor the daemon's user"),
        "{}",
        outbox.log()
    );
}

#[test]
fn ready_after_listening_then_stopping_on_sigterm() {
    let outbox = Outbox::new("zstd");
    let notify = Notify::bind(outbox.dir.path());
    let mut d = spawn_daemon(&outbox, None, Some(&notify.path));
    let ready = notify.expect("READY=1", &outbox);
    assert!(ready.contains("STATUS="), "{ready}");
    // READY=1 means the socket accepts and the queue is open.
    let path = fresh_path("ready", 1000);
    let mut conn = UnixStream::connect(outbox.socket()).unwrap();
    send_request(&mut conn, &path);
    assert!(read_reply(&mut conn).starts_with("ok "), "{}", outbox.log());
    outbox.wait();
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", &outbox);
    let status = d.wait(&outbox);
    assert!(status.success(), "{status}: {}", outbox.log());
    assert!(
        !outbox.socket().exists(),
        "a socket the daemon bound stays behind"
    );
}

/// An outbox uploading over HTTP (nginx) through a throttling proxy, with
/// `stop-timeout-secs`.
fn slow_http(web: &tk::webdav::WebDavServer, stop_timeout: u64) -> (FaultProxy, Outbox) {
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", web.port));
    let base = proxy.url("cache");
    let outbox = Outbox::with_targets(|_| vec![format!("{base}?compression=none")], &[]);
    configure(&outbox, &format!("stop-timeout-secs = {stop_timeout}\n"));
    (proxy, outbox)
}

/// Enqueues `path` and waits until its upload is in flight.
fn start_upload(outbox: &Outbox, path: &str) {
    let out = outbox.cli(&["push", path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + HANG;
    loop {
        let s = outbox.status_json();
        if s["targets"][0]["in_flight"] == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never in flight: {s}\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_lets_the_upload_in_flight_finish_and_still_acknowledges_hooks() {
    let web = tk::webdav::WebDavServer::start();
    let (proxy, outbox) = slow_http(&web, 600);
    // About 5 s at this rate: SIGTERM comes well within it.
    let path = fresh_path("drained", 1 << 20);
    proxy.set_plan(Plan::Always(Fault::Throttle {
        bytes_per_sec: 200_000,
    }));
    let mut d = spawn_daemon(&outbox, None, None);
    let late = fresh_path("late", 1000);
    wait_for_socket(&outbox);
    start_upload(&outbox, &path);
    d.signal(libc::SIGTERM);
    let deadline = Instant::now() + HANG;
    while !outbox
        .log()
        .contains("waiting up to 600s for 1 upload(s) in flight")
    {
        assert!(Instant::now() < deadline, "{}", outbox.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Draining: hooks are still acknowledged (committed for the next start).
    let mut conn = UnixStream::connect(outbox.socket()).unwrap();
    send_request(&mut conn, &late);
    assert!(read_reply(&mut conn).starts_with("ok "), "{}", outbox.log());
    let status = d.wait(&outbox);
    assert!(status.success(), "{status}: {}", outbox.log());
    let cache = web.root().join("cache");
    assert!(has_narinfo(&cache, &path), "not finished: {}", outbox.log());
    assert!(
        !outbox.log().contains("stop-timeout-secs"),
        "{}",
        outbox.log()
    );
    let s = outbox.status_json();
    assert_eq!(s["targets"][0]["done"], 1, "{s}");
    assert_eq!(s["targets"][0]["in_flight"], 0, "{s}");
    // The late request was committed, not just answered: it waits in the
    // queue (nothing expands during a drain) and was not spooled.
    assert_eq!(s["new_requests"], 1, "{s}");
    assert_eq!(s["spooled_requests"], 0, "{s}");
}

#[test]
fn sigterm_leaves_an_upload_past_stop_timeout_queued() {
    let web = tk::webdav::WebDavServer::start();
    let (proxy, outbox) = slow_http(&web, 1);
    // Minutes at this rate: only the bound can end the drain.
    let path = fresh_path("cut", 4 << 20);
    proxy.set_plan(Plan::Always(Fault::Throttle {
        bytes_per_sec: 16_000,
    }));
    let mut d = spawn_daemon(&outbox, None, None);
    wait_for_socket(&outbox);
    start_upload(&outbox, &path);
    d.signal(libc::SIGTERM);
    let status = d.wait(&outbox);
    assert!(status.success(), "{status}: {}", outbox.log());
    let log = outbox.log();
    assert!(
        log.contains("stop-timeout-secs (1s) reached with uploads still in flight"),
        "{log}"
    );
    let cache = web.root().join("cache");
    assert!(!has_narinfo(&cache, &path), "{log}");
    // Still queued, and uploaded by the next daemon.
    let s = outbox.status_json();
    assert_eq!(s["targets"][0]["in_flight"], 1, "{s}");
    proxy.set_plan(Plan::Pass);
    let _d = spawn_daemon(&outbox, None, None);
    outbox.wait();
    assert!(has_narinfo(&cache, &path), "{}", outbox.log());
    outbox.assert_cache_valid_at(&cache);
}
