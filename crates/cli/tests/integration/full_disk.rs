//! A full disk never fails a build and never loses an acknowledged path:
//! with the state directory full, the hook exits 0 at once and says on
//! stderr what was not queued and what to run; with the cache's disk full,
//! uploads wait and go out once space returns.
//!
//! The state directory and the cache are small tmpfs mounts filled to the
//! last byte, so "full" is the kernel's real ENOSPC, not a simulation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use nix_outbox_testkit as tk;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        tk::run(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(at),
        );
        Self(at.to_owned())
    }

    /// Fills the file system with one file; returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
        // The last partial block, byte by byte.
        while f.write(&[0x5a]).is_ok_and(|n| n == 1) {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding files open must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs the hook as Nix would for `out`; returns its stderr.
fn run_hook(outbox: &Outbox, out: &str) -> String {
    let start = Instant::now();
    let res = Command::new(hook_bin())
        .env("NIX_OUTBOX_CONFIG", &outbox.config)
        .env("OUT_PATHS", out)
        .env_remove("DRV_PATH")
        .output()
        .unwrap();
    assert!(res.status.success(), "the hook must exit 0: {res:?}");
    // Not a timing assertion on speed, only that it did not wait out its
    // whole timeout budget several times over (it has 3 s in this config).
    assert!(start.elapsed() < Duration::from_secs(30));
    String::from_utf8_lossy(&res.stderr).into_owned()
}

fn built(tag: &str) -> String {
    tk::nix_build(&tk::sh_derivation(
        tag,
        &["out"],
        &format!("echo {} > $out", tk::nonce()),
    ))
    .remove(0)
}

#[test]
fn full_disks_fail_no_build_and_lose_no_acknowledged_path() {
    let mut outbox = Outbox::new("zstd");
    let state = Tmpfs::mount(&outbox.dir.path().join("state"), "8m");
    let cache = Tmpfs::mount(&outbox.cache, "8m");
    let nix = outbox.nix_daemon();
    outbox.start(Some(&nix.socket));

    // 1. The state directory is full: neither the queue nor the spool can
    // take anything.
    let filler = state.fill();
    let lost = built("full-state");
    let said = run_hook(&outbox, &lost);
    assert!(
        said.contains("NOT queued")
            && said.contains(&format!("nix-outbox push {lost}"))
            && said.contains("No space left on device"),
        "{said}"
    );
    // A build through Nix with the hook succeeds all the same, and the
    // hook's complaint reaches the user in the build output.
    let out = tk::run(
        tk::nix_build_cmd(&graph_expr(&format!("full-{}", tk::nonce()), 1, 0))
            .env("NIX_REMOTE", format!("unix://{}", nix.socket.display())),
    );
    let through_nix: Vec<String> = tk::stdout_string(&out).lines().map(str::to_owned).collect();
    assert!(!through_nix.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NOT queued; once fixed, run: nix-outbox push"),
        "{stderr}"
    );

    // 2. Space returns: the daemon, still running, accepts again.
    std::fs::remove_file(&filler).unwrap();
    let accepted = built("state-back");
    assert_eq!(run_hook(&outbox, &accepted), "", "acknowledged silently");

    // 3. The cache's disk is full: the acknowledged path waits, visibly.
    let filler = cache.fill();
    let waiting = built("full-cache");
    assert_eq!(run_hook(&outbox, &waiting), "");
    let text = status_until(&outbox, "No space left on device");
    assert!(
        text.contains("pending") || text.contains("failing"),
        "{text}"
    );

    // 3b. The state directory fills up too, the daemon crashes, and another
    // process holds the queue's write lock while it starts again: its
    // start-up writes (resetting what was in flight, making waiting jobs
    // due now) are refused, and it comes up all the same and waits. (After
    // a clean stop, SQLite has removed its -shm file, and opening the
    // queue on a full disk fails: the daemon then exits saying so, and
    // systemd restarts it; see design.md.)
    let state_filler = state.fill();
    outbox.kill();
    let locker = rusqlite::Connection::open(outbox.dir.path().join("state/queue.sqlite")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    outbox.start(Some(&nix.socket)); // Panics if the daemon exits first.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !outbox
        .log()
        .contains("cannot reset the uploads a crash or stop interrupted")
    {
        assert!(Instant::now() < deadline, "{}", outbox.log());
        assert_eq!(outbox.exited(), None, "{}", outbox.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(locker);
    assert_eq!(outbox.exited(), None, "{}", outbox.log());

    // 4. Space returns: everything goes out, including what the hook said
    // to push by hand.
    std::fs::remove_file(&state_filler).unwrap();
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(outbox.exited(), None, "{}", outbox.log());
    let mut push = vec!["push", "--wait"];
    push.push(&lost);
    push.extend(through_nix.iter().map(String::as_str));
    let out = outbox.cli(&push);
    assert!(out.status.success(), "{out:?}\n{}", outbox.log());
    outbox.wait();
    for p in [&lost, &accepted, &waiting].into_iter().chain(&through_nix) {
        assert!(outbox.has(p), "{p} is not in the cache:\n{}", outbox.log());
    }
    outbox.assert_cache_valid();
    // Dropped in reverse order: the mounts go before the outbox's temp dir.
}
