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

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use clap::{Parser, ValueEnum};

mod harness;
use harness::*;

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
