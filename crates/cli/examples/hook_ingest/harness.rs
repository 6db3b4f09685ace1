//! The harness of the hook ingestion benchmark: the outbox it runs against,
//! the hooks it starts, and what it reads back from the queue and spool.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use super::percentile;
use anyhow::{Context as _, bail, ensure};
use nix_outbox_core::{StoreDir, nixbase32};
use nix_outbox_hook::spool::{list_spool, read_spool_file};
use nix_outbox_queue::Queue;

pub struct Bins {
    pub outbox: PathBuf,
    pub hook: PathBuf,
}

impl Bins {
    pub fn find(dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            // target/release/examples/hook_ingest -> target/release
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .context("cannot locate target dir")?
                .to_owned(),
        };
        let bins = Self {
            outbox: dir.join("nix-outbox"),
            hook: dir.join("nix-outbox-hook"),
        };
        for b in [&bins.outbox, &bins.hook] {
            ensure!(
                b.is_file(),
                "{} is missing: run `cargo build --release -p nix-outbox -p nix-outbox-hook --bins` \
                 or pass --bin-dir",
                b.display()
            );
        }
        Ok(bins)
    }
}

/// A configured outbox in a temp dir, like the integration tests' `Outbox`.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(
        bins: &Bins,
        tmp: Option<&Path>,
        hook_timeout_ms: Option<u64>,
    ) -> anyhow::Result<Self> {
        let mut b = tempfile::Builder::new();
        b.prefix("hook-ingest-");
        let dir = match tmp {
            Some(t) => b.tempdir_in(t)?,
            None => b.tempdir()?,
        };
        let d = dir.path();
        let (sk, pk) = (d.join("bench.sk"), d.join("bench.pk"));
        let out = Command::new(&bins.outbox)
            .args(["keygen", "hook-ingest-1", "--secret-key-file"])
            .arg(&sk)
            .arg("--public-key-file")
            .arg(&pk)
            .output()?;
        ensure!(
            out.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The daemon never creates a configured cache directory.
        std::fs::create_dir(d.join("cache"))?;
        let mut text = format!(
            "state-dir = {:?}\nsocket = {:?}\nsecret-key-files = [{:?}]\ntargets = [{:?}]\n",
            d.join("state"),
            d.join("hook.sock"),
            sk,
            format!("file://{}?compression=zstd", d.join("cache").display()),
        );
        if let Some(ms) = hook_timeout_ms {
            writeln!(text, "hook-timeout-ms = {ms}")?;
        }
        let config = d.join("config.toml");
        std::fs::write(&config, text)?;
        Ok(Self { dir, config })
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("hook.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn spool(&self) -> PathBuf {
        nix_outbox_config::spool_dir(&self.state())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

/// `nix-outbox daemon` as a child process; killed if still running on drop.
pub struct Daemon {
    pub child: Option<Child>,
}

impl Daemon {
    pub fn start(bins: &Bins, setup: &Setup) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(setup.dir.path().join("daemon.log"))?;
        let child = Command::new(&bins.outbox)
            .args(["daemon", "--config"])
            .arg(&setup.config)
            .env("RUST_LOG", "info,nix_daemon=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut d = Self { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(setup.socket()).is_ok() {
                return Ok(d);
            }
            if let Some(status) = d.child.as_mut().unwrap().try_wait()? {
                d.child = None;
                bail!("nix-outbox daemon exited ({status}): {}", setup.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "nix-outbox daemon did not listen within 30 s: {}",
            setup.log()
        )
    }

    /// User + system CPU time the daemon process has used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        let pid = self.child.as_ref().context("daemon not running")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name, which may hold spaces:
        // state is field 3, utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })?;
        Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    /// SIGTERM, as a service manager stops it; SIGKILL after 10 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: plain kill(2) of our own child, which has not been reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the daemon did not stop within 10 s of SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one hook is given: a derivation and its outputs, well-formed store
/// paths that do not exist.
pub struct Invocation {
    pub drv: String,
    pub outs: Vec<String>,
}

impl Invocation {
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.drv).chain(&self.outs)
    }
}

/// splitmix64: distinct hash parts without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 32 nixbase32 characters, like a store path's hash part.
    pub fn hash_part(&mut self) -> String {
        let mut bytes = [0u8; 20];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        nixbase32::encode(&bytes)
    }
}

pub fn invocations(n: usize, outs: usize, rng: &mut Rng) -> Vec<Invocation> {
    const OUTPUTS: [&str; 6] = ["out", "dev", "doc", "man", "lib", "bin"];
    let nonce = format!("{:08x}", rng.next() as u32);
    (0..n)
        .map(|i| {
            let name = format!("bench-{nonce}-{i}");
            Invocation {
                drv: format!("/nix/store/{}-{name}.drv", rng.hash_part()),
                outs: (0..outs)
                    .map(|k| {
                        let o = OUTPUTS
                            .get(k)
                            .map_or_else(|| format!("o{k}"), |s| s.to_string());
                        let suffix = if k == 0 {
                            String::new()
                        } else {
                            format!("-{o}")
                        };
                        format!("/nix/store/{}-{name}{suffix}", rng.hash_part())
                    })
                    .collect(),
            }
        })
        .collect()
}

pub enum Outcome {
    /// Exit 0 and silence: the daemon answered `ok`.
    Acked,
    /// "… queued N paths in <spool>": not acknowledged, spooled.
    Spooled(String),
    /// "nothing to queue" (the no-op scenario).
    Nothing,
    Other(String),
}

pub fn classify(out: std::io::Result<std::process::Output>) -> Outcome {
    let out = match out {
        Ok(o) => o,
        Err(e) => return Outcome::Other(format!("spawn failed: {e}")),
    };
    let line = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Outcome::Other(format!("{}: {line}", out.status));
    }
    if line.is_empty() {
        Outcome::Acked
    } else if line.contains("; queued ") && line.contains(" in ") && !line.contains("NOT queued") {
        Outcome::Spooled(line)
    } else if line.starts_with("nix-outbox-hook: nothing to queue") {
        Outcome::Nothing
    } else {
        Outcome::Other(line)
    }
}

pub fn hook_command(bins: &Bins, setup: &Setup, inv: Option<&Invocation>) -> Command {
    let mut cmd = Command::new(&bins.hook);
    // Only what the hook reads, like a nix-daemon's clean hook environment.
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("NIX_OUTBOX_CONFIG", &setup.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(inv) = inv {
        cmd.env("DRV_PATH", &inv.drv)
            .env("OUT_PATHS", inv.outs.join(" "));
    }
    cmd
}

/// Runs every command, `concurrency` at a time; returns each one's latency
/// and outcome (in command order) and the wall time of the whole batch.
pub fn run_batch(
    commands: Vec<Command>,
    concurrency: usize,
) -> (Vec<(Duration, Outcome)>, Duration) {
    let n = commands.len();
    let slots = concurrency.clamp(1, n.max(1));
    let commands: Vec<Mutex<Option<Command>>> =
        commands.into_iter().map(|c| Mutex::new(Some(c))).collect();
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(slots + 1);
    let mut results: Vec<Option<(Duration, Outcome)>> = (0..n).map(|_| None).collect();
    let wall = std::thread::scope(|s| {
        let handles: Vec<_> = (0..slots)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, || {
                        let mut mine = Vec::new();
                        barrier.wait();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let mut cmd = commands[i].lock().unwrap().take().unwrap();
                            let start = Instant::now();
                            let out = cmd.output();
                            let took = start.elapsed();
                            mine.push((i, took, classify(out)));
                        }
                        mine
                    })
                    .expect("cannot start a thread")
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("a runner thread panicked"));
        }
        let wall = start.elapsed();
        for (i, took, outcome) in all {
            results[i] = Some((took, outcome));
        }
        wall
    });
    (results.into_iter().map(Option::unwrap).collect(), wall)
}

/// User + system CPU time of our reaped children so far (the hooks, once
/// `output()` has waited for them).
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Median time of a 4 KiB append + fdatasync in `dir`: what one durable
/// commit costs at least on that file system, right now.
pub fn fsync_probe(dir: &Path) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut times = Vec::new();
    for _ in 0..50 {
        f.write_all(&[0u8; 4096])?;
        let start = Instant::now();
        f.sync_data()?;
        times.push(start.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(percentile(&times, 0.5))
}

/// Every path named by a request in the queue.
pub fn queued_paths(setup: &Setup) -> anyhow::Result<(HashSet<String>, i64)> {
    let q = Queue::open(&setup.state().join("queue.sqlite"))?;
    let max = q.max_request_id()?;
    let mut paths = HashSet::new();
    for id in 1..=max {
        if let Some(r) = q.request(id)? {
            paths.extend(r.out_paths);
            paths.extend(r.drv_path);
        }
    }
    Ok((paths, max))
}

/// Every path named by a file in the spool, and the number of files.
pub fn spooled_paths(setup: &Setup) -> anyhow::Result<(HashSet<String>, usize)> {
    let sd = StoreDir::default();
    let files = list_spool(&setup.spool())?;
    let mut paths = HashSet::new();
    for f in &files {
        let req = read_spool_file(f, &sd)?;
        paths.extend(req.out_paths.iter().map(|p| sd.display(p)));
        paths.extend(req.drv_path.iter().map(|p| sd.display(p)));
    }
    Ok((paths, files.len()))
}

/// Waits until the daemon has ingested every spool file.
pub fn wait_spool_empty(setup: &Setup, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if list_spool(&setup.spool())?.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "the spool still holds {} files after {timeout:?}",
                list_spool(&setup.spool())?.len()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn missing<'a>(
    invs: impl Iterator<Item = &'a Invocation>,
    have: &HashSet<String>,
) -> (usize, usize) {
    let (mut total, mut absent) = (0, 0);
    for p in invs.flat_map(Invocation::paths) {
        total += 1;
        if !have.contains(p) {
            absent += 1;
        }
    }
    (total, absent)
}
