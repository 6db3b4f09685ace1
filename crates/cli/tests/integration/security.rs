//! Security properties, end to end: only root enqueues through the default
//! socket, readable secret keys are warned about, a store path altered
//! after registration is never signed or uploaded, symlinks out of the
//! store are uploaded as symlinks (never followed), and paths outside the
//! store are refused.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;
use nix_outbox_testkit as tk;

const NOBODY: &str = "65534";

/// `cmd` as user and group nobody, without supplementary groups.
fn as_nobody(cmd: &Command) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
    ]);
    c.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// The newest request id in the queue (0: none yet).
fn requests_in_queue(outbox: &Outbox) -> i64 {
    let q = nix_outbox_queue::Queue::open(&outbox.dir.path().join("state/queue.sqlite")).unwrap();
    q.max_request_id().unwrap()
}

#[test]
fn only_root_enqueues_through_the_default_socket() {
    let mut outbox = Outbox::new("zstd");
    // Let anyone reach the socket's directory, so only the socket's own
    // mode stands between another user and the daemon.
    std::fs::set_permissions(outbox.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&outbox.config, PermissionsExt::from_mode(0o644)).unwrap();
    outbox.start(None);
    let mode = std::fs::metadata(outbox.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "root-only by default");
    let before = requests_in_queue(&outbox);

    let out_path = format!("/nix/store/{}-not-from-root", "0".repeat(32));
    let mut hook = Command::new(hook_bin());
    hook.env("NIX_OUTBOX_CONFIG", &outbox.config)
        .env("OUT_PATHS", &out_path)
        .env_remove("DRV_PATH");
    let res = as_nobody(&hook).output().unwrap();
    let said = String::from_utf8_lossy(&res.stderr);
    // The hook never fails a build, even for the wrong user...
    assert!(res.status.success(), "{res:?}");
    // ...but says that nothing was queued.
    assert!(
        said.contains("Permission denied") && said.contains("NOT queued"),
        "{said}"
    );

    // `push` as that user fails with a message, and is not queued either.
    let mut push = Command::new(outbox_bin());
    push.args(["push", "--config"])
        .arg(&outbox.config)
        .arg(&out_path);
    let res = as_nobody(&push).output().unwrap();
    let said = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "push as nobody must fail: {said}");
    assert!(
        said.contains("nothing was queued") && said.contains("permission denied"),
        "{said}"
    );

    assert_eq!(requests_in_queue(&outbox), before, "nothing was enqueued");
}

/// Issue 14: a socket that lets another user connect (an abstract one, a
/// lax mode) must still not let them enqueue: the daemon checks who is on
/// the other end of every connection.
#[test]
fn another_user_is_refused_even_when_the_socket_lets_them_connect() {
    let mut outbox = Outbox::new("zstd");
    std::fs::set_permissions(outbox.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&outbox.config, PermissionsExt::from_mode(0o644)).unwrap();
    let mut cfg = std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox.config)
        .unwrap();
    std::io::Write::write_all(&mut cfg, b"metrics-address = \"127.0.0.1:0\"\n").unwrap();
    drop(cfg);
    outbox.start(None);
    // What an abstract socket or a careless chmod amounts to.
    std::fs::set_permissions(outbox.socket(), PermissionsExt::from_mode(0o666)).unwrap();
    let before = requests_in_queue(&outbox);

    let out_path = format!("/nix/store/{}-not-from-root", "1".repeat(32));
    let mut hook = Command::new(hook_bin());
    hook.env("NIX_OUTBOX_CONFIG", &outbox.config)
        .env("OUT_PATHS", &out_path)
        .env_remove("DRV_PATH");
    let res = as_nobody(&hook).output().unwrap();
    let said = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{res:?}");
    assert!(
        said.contains("request refused: permission denied: uid 65534 may not enqueue uploads"),
        "{said}"
    );
    assert_eq!(requests_in_queue(&outbox), before, "nothing was enqueued");
    assert!(
        outbox.log().contains("refused a hook connection from pid"),
        "{}",
        outbox.log()
    );
    let (_, metrics) = http_get(&metrics_address(&outbox), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "nix_outbox_hook_requests_total{outcome=\"forbidden\"} 1"),
        "{metrics}"
    );
    // Root still enqueues through the same socket.
    let out = outbox.cli(&[
        "push",
        &tk::nix_build(&tk::sh_derivation(
            "peer-ok",
            &["out"],
            &format!("echo {} > $out", tk::nonce()),
        ))
        .remove(0),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(requests_in_queue(&outbox), before + 1);
}

#[test]
fn a_readable_secret_key_is_warned_about_loudly() {
    let mut outbox = Outbox::new("zstd");
    let key = outbox.dir.path().join("k.sk");
    std::fs::set_permissions(&key, PermissionsExt::from_mode(0o644)).unwrap();
    outbox.start(None);
    let log = outbox.log();
    assert!(
        log.contains("WARNING") && log.contains(&key.display().to_string()),
        "{log}"
    );
    // And the secret itself is never written to the log.
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret = secret.trim().split_once(':').unwrap().1;
    assert!(!log.contains(secret));
}

#[test]
fn an_altered_store_path_is_never_signed_or_uploaded() {
    let mut outbox = Outbox::new("zstd");
    outbox.start(None);
    let path = tk::nix_build(&tk::sh_derivation(
        "tampered",
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    ))
    .remove(0);
    // Alter the file after Nix registered its hash, as disk corruption or
    // an intruder would.
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&path, "altered after registration\n").unwrap();
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o444)).unwrap();

    let out = outbox.cli(&["push", &path]);
    assert!(out.status.success(), "{out:?}");
    let text = status_until(&outbox, "corrupt");
    assert!(text.contains("needs fixing"), "{text}");
    assert!(
        text.contains("nix-store --verify --check-contents --repair"),
        "{text}"
    );
    // Nothing of it in the cache: no narinfo, no NAR.
    assert!(!outbox.has(&path));
    let nars: Vec<_> = std::fs::read_dir(outbox.cache.join("nar"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(nars.is_empty(), "{nars:?}");
    // The corrupt path must not outlive the test in the host's store.
    outbox.kill();
    tk::run(tk::nix_store().args(["--delete", &path]));
}

#[test]
fn symlinks_out_of_the_store_are_uploaded_as_symlinks() {
    let mut outbox = Outbox::new("none");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let expr = format!(
        r#"derivation {{
          name = "links-{}"; system = builtins.currentSystem; builder = "/bin/sh";
          args = ["-c" "export PATH=/usr/bin:/bin; mkdir $out; ln -s /etc/shadow $out/shadow; ln -s /etc/passwd $out/passwd; ln -s ../../../etc $out/up"];
        }}"#,
        tk::nonce()
    );
    let paths = build_via(&nix, &expr);
    outbox.wait();
    assert!(outbox.has(&paths[0]));
    // compression=none: the NAR file is the NAR. It holds the link targets,
    // never the contents of what they point to.
    let mut found = false;
    for e in std::fs::read_dir(outbox.cache.join("nar"))
        .unwrap()
        .flatten()
    {
        let nar = std::fs::read(e.path()).unwrap();
        let text = String::from_utf8_lossy(&nar);
        if text.contains("/etc/shadow") {
            found = true;
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
            let first = passwd.lines().next().unwrap();
            assert!(
                !text.contains(first),
                "the NAR holds /etc/passwd's contents"
            );
            assert!(text.contains("symlink") && text.contains("../../../etc"));
        }
    }
    assert!(found, "the NAR with the links was not found");
    outbox.assert_cache_valid();
}

#[test]
fn paths_outside_the_store_are_refused() {
    let mut outbox = Outbox::new("zstd");
    outbox.start(None);
    let before = requests_in_queue(&outbox);
    let dotdot = format!("/nix/store/{}-x/../../../etc/passwd", "0".repeat(32));
    for bad in ["/etc/passwd", "/nix/store/../etc/passwd", dotdot.as_str()] {
        let out = outbox.cli(&["push", bad]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted: {said}");
        assert!(
            said.contains(bad) || said.contains("store"),
            "{bad}: {said}"
        );
    }
    assert_eq!(requests_in_queue(&outbox), before);
}
