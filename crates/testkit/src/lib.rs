//! Helpers for integration tests that drive the real Nix installed on this
//! machine. Nothing here mocks Nix: when `nix-store` is missing the tests
//! fail loudly (the test command installs it), they never skip.

pub mod fault_proxy;
pub mod net;
pub mod s3;
pub mod webdav;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `cmd`, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}. Install Nix with `apt-get install nix-bin` (scripts/test.sh does this).",
            cmd.get_program()
        )
    });
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    out
}

/// A finished command's exit status and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout_string(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// A `nix` command with the experimental CLI enabled (Nix 2.8 needs it) and
/// no substituters, so nothing waits on cache.nixos.org (unreachable here).
pub fn nix() -> Command {
    let mut c = Command::new("nix");
    c.args([
        "--extra-experimental-features",
        "nix-command",
        "--option",
        "substituters",
        "",
    ]);
    c
}

/// `nix-store` with the same isolation from remote substituters.
pub fn nix_store() -> Command {
    let mut c = Command::new("nix-store");
    c.args(["--option", "substituters", ""]);
    c
}

/// Builds the derivations that the Nix expression `expr` evaluates to (an
/// attribute set or list of derivations) and returns all their output paths.
pub fn nix_build(expr: &str) -> Vec<String> {
    let out = run(nix_build_cmd(expr).env_remove("NIX_REMOTE"));
    stdout_string(&out).lines().map(str::to_owned).collect()
}

/// The `nix-build` command [`nix_build`] runs, for callers that add their
/// own store, options or environment (for the post-build-hook).
pub fn nix_build_cmd(expr: &str) -> Command {
    let mut cmd = Command::new("nix-build");
    cmd.args([
        "--no-out-link",
        "--option",
        "substituters",
        "",
        "--expr",
        expr,
    ]);
    cmd
}

/// A derivation expression with no nixpkgs: `/bin/sh -c script`, with the
/// given outputs.
pub fn sh_derivation(name: &str, outputs: &[&str], script: &str) -> String {
    let outs: Vec<String> = outputs.iter().map(|o| format!("{o:?}")).collect();
    format!(
        r#"derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
             outputs = [ {} ]; args = [ "-c" ''export PATH=/usr/bin:/bin; {script}'' ]; }}"#,
        outs.join(" ")
    )
}

/// A fresh random token, so a test's derivations are new on every run (a
/// derivation that is already valid is not rebuilt and runs no hook).
pub fn nonce() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `nix-store -qR`: the closure of `paths`.
pub fn closure(paths: &[String]) -> Vec<String> {
    let out = run(nix_store().arg("-qR").args(paths));
    stdout_string(&out).lines().map(str::to_owned).collect()
}

/// One `nix-store -q --FLAG path` answer, trimmed.
pub fn query(flag: &str, path: &str) -> String {
    let out = run(nix_store().args(["-q", flag, path]));
    stdout_string(&out).trim().to_owned()
}

/// Generates a key pair with Nix's own generator; returns (secret, public) files.
pub fn nix_generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (
        dir.join(format!("{name}.sk")),
        dir.join(format!("{name}.pk")),
    );
    run(Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg(name)
        .arg(&sk)
        .arg(&pk));
    (sk, pk)
}

/// `nix copy --to <url> paths…`.
pub fn nix_copy_to(url: &str, paths: &[impl AsRef<OsStr>]) {
    run(nix().args(["copy", "--to", url]).args(paths));
}

/// `nix store verify --store <url> --trusted-public-keys <keys> --all`;
/// returns the raw output so tests can assert either outcome.
pub fn nix_store_verify_all(store_url: &str, trusted_public_keys: &str) -> Output {
    nix()
        .args([
            "store",
            "verify",
            "--store",
            store_url,
            "--trusted-public-keys",
            trusted_public_keys,
            "--all",
        ])
        .output()
        .expect("run nix store verify")
}

/// Whether a Unix socket bound at `path` listens, from the kernel's table
/// of Unix sockets: connecting to find out would make nix-daemon fork a
/// worker, which tests that count workers would see.
pub fn listening(path: &Path) -> bool {
    /// `__SO_ACCEPTCON` in the table's Flags column: listen() was called.
    const ACCEPTING: u32 = 0x10000;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    // The path is the line's tail, printed as is (it may hold spaces).
    let tail = format!(" {}", path.display());
    table.lines().skip(1).any(|line| {
        let flags = line.split_whitespace().nth(3);
        line.ends_with(&tail)
            && flags.is_some_and(|f| u32::from_str_radix(f, 16).is_ok_and(|f| f & ACCEPTING != 0))
    })
}

/// A private `nix-daemon` on its own socket and configuration (the same
/// store), so tests touch nothing global. Killed by PID on drop.
pub struct PrivateDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: std::process::Child,
}

impl PrivateDaemon {
    pub fn start(extra_conf: &str) -> Self {
        Self::start_with_env(extra_conf, &[])
    }

    /// Like [`start`](Self::start), with extra environment for the daemon
    /// (and so for its post-build-hook, which inherits it).
    pub fn start_with_env(extra_conf: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("nix.conf"),
            format!("substituters =\nexperimental-features = nix-command\nsandbox = false\n{extra_conf}\n"),
        )
        .unwrap();
        let socket = dir.path().join("daemon.sock");
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        // Never start a daemon with NIX_REMOTE set: one pointing at its own
        // socket forks workers without end. And name its store: with the
        // default `auto`, a worker on a fresh store (no /nix/var/nix yet, as
        // in a new chroot) finds NIX_DAEMON_SOCKET_PATH, its own socket,
        // takes the store to be that daemon and connects to it, which forks
        // another worker, without end (seen on Nix 2.26: thousands of
        // workers, clients reset).
        let child = Command::new("nix-daemon")
            .args(["--option", "store", "local"])
            .env_remove("NIX_REMOTE")
            .env("NIX_CONF_DIR", &etc)
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nix-daemon (apt-get install nix-bin)");
        let d = Self { dir, socket, child };
        // Wait for it to listen (a condition, not a timing assertion). The
        // socket file appears at bind(), a moment before listen(): a
        // connection in between is refused, which once failed a test.
        for _ in 0..3000 {
            if listening(&d.socket) {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "nix-daemon did not listen on {} within 30 s: {}",
            d.socket.display(),
            d.log()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// PIDs of the worker processes the daemon forked (one per connection).
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return pids;
        };
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                pids.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
        pids
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sees_listen_not_just_bind() {
        let dir = tempfile::tempdir().unwrap();
        // A space in the path: the kernel's table prints it as is.
        let (stream, datagram) = (
            dir.path().join("a stream.sock"),
            dir.path().join("dgram.sock"),
        );
        assert!(!listening(&stream));
        let _l = std::os::unix::net::UnixListener::bind(&stream).unwrap();
        assert!(listening(&stream));
        // Bound, but a datagram socket never listens.
        let _d = std::os::unix::net::UnixDatagram::bind(&datagram).unwrap();
        assert!(datagram.exists() && !listening(&datagram));
    }
}
