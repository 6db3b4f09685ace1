//! Running the real thing end to end: a private nix-daemon (Nix 2.8 on the
//! host) whose post-build-hook is our built `nix-outbox-hook`, and the
//! `nix-outbox` daemon as a separate process, like in production.

pub mod systemd_harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix_outbox_testkit as tk;

pub fn outbox_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nix-outbox"))
}

/// The hook binary lives in another package of the workspace; build it on
/// demand (a no-op when `cargo test --workspace` already did).
pub fn hook_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let path = outbox_bin().with_file_name("nix-outbox-hook");
    BUILT.call_once(|| {
        // Not run by cargo (scripts/test-modern-nix.sh runs the test binary
        // inside a chroot without a toolchain): use the binary built before.
        if let Ok(cargo) = std::env::var("CARGO") {
            tk::run(Command::new(cargo).args([
                "build",
                "-p",
                "nix-outbox-hook",
                "--bin",
                "nix-outbox-hook",
            ]));
        }
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A configured outbox in a temp dir: config file, key pair, file:// cache.
pub struct Outbox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cache: PathBuf,
    pub public_key: String,
    daemon: Option<Child>,
    /// Added to the daemon's environment after removing the AWS credential
    /// variables (see `with_targets`); `None`: the environment is inherited.
    daemon_env: Option<Vec<(String, String)>>,
}

/// The variables the AWS tools (and our S3 target) take credentials from.
const AWS_CREDENTIAL_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

impl Outbox {
    pub fn new(compression: &str) -> Self {
        let mut outbox = Self::with_targets(
            |cache| {
                vec![format!(
                    "file://{}?compression={compression}",
                    cache.display()
                )]
            },
            &[],
        );
        // The daemon inherits the test's environment unchanged, as before.
        outbox.daemon_env = None;
        outbox
    }

    /// An outbox uploading to the targets `targets(cache)` returns (given
    /// the outbox's own file:// cache directory, to use or not), whose
    /// daemon runs with `daemon_env` added. The daemon's environment is
    /// cleared of AWS credential variables first, so only what a test
    /// passes (never the test process's or the host's) reaches it.
    pub fn with_targets(
        targets: impl FnOnce(&Path) -> Vec<String>,
        daemon_env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (sk, pk) = (d.join("k.sk"), d.join("k.pk"));
        tk::run(
            Command::new(outbox_bin())
                .args(["keygen", "e2e-test-1", "--secret-key-file"])
                .arg(&sk)
                .arg("--public-key-file")
                .arg(&pk),
        );
        let cache = d.join("cache");
        // As a user makes their cache directory: the daemon never creates
        // a configured one (it may be an unmounted mount point).
        std::fs::create_dir(&cache).unwrap();
        let targets: Vec<String> = targets(&cache).iter().map(|t| format!("{t:?}")).collect();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {:?}\nsocket = {:?}\nsecret-key-files = [{:?}]\ntargets = [{}]\nhook-timeout-ms = 3000\n",
                d.join("state"),
                d.join("hook.sock"),
                sk,
                targets.join(", ")
            ),
        )
        .unwrap();
        let public_key = std::fs::read_to_string(&pk).unwrap();
        let daemon_env = Some(
            daemon_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        Self {
            dir,
            config,
            cache,
            public_key,
            daemon: None,
            daemon_env,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("hook.sock")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("state/spool")
    }

    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.spool())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".req"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A private nix-daemon whose builds run our hook with this config.
    pub fn nix_daemon(&self) -> tk::PrivateDaemon {
        tk::PrivateDaemon::start_with_env(
            &format!("post-build-hook = {}", hook_bin().display()),
            &[("NIX_OUTBOX_CONFIG", self.config.to_str().unwrap())],
        )
    }

    /// Starts `nix-outbox daemon`, reaching the store through `nix_remote`
    /// (None: unset, i.e. `nix-daemon --stdio` as root), and waits for its socket.
    pub fn start(&mut self, nix_remote: Option<&Path>) {
        let _ = std::fs::remove_file(self.dir.path().join("outbox.log.prev"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("outbox.log"))
            .unwrap();
        let mut cmd = Command::new(outbox_bin());
        cmd.args(["daemon", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,nix_daemon=warn");
        if let Some(env) = &self.daemon_env {
            for v in AWS_CREDENTIAL_VARS {
                cmd.env_remove(v);
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
        }
        match nix_remote {
            Some(s) => cmd.env("NIX_REMOTE", format!("unix://{}", s.display())),
            None => cmd.env_remove("NIX_REMOTE"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        for _ in 0..3000 {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("nix-outbox daemon exited ({status}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "nix-outbox daemon did not listen within 30 s: {}",
            self.log()
        );
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("the daemon runs").id()
    }

    /// Stops the daemon as a service manager does (SIGTERM) and waits for
    /// it to exit (bounded).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.exited() {
                self.daemon = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How the daemon ended, if it has (None while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("outbox.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(outbox_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// `nix-outbox wait`, asserting success with the daemon's log on failure.
    pub fn wait(&self) {
        let out = self.cli(&["wait", "--timeout", "120"]);
        assert!(
            out.status.success(),
            "wait failed: {}\n--- daemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    pub fn cache_url(&self) -> String {
        format!("file://{}", self.cache.display())
    }

    /// The cache passes `nix store verify --all` with our key, and every
    /// narinfo's NAR file exists.
    pub fn assert_cache_valid(&self) {
        self.assert_cache_valid_at(&self.cache);
    }

    /// [`assert_cache_valid`](Self::assert_cache_valid) for the cache in
    /// directory `dir` (another file:// target, or an S3 bucket's directory).
    pub fn assert_cache_valid_at(&self, dir: &Path) {
        let out = tk::nix_store_verify_all(&format!("file://{}", dir.display()), &self.public_key);
        assert!(
            out.status.success(),
            "nix store verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(_hash) = name.strip_suffix(".narinfo") {
                let text = std::fs::read_to_string(e.path()).unwrap();
                let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
                assert!(dir.join(url).exists(), "{name} points to missing {url}");
            }
        }
    }

    pub fn has(&self, path: &str) -> bool {
        has_narinfo(&self.cache, path)
    }

    /// `status --json`, parsed, asserting success.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Whether the cache in directory `dir` has a narinfo for store path `path`.
pub fn has_narinfo(dir: &Path, path: &str) -> bool {
    let hash = &Path::new(path).file_name().unwrap().to_str().unwrap()[..32];
    dir.join(format!("{hash}.narinfo")).exists()
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An expression building `n` groups of derivations with references and
/// several outputs: leaf → mid (out, dev, both referring to leaf) → top
/// (refers to mid.out and mid.dev), plus `big_mib` MiB of data in each top.
/// Returns the expression, which evaluates to a list of all outputs.
pub fn graph_expr(tag: &str, groups: usize, big_mib: usize) -> String {
    let nonce = tk::nonce();
    let mut items = Vec::new();
    for g in 0..groups {
        let leaf = tk::sh_derivation(
            &format!("{tag}-leaf{g}"),
            &["out"],
            &format!("echo {nonce} {g} > $out"),
        );
        let mid = tk::sh_derivation(
            &format!("{tag}-mid{g}"),
            &["out", "dev"],
            "mkdir -p $out/bin; echo LEAF > $out/bin/tool; chmod +x $out/bin/tool; echo $out LEAF > $dev",
        )
        .replace("LEAF", &format!("${{{leaf}}}"));
        let top = tk::sh_derivation(
            &format!("{tag}-top{g}"),
            &["out"],
            &format!(
                "mkdir -p $out; echo MIDOUT MIDDEV > $out/refs; ln -s MIDOUT/bin/tool $out/tool; head -c {} /dev/urandom > $out/blob",
                big_mib * 1024 * 1024 + g
            ),
        )
        .replace("MIDOUT", "${mid.out}")
        .replace("MIDDEV", "${mid.dev}");
        items.push(format!("(let mid = {mid}; in [ mid.out mid.dev ({top}) ])"));
    }
    format!("builtins.concatLists [ {} ]", items.join(" "))
}

/// Builds through the private daemon; the hook runs after each build.
/// A signing key made by Nix (`<dir>/<key_name>.sk`/`.pk`) and a config
/// naming it, with its state in `<dir>/state` and no target (commands
/// that take `--to` need none). Returns the config's path and the public
/// key file's.
pub fn key_and_config(dir: &Path, key_name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = tk::nix_generate_key(dir, key_name);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state-dir = {:?}\nsecret-key-files = [{:?}]\n",
            dir.join("state"),
            sk
        ),
    )
    .unwrap();
    (config, pk)
}

pub fn build_via(daemon: &tk::PrivateDaemon, expr: &str) -> Vec<String> {
    let out = tk::nix_build_cmd(expr)
        .env("NIX_REMOTE", format!("unix://{}", daemon.socket.display()))
        .output()
        .expect("nix-build runs (scripts/test.sh installs Nix)");
    // The private daemon's own log says why a connection was reset or a
    // build failed on its side.
    assert!(
        out.status.success(),
        "nix-build through the private nix-daemon failed: {}\n--- its daemon's log:\n{}",
        tk::describe(&out),
        daemon.log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("post-build-hook") || !stderr.contains("failed"),
        "{stderr}"
    );
    tk::stdout_string(&out).lines().map(str::to_owned).collect()
}

/// Deletes `paths` (and as much of their closure as nothing else holds)
/// locally, then substitutes them back from `substituter` with a stock
/// `nix-store -r`, checking each comes back with the same NAR hash.
pub fn delete_and_substitute(substituter: &str, public_key: &str, paths: &[String]) {
    let hashes: Vec<String> = paths.iter().map(|p| tk::query("--hash", p)).collect();
    // Referrers first: nix-store --delete refuses paths still referenced.
    let closure = tk::closure(paths);
    let out = Command::new("nix-store")
        .arg("--delete")
        .args(closure.iter().rev())
        .output()
        .unwrap();
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("still alive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tk::run(Command::new("nix-store").arg("--delete").args(paths));
    for p in paths {
        assert!(!Path::new(p).exists(), "{p} still exists after delete");
    }
    tk::run(Command::new("nix-store").arg("-r").args(paths).args([
        "--option",
        "substituters",
        substituter,
        "--option",
        "trusted-public-keys",
        public_key,
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
    ]));
    for (p, h) in paths.iter().zip(&hashes) {
        assert_eq!(&tk::query("--hash", p), h, "{p} came back different");
    }
}

/// Polls `status` until it mentions `needle`; panics with the log after a
/// generous deadline.
pub fn status_until(outbox: &Outbox, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = outbox.cli(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {needle:?}:\n{text}\n{}",
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The daemon binds port 0; its progress file says which port it got.
pub fn metrics_address(outbox: &Outbox) -> String {
    let file = outbox.dir.path().join("state/progress.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let Some(a) = v["metrics_address"].as_str() {
                return a.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address in {}: {}",
            file.display(),
            outbox.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_fmt(
        &mut s,
        format_args!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}
