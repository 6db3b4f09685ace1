//! Hook ingestion benchmark: how long `nix-outbox-hook` keeps a build
//! waiting, measured from outside as Nix sees it (spawn of the hook process
//! to its exit), with many hooks running at once. A measurement, not a test:
//!
//! ```text
//! cargo build --release -p nix-outbox -p nix-outbox-hook --bins
//! cargo run --release -p nix-outbox --example hook_ingest -- \
//!     [--invocations 1000] [--concurrency 1000,64,1] [--scenarios up,down,noop] \
//!     [--outs 3] [--tmp DIR] [--bin-dir target/release] [--hook-timeout-ms MS]
//! ```
//!
//! (`bench/hook-ingest.sh` does both and prints a table for several levels.)
//!
//! Each (scenario, concurrency) runs in a fresh temp dir with its own
//! config (state dir, socket, a `nix-outbox keygen` key, a file:// target):
//!
//! - `up`: `nix-outbox daemon` runs; `--invocations` hooks are started,
//!   `--concurrency` at a time, each with `DRV_PATH` and `--outs` `OUT_PATHS`
//!   that are well-formed but do not exist (the hook only checks the syntax;
//!   the daemon's expander later finds them invalid and skips them, which is
//!   not measured). Afterwards every path of every acknowledged hook must be
//!   in the queue's `requests` table (read with the queue crate); hooks that
//!   timed out and spooled must be there too once the daemon has ingested
//!   the spool.
//! - `down`: the daemon was started once and stopped (SIGTERM), so the hooks
//!   find no socket and spool; there must be exactly one spool file per
//!   invocation, holding its paths. The daemon is then started again and the
//!   time it takes to ingest the whole spool is reported.
//! - `noop`: the hook with neither variable set: it loads its config and
//!   exits without connecting. The cost of the process alone, as a baseline.
//!
//! Latency is the wall time of `Command::output()` (spawn, run, exit), taken
//! in one thread per concurrent slot; all slots start together behind a
//! barrier. Throughput is invocations / (first spawn to last exit). Also
//! reported: the median time of a 4 KiB append + fdatasync in the state
//! dir's file system just before the run (what a durable commit costs at
//! least), and the CPU time per invocation of the hook processes and of the
//! daemon during the run.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use nix_outbox_core::{StoreDir, nixbase32};
use nix_outbox_hook::spool::{list_spool, read_spool_file};
use nix_outbox_queue::Queue;

#[derive(Parser)]
#[command(about = "Latency and throughput of nix-outbox-hook under concurrent invocations")]
struct Args {
    /// Hook invocations per run.
    #[arg(long, default_value_t = 1000)]
    invocations: usize,
    /// Concurrency levels (hooks running at once), one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,64,1")]
    concurrency: Vec<usize>,
    /// Scenarios to run at each concurrency level.
    #[arg(long, value_delimiter = ',', default_value = "up,down,noop")]
    scenarios: Vec<Scenario>,
    /// OUT_PATHS per invocation (DRV_PATH is always set too).
    #[arg(long, default_value_t = 3)]
    outs: usize,
    /// Where the temp dirs (state dir, queue, spool, socket) are created;
    /// default: the system temp dir. E.g. /dev/shm to take fsync away.
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Directory with the release `nix-outbox` and `nix-outbox-hook`;
    /// default: the directory above this example's (target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `hook-timeout-ms` written to the config (default: the built-in 2000).
    #[arg(long)]
    hook_timeout_ms: Option<u64>,
    /// Label for the storage column of the table.
    #[arg(long)]
    label: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Up,
    Down,
    Noop,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Up => "up",
            Scenario::Down => "down (spool)",
            Scenario::Noop => "no-op hook",
        }
    }
}

struct Bins {
    outbox: PathBuf,
    hook: PathBuf,
}

impl Bins {
    fn find(dir: Option<&Path>) -> anyhow::Result<Self> {
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
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(bins: &Bins, tmp: Option<&Path>, hook_timeout_ms: Option<u64>) -> anyhow::Result<Self> {
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

    fn socket(&self) -> PathBuf {
        self.dir.path().join("hook.sock")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spool(&self) -> PathBuf {
        nix_outbox_hook::config::spool_dir(&self.state())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

/// `nix-outbox daemon` as a child process; killed if still running on drop.
struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn start(bins: &Bins, setup: &Setup) -> anyhow::Result<Self> {
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
    fn cpu(&self) -> anyhow::Result<Duration> {
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
    fn stop(mut self) -> anyhow::Result<()> {
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
struct Invocation {
    drv: String,
    outs: Vec<String>,
}

impl Invocation {
    fn paths(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.drv).chain(&self.outs)
    }
}

/// splitmix64: distinct hash parts without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 32 nixbase32 characters, like a store path's hash part.
    fn hash_part(&mut self) -> String {
        let mut bytes = [0u8; 20];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        nixbase32::encode(&bytes)
    }
}

fn invocations(n: usize, outs: usize, rng: &mut Rng) -> Vec<Invocation> {
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

enum Outcome {
    /// Exit 0 and silence: the daemon answered `ok`.
    Acked,
    /// "… queued N paths in <spool>": not acknowledged, spooled.
    Spooled(String),
    /// "nothing to queue" (the no-op scenario).
    Nothing,
    Other(String),
}

fn classify(out: std::io::Result<std::process::Output>) -> Outcome {
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

fn hook_command(bins: &Bins, setup: &Setup, inv: Option<&Invocation>) -> Command {
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
fn run_batch(commands: Vec<Command>, concurrency: usize) -> (Vec<(Duration, Outcome)>, Duration) {
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
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Median time of a 4 KiB append + fdatasync in `dir`: what one durable
/// commit costs at least on that file system, right now.
fn fsync_probe(dir: &Path) -> anyhow::Result<Duration> {
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
fn queued_paths(setup: &Setup) -> anyhow::Result<(HashSet<String>, i64)> {
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
fn spooled_paths(setup: &Setup) -> anyhow::Result<(HashSet<String>, usize)> {
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
fn wait_spool_empty(setup: &Setup, timeout: Duration) -> anyhow::Result<Duration> {
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

fn missing<'a>(
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

struct Row {
    scenario: Scenario,
    concurrency: usize,
    latencies: Vec<Duration>,
    wall: Duration,
    acked: usize,
    spooled: usize,
    check: String,
    ok: bool,
    fsync: Duration,
    /// Per invocation.
    hook_cpu: Duration,
    daemon_cpu: Option<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn run_one(
    args: &Args,
    bins: &Bins,
    scenario: Scenario,
    concurrency: usize,
    rng: &mut Rng,
) -> anyhow::Result<Row> {
    let setup = Setup::new(bins, args.tmp.as_deref(), args.hook_timeout_ms)?;
    let n = args.invocations;
    let invs = invocations(n, args.outs, rng);
    // Warm the page cache with the hook binary and its config.
    for _ in 0..5 {
        hook_command(bins, &setup, None).output()?;
    }
    let daemon = match scenario {
        Scenario::Up => Some(Daemon::start(bins, &setup)?),
        Scenario::Down => {
            // A daemon that ran and was stopped: state dir and queue exist,
            // the socket is gone.
            Daemon::start(bins, &setup)?.stop()?;
            None
        }
        Scenario::Noop => None,
    };
    let commands = (0..n)
        .map(|i| hook_command(bins, &setup, (scenario != Scenario::Noop).then(|| &invs[i])))
        .collect();
    let fsync = fsync_probe(setup.dir.path())?;
    let daemon_cpu_before = daemon.as_ref().map(Daemon::cpu).transpose()?;
    let hooks_cpu_before = children_cpu();
    let (results, wall) = run_batch(commands, concurrency);
    let hook_cpu = children_cpu().saturating_sub(hooks_cpu_before) / n as u32;
    let daemon_cpu = match (&daemon, daemon_cpu_before) {
        (Some(d), Some(before)) => Some(d.cpu()?.saturating_sub(before) / n as u32),
        _ => None,
    };

    let mut others = Vec::new();
    let (mut acked, mut spooled) = (Vec::new(), Vec::new());
    for (i, (_, outcome)) in results.iter().enumerate() {
        match outcome {
            Outcome::Acked => acked.push(&invs[i]),
            Outcome::Spooled(_) => spooled.push(&invs[i]),
            Outcome::Nothing if scenario == Scenario::Noop => {}
            Outcome::Nothing => others.push("nothing to queue".to_owned()),
            Outcome::Other(line) => others.push(line.clone()),
        }
    }
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    if let Some((_, Outcome::Spooled(line))) = results
        .iter()
        .find(|(_, o)| matches!(o, Outcome::Spooled(_)))
    {
        eprintln!("  e.g. {line}");
    }

    let mut ok = others.is_empty();
    let mut check = String::new();
    if !others.is_empty() {
        write!(
            check,
            "{} unexpected outcomes (first: {}); ",
            others.len(),
            others[0]
        )?;
    }
    match scenario {
        Scenario::Up => {
            let daemon = daemon.expect("started above");
            let (paths, _) = queued_paths(&setup)?;
            let (total, absent) = missing(acked.iter().copied(), &paths);
            ok &= absent == 0;
            write!(
                check,
                "{}/{total} acknowledged paths in the queue",
                total - absent
            )?;
            if !spooled.is_empty() {
                // Timed out (and maybe committed anyway): in the queue once
                // the daemon has ingested the spool.
                wait_spool_empty(&setup, Duration::from_secs(120))?;
                let (paths, _) = queued_paths(&setup)?;
                let (total, absent) = missing(spooled.iter().copied(), &paths);
                ok &= absent == 0;
                write!(
                    check,
                    "; {}/{total} spooled paths in the queue after ingestion",
                    total - absent
                )?;
            }
            daemon.stop()?;
        }
        Scenario::Down => {
            let (paths, files) = spooled_paths(&setup)?;
            let (total, absent) = missing(invs.iter(), &paths);
            ok &= files == n && absent == 0;
            write!(
                check,
                "{files} spool files for {n} invocations, {}/{total} paths in them",
                total - absent
            )?;
            // The daemon comes back: how long until the spool is in the queue.
            let start = Instant::now();
            let daemon = Daemon::start(bins, &setup)?;
            wait_spool_empty(&setup, Duration::from_secs(300))?;
            let drained = start.elapsed();
            let (paths, _) = queued_paths(&setup)?;
            let (total, absent) = missing(invs.iter(), &paths);
            ok &= absent == 0;
            write!(
                check,
                "; restarted daemon ingested them in {:.2} s, {}/{total} paths in the queue",
                drained.as_secs_f64(),
                total - absent
            )?;
            daemon.stop()?;
        }
        Scenario::Noop => write!(check, "{n} exited with \"nothing to queue\"")?,
    }
    if !ok {
        eprintln!("--- daemon log (tail):");
        let log = setup.log();
        let lines: Vec<_> = log.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("{l}");
        }
    }
    Ok(Row {
        scenario,
        concurrency,
        latencies,
        wall,
        acked: acked.len(),
        spooled: spooled.len(),
        check,
        ok,
        fsync,
        hook_cpu,
        daemon_cpu,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.invocations > 0, "--invocations must be at least 1");
    ensure!(args.outs > 0, "--outs must be at least 1");
    let bins = Bins::find(args.bin_dir.as_deref())?;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let mut rng = Rng(seed);
    let storage = args.label.clone().unwrap_or_else(|| {
        args.tmp
            .as_ref()
            .map_or_else(std::env::temp_dir, Clone::clone)
            .display()
            .to_string()
    });
    let mut rows = Vec::new();
    for &c in &args.concurrency {
        for &s in &args.scenarios {
            eprintln!(
                "hook_ingest: daemon {}, {} invocations, concurrency {c} ...",
                s.name(),
                args.invocations
            );
            let row = run_one(&args, &bins, s, c, &mut rng)?;
            eprintln!(
                "  p50 {} ms, p99 {} ms, max {} ms, {:.0} hooks/s (fsync {} ms, CPU per hook {} ms{}); {}",
                ms(percentile(&row.latencies, 0.5)),
                ms(percentile(&row.latencies, 0.99)),
                ms(percentile(&row.latencies, 1.0)),
                args.invocations as f64 / row.wall.as_secs_f64(),
                ms(row.fsync),
                ms(row.hook_cpu),
                row.daemon_cpu
                    .map_or_else(String::new, |d| format!(" + daemon {}", ms(d))),
                row.check
            );
            rows.push(row);
        }
    }
    println!(
        "| daemon | state dir | fsync ms | concurrency | hooks | p50 ms | p90 ms | p99 ms | max ms | wall s | hooks/s | CPU ms/hook: hook + daemon | acked | spooled | check |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in &rows {
        let l = &r.latencies;
        println!(
            "| {} | {storage} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {}{} |",
            r.scenario.name(),
            ms(r.fsync),
            r.concurrency,
            l.len(),
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.9)),
            ms(percentile(l, 0.99)),
            ms(percentile(l, 1.0)),
            r.wall.as_secs_f64(),
            l.len() as f64 / r.wall.as_secs_f64(),
            match r.daemon_cpu {
                Some(d) => format!("{} + {}", ms(r.hook_cpu), ms(d)),
                None => ms(r.hook_cpu),
            },
            r.acked,
            r.spooled,
            if r.ok { "" } else { "**FAILED**: " },
            r.check
        );
    }
    ensure!(rows.iter().all(|r| r.ok), "a check failed (see the table)");
    Ok(())
}
