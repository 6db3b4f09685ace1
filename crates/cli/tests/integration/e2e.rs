//! The outbox end to end with a stock Nix 2.8: hook → durable queue →
//! daemon → signed file:// cache, then substitution and `nix store verify`.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use crate::support::{Outbox, build_via, graph_expr, status_until};
use nix_outbox_testkit as tk;

/// Deletes `paths` locally, then substitutes them back from the cache.
fn delete_and_substitute(outbox: &Outbox, paths: &[String]) {
    let hashes: Vec<String> = paths.iter().map(|p| tk::query("--hash", p)).collect();
    // Referrers first: nix-store --delete refuses paths that are still referenced.
    let closure = tk::closure(paths);
    let status = Command::new("nix-store")
        .arg("--delete")
        .args(closure.iter().rev())
        .output()
        .unwrap();
    assert!(
        status.status.success() || String::from_utf8_lossy(&status.stderr).contains("still alive")
    );
    tk::run(Command::new("nix-store").arg("--delete").args(paths));
    for p in paths {
        assert!(
            !std::path::Path::new(p).exists(),
            "{p} still exists after delete"
        );
    }
    tk::run(Command::new("nix-store").arg("-r").args(paths).args([
        "--option",
        "substituters",
        &outbox.cache_url(),
        "--option",
        "trusted-public-keys",
        &outbox.public_key,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ]));
    for (p, h) in paths.iter().zip(&hashes) {
        assert_eq!(
            &tk::query("--hash", p),
            h,
            "{p} came back with the same contents"
        );
    }
}

#[test]
fn builds_reach_the_cache_signed_and_substitutable() {
    let mut outbox = Outbox::new("zstd");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    // The socket is root-only by default.
    let mode = std::fs::metadata(outbox.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // 7 groups × 3 derivations = 21 derivations, 28 outputs, with references
    // and multi-output derivations; Nix 2.8.0 gives the hook no OUT_PATHS.
    let outs = build_via(&nix, &graph_expr("e2e", 7, 0));
    assert_eq!(outs.len(), 21);
    outbox.wait();
    assert_eq!(
        outbox.spooled(),
        0,
        "the daemon was up: nothing should be spooled"
    );
    for p in tk::closure(&outs) {
        assert!(
            outbox.has(&p),
            "{p} missing from the cache\n{}",
            outbox.log()
        );
    }
    outbox.assert_cache_valid();

    let status = outbox.cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let t = &json["targets"][0];
    assert_eq!(t["pending"], 0);
    assert_eq!(t["failing"], 0);
    assert!(t["done"].as_u64().unwrap() >= 21, "{json}");

    delete_and_substitute(&outbox, &outs);
}

#[test]
fn daemon_down_builds_succeed_and_spool_drains_after_start() {
    let mut outbox = Outbox::new("xz");
    let nix = outbox.nix_daemon();
    // No outbox daemon: every hook spools, and every build still succeeds.
    let outs = build_via(&nix, &graph_expr("spool", 2, 0));
    assert_eq!(outs.len(), 6);
    assert!(
        outbox.spooled() >= 6,
        "one spool file per build, got {}",
        outbox.spooled()
    );
    assert!(!outbox.cache.exists() || std::fs::read_dir(&outbox.cache).unwrap().count() == 0);
    outbox.start(Some(&nix.socket));
    outbox.wait();
    assert_eq!(outbox.spooled(), 0);
    for p in tk::closure(&outs) {
        assert!(outbox.has(&p), "{p} missing\n{}", outbox.log());
    }
    outbox.assert_cache_valid();
}

#[test]
fn sigkill_mid_upload_loses_nothing() {
    let mut outbox = Outbox::new("zstd");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    // Large outputs, so each NAR takes a while to write.
    let outs = build_via(&nix, &graph_expr("kill", 3, 48));
    let nar_dir = outbox.cache.join("nar");
    let mut killed_mid_nar = 0;
    let mut killed = Vec::new();
    for _round in 0..3 {
        // Kill while a NAR is being written (a `.tmp-` file exists in nar/),
        // or give up waiting for one after a while (everything uploaded).
        for _ in 0..20_000 {
            let writing = std::fs::read_dir(&nar_dir)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                })
                .unwrap_or(false);
            if writing {
                killed_mid_nar += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        killed.push(outbox.pid());
        outbox.kill();
        outbox.start(Some(&nix.socket));
    }
    assert!(
        killed_mid_nar >= 1,
        "never caught an upload in progress; the test did not test a crash mid-upload"
    );
    outbox.wait();
    for p in tk::closure(&outs) {
        assert!(outbox.has(&p), "{p} missing\n{}", outbox.log());
    }
    // No narinfo points to a missing or wrong NAR. The `.tmp-<pid>-<n>`
    // files of the NARs the kills interrupted do remain, only in nar/, and
    // only the killed daemons': at most one per NAR they were writing at
    // once (the file:// default `max-connections`, 16). A later start
    // sweeps those untouched for an hour; the daemon that finished the
    // work leaves none.
    outbox.assert_cache_valid();
    let leftovers: Vec<String> = std::fs::read_dir(&nar_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    for name in &leftovers {
        let pid: u32 = name
            .strip_prefix(".tmp-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not named .tmp-<pid>-<n>"));
        assert!(
            killed.contains(&pid),
            "{name} is not a killed daemon's ({killed:?})"
        );
    }
    for pid in &killed {
        let n = leftovers
            .iter()
            .filter(|l| l.starts_with(&format!(".tmp-{pid}-")))
            .count();
        assert!(n <= 16, "{n} leftovers of daemon {pid}: {leftovers:?}");
    }
    delete_and_substitute(&outbox, &outs);
}

#[test]
fn single_user_mode_without_a_nix_daemon() {
    let mut outbox = Outbox::new("zstd");
    // The outbox reaches the store with `nix-daemon --stdio` (root, no daemon).
    outbox.start(None);
    let expr = graph_expr("single", 2, 0);
    let out = tk::run(
        tk::nix_build_cmd(&expr)
            .arg("--option")
            .arg("post-build-hook")
            .arg(crate::support::hook_bin())
            .env_remove("NIX_REMOTE")
            .env("NIX_OUTBOX_CONFIG", &outbox.config),
    );
    let outs: Vec<String> = tk::stdout_string(&out).lines().map(str::to_owned).collect();
    outbox.wait();
    for p in tk::closure(&outs) {
        assert!(outbox.has(&p), "{p} missing\n{}", outbox.log());
    }
    outbox.assert_cache_valid();
}

fn exchange(socket: &std::path::Path, bytes: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    // An oversized frame is answered before it is all sent: the write may fail.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn malformed_socket_frames_are_refused_and_the_daemon_keeps_serving() {
    let mut outbox = Outbox::new("none");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let sock = outbox.socket();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\n".to_vec(), "line 1"),
        (
            b"nix-outbox-hook 1\nout /etc/passwd\nend\n".to_vec(),
            "line 2",
        ),
        (
            b"nix-outbox-hook 1\nout /nix/store/../etc\nend\n".to_vec(),
            "line 2",
        ),
        (b"nix-outbox-hook 1\nend\n".to_vec(), ""),
        (
            b"nix-outbox-hook 1\nout /nix/store/00000000000000000000000000000000-x".to_vec(),
            "",
        ),
        (vec![b'a'; 200_000], "exceeds"),
        (b"nix-outbox-hook 1\n\xff\xfe\nend\n".to_vec(), "line 2"),
    ];
    for (frame, needle) in cases {
        let reply = exchange(&sock, &frame);
        assert!(
            reply.starts_with("error "),
            "{reply:?} for {:?}",
            String::from_utf8_lossy(&frame[..frame.len().min(60)])
        );
        assert!(
            reply.contains(needle),
            "{reply:?} should mention {needle:?}"
        );
    }
    // Still serving: a valid request is acknowledged and the path uploaded.
    let p = tk::nix_build(&tk::sh_derivation(
        "frames-ok",
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    ))
    .remove(0);
    let reply = exchange(
        &sock,
        format!("nix-outbox-hook 1\nout {p}\nend\n").as_bytes(),
    );
    assert!(reply.starts_with("ok "), "{reply}");
    outbox.wait();
    assert!(outbox.has(&p));
}

#[test]
fn push_by_hand_with_and_without_the_daemon() {
    let mut outbox = Outbox::new("zstd");
    let nonce = tk::nonce();
    let a = tk::nix_build(&tk::sh_derivation(
        "push-a",
        &["out"],
        &format!("echo {nonce} a > $out"),
    ))
    .remove(0);
    let b = tk::nix_build(&tk::sh_derivation(
        "push-b",
        &["out"],
        &format!("echo {nonce} b > $out"),
    ))
    .remove(0);

    // Bad input: nothing queued, every offender named.
    let bad = outbox.cli(&["push", "/etc/passwd", &a, "/nix/store/../etc"]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("/etc/passwd")
            && msg.contains("/nix/store/../etc")
            && msg.contains("nothing was queued"),
        "{msg}"
    );

    // Daemon down: committed straight to the queue, uploaded once it starts.
    let out = outbox.cli(&["push", &a]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("queued directly"));
    outbox.start(None);
    outbox.wait();
    assert!(outbox.has(&a));

    // Daemon up, with --wait.
    let out = outbox.cli(&["push", "--wait", "--timeout", "120", &b]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        outbox.log()
    );
    assert!(outbox.has(&b));
    let status = outbox.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("done 2") && text.contains("pending 0"),
        "{text}"
    );
    outbox.assert_cache_valid();
}

#[test]
fn check_config_explains_and_rejects() {
    let outbox = Outbox::new("zstd");
    let ok = outbox.cli(&["check-config"]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("configuration OK")
            && text.contains("e2e-test-1:")
            && text.contains("mode 0600"),
        "{text}"
    );

    let bad = outbox.dir.path().join("bad.toml");
    std::fs::write(&bad, "state-dir = \"/tmp/x\"\ntargts = []\n").unwrap();
    let out = Command::new(crate::support::outbox_bin())
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("targts") && msg.contains("Known keys"),
        "{msg}"
    );

    // A world-readable secret key is warned about loudly.
    let sk = outbox.dir.path().join("k.sk");
    std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = outbox.cli(&["check-config"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARNING") && text.contains("chmod 600"),
        "{text}"
    );
}

/// Issue 14: a derivation with more outputs than one hook request holds
/// (1,024 paths, 64 KiB). Nix 2.26 and newer fill OUT_PATHS; the hook used
/// to drop the outputs past the limit. Runs on every Nix of the matrix.
#[test]
fn a_derivation_with_1100_outputs_reaches_the_cache_whole() {
    let mut outbox = Outbox::new("zstd");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));
    let names: Vec<String> = std::iter::once("out".to_owned())
        .chain((1..1100).map(|i| format!("o{i}")))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let expr = tk::sh_derivation(
        &format!("many-{}", tk::nonce()),
        &names,
        r#"for o in $outputs; do eval "echo $o > \$$o"; done"#,
    );
    // Every output, not just `out`, so nix-build lists them all.
    let expr = format!("(d: map (o: builtins.getAttr o d) d.outputs) ({expr})");
    let outs = build_via(&nix, &expr);
    assert_eq!(outs.len(), 1100);
    outbox.wait();
    let missing: Vec<&String> = outs.iter().filter(|p| !outbox.has(p)).collect();
    assert!(
        missing.is_empty(),
        "{} of 1100 outputs missing from the cache, e.g. {:?}\n{}",
        missing.len(),
        missing.first(),
        outbox.log()
    );
}

/// Issue 14: a configured file:// cache that is missing (an unmounted mount
/// point, say) is never created by the daemon; its uploads wait, retried,
/// and land once the directory is there.
#[test]
fn a_missing_configured_cache_is_never_created_and_filled_once_it_exists() {
    let mut outbox = Outbox::new("zstd");
    std::fs::remove_dir(&outbox.cache).unwrap();
    outbox.start(None);
    assert!(
        outbox.log().contains("does not exist: uploads to it wait"),
        "{}",
        outbox.log()
    );
    let path = tk::nix_build(&tk::sh_derivation(
        "unmounted",
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    ))
    .remove(0);
    let out = outbox.cli(&["push", &path]);
    assert!(out.status.success(), "{out:?}");
    let text = status_until(&outbox, "Create the cache directory");
    assert!(!outbox.cache.exists(), "the daemon created it:\n{text}");
    std::fs::create_dir(&outbox.cache).unwrap();
    let out = outbox.cli(&["retry"]);
    assert!(out.status.success(), "{out:?}");
    outbox.wait();
    assert!(outbox.has(&path), "{}", outbox.log());
}
