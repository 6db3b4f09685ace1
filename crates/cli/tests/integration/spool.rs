//! The spool as the daemon reads it (issue 14): a file that holds no
//! request is set aside, never deleted, counted, and shown by `status` and
//! `wait` until someone deals with it; `retry --rejected-spool` puts it
//! back.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn a_garbage_spool_file_is_set_aside_counted_and_reported_until_dealt_with() {
    let mut outbox = Outbox::new("zstd");
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox.config)
        .unwrap();
    std::io::Write::write_all(&mut cfg, b"metrics-address = \"127.0.0.1:0\"\n").unwrap();
    drop(cfg);
    let spool = outbox.dir.path().join("state/spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("0000-garbage.req"), "not a request\n").unwrap();
    outbox.start(None);
    let set_aside = spool.join("rejected/0000-garbage.req");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !set_aside.exists() {
        assert!(Instant::now() < deadline, "not set aside: {}", outbox.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&metrics_address(&outbox), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "nix_outbox_spool_requests_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );

    let status = outbox.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("1 file(s) set aside") && text.contains("0000-garbage.req"),
        "{text}"
    );
    assert_eq!(
        outbox.status_json()["rejected_spool_files"][0]
            .as_str()
            .unwrap(),
        set_aside.display().to_string()
    );
    let wait = outbox.cli(&["wait", "--timeout", "30"]);
    let said = String::from_utf8_lossy(&wait.stderr);
    assert!(
        !wait.status.success(),
        "wait must not say all is uploaded: {said}"
    );
    assert!(
        said.contains("set aside") && said.contains("0000-garbage.req"),
        "{said}"
    );

    // Put back, it is read again (and, still garbage, set aside again).
    let retry = outbox.cli(&["retry", "--rejected-spool"]);
    assert!(retry.status.success(), "{retry:?}");
    assert!(
        String::from_utf8_lossy(&retry.stderr).contains("1 set-aside spool file(s) are back"),
        "{retry:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = http_get(&metrics_address(&outbox), "/metrics");
        if metrics
            .lines()
            .any(|l| l == "nix_outbox_spool_requests_total{outcome=\"rejected\"} 2")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not read again: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(set_aside.exists());
    // Removed by hand: `wait` has nothing left to object to.
    std::fs::remove_file(&set_aside).unwrap();
    let wait = outbox.cli(&["wait", "--timeout", "30"]);
    assert!(wait.status.success(), "{wait:?}");
}

/// Issue 14: hooks that saw the daemon hang spool without connecting until
/// it answers again; the daemon says so by removing their marker, at start
/// and whenever it acknowledges a request.
#[test]
fn the_daemon_clears_the_unresponsive_marker_when_it_answers() {
    let mut outbox = Outbox::new("zstd");
    let spool = outbox.dir.path().join("state/spool");
    std::fs::create_dir_all(&spool).unwrap();
    let marker = nix_outbox_hook::unresponsive::marker_path(&spool);
    std::fs::write(&marker, "").unwrap();
    outbox.start(None);
    assert!(!marker.exists(), "not cleared at start");
    std::fs::write(&marker, "").unwrap();
    let path = nix_outbox_testkit::nix_build(&nix_outbox_testkit::sh_derivation(
        "marker",
        &["out"],
        &format!("echo {} > $out", nix_outbox_testkit::nonce()),
    ))
    .remove(0);
    let out = outbox.cli(&["push", &path]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("queued directly"),
        "push went through the socket: {out:?}"
    );
    assert!(!marker.exists(), "not cleared by an acknowledgement");
}

/// Issue 14: the real daemon names itself in a heartbeat. Stopped
/// (SIGSTOP), it is known hung, so a hook spools at once without waiting
/// for it; resumed, it clears the hooks' marker itself and acknowledges
/// again; stopped cleanly, it removes the heartbeat.
#[test]
fn a_stopped_daemon_costs_hooks_no_wait_and_a_resumed_one_is_used_again() {
    let mut outbox = Outbox::new("zstd");
    outbox.start(None);
    let beat = nix_outbox_hook::liveness::path(&outbox.spool());
    let marker = nix_outbox_hook::unresponsive::marker_path(&outbox.spool());
    let pid = outbox.pid();
    let named = std::fs::read_to_string(&beat).unwrap();
    assert_eq!(named.split_whitespace().next(), Some(&*pid.to_string()));
    let paths: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            let expr = nix_outbox_testkit::sh_derivation(
                &format!("hb-{n}"),
                &["out"],
                &format!("echo {} > $out", nix_outbox_testkit::nonce()),
            );
            nix_outbox_testkit::nix_build(&expr).remove(0)
        })
        .collect();
    let hook = |path: &str| {
        let out = std::process::Command::new(hook_bin())
            .env("NIX_OUTBOX_CONFIG", &outbox.config)
            .env("OUT_PATHS", path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // SAFETY: plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&stat).unwrap().contains(") T ") {
        assert!(Instant::now() < deadline, "never stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let said = hook(&paths[0]);
    assert!(
        said.contains(&format!("is hung (its process {pid} is stopped)"))
            && said.contains("queued 1 path in"),
        "{said}"
    );
    assert_eq!(outbox.spooled(), 1);
    assert!(marker.exists());

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGCONT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while marker.exists() {
        assert!(
            Instant::now() < deadline,
            "a resumed daemon left the marker: {}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hook(&paths[1]), "", "the resumed daemon acknowledges");
    outbox.wait();
    for p in &paths {
        assert!(outbox.has(p), "{p} not uploaded: {}", outbox.log());
    }
    assert!(outbox.terminate().success(), "{}", outbox.log());
    assert!(!beat.exists(), "a clean stop leaves its heartbeat behind");
}
