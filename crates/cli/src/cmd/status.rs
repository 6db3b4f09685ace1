//! `nix-outbox status [--config FILE] [--json]`: per target, what is
//! pending, uploading now (with bytes and throughput), failing (with the
//! last error and the next retry), skipped and recently done.
//!
//! Counts come from the queue, so they are right with the daemon down.
//! What is uploading *now*, and how far, only the daemon knows: it writes
//! it to `<state-dir>/progress.json` every second, which is shown when the
//! daemon is up (see `service::metrics::progress`).

mod render;

use std::path::PathBuf;

use anyhow::Context as _;
use nix_outbox_daemon::Config;
use nix_outbox_daemon::metrics::progress::{self, HEARTBEAT, ProgressFile};
use nix_outbox_queue::{Queue, SkipCount, Status};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Machine-readable output (field names are stable; see README).
    #[arg(long)]
    json: bool,
}

/// Everything `status` shows, read once.
pub(crate) struct Snapshot {
    pub now: i64,
    pub status: Status,
    /// Done jobs per target in the last hour.
    pub done_last_hour: Vec<(String, u64)>,
    /// Per target, closure paths left out on purpose, by (reason, detail).
    pub skip_counts: Vec<(String, SkipCount)>,
    pub spooled: usize,
    /// Spool files set aside because they hold no request.
    pub rejected: Vec<PathBuf>,
    pub spool_dir: PathBuf,
    /// The configured targets' ids, in configuration order.
    pub configured: Vec<String>,
    pub daemon: Daemon,
    /// The nix-db source, when it ever ran.
    pub nix_db: Option<NixDbView>,
    /// Requests received in the last hour, by where they came from.
    pub sources_last_hour: Vec<(nix_outbox_queue::Source, u64)>,
}

/// Where the nix-db source stands against Nix's database.
pub(crate) struct NixDbView {
    pub cursor: nix_outbox_queue::NixDbCursor,
    /// Nix's last row, when its database can be read here (root, local).
    pub nix_last: Option<i64>,
}

/// What is known about the daemon.
pub(crate) struct Daemon {
    pub running: bool,
    /// How that was found out, for the reader.
    pub how: String,
    /// Its progress file, when it is running and the file is fresh.
    pub progress: Option<ProgressFile>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let snap = snapshot(&cfg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&render::to_json(&snap))?);
    } else {
        print!("{}", render::render(&snap));
    }
    Ok(())
}

pub(crate) fn snapshot(cfg: &Config) -> anyhow::Result<Snapshot> {
    let path = cfg.queue_path();
    if !path.exists() {
        anyhow::bail!(
            "no queue at {} yet: start the daemon (nix-outbox daemon) or check --config",
            path.display()
        );
    }
    let q = Queue::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let now = nix_outbox_daemon::now();
    let status = q.status(5)?;
    let done_last_hour = q.done_since(now - 3600)?;
    let skip_counts = q.skip_counts()?;
    let sources_last_hour = q.requests_by_source(now - 3600)?;
    let spooled = nix_outbox_hook::spool::list_spool(&cfg.spool_dir())
        .map(|v| v.len())
        .unwrap_or(0);
    let rejected = nix_outbox_daemon::spool::rejected_files(&cfg.spool_dir())
        .with_context(|| format!("listing {}", cfg.spool_dir().join("rejected").display()))?;
    Ok(Snapshot {
        rejected,
        spool_dir: cfg.spool_dir(),
        now,
        status,
        done_last_hour,
        skip_counts,
        spooled,
        configured: cfg.targets.iter().map(|t| t.id()).collect(),
        daemon: daemon(cfg, now),
        sources_last_hour,
        nix_db: q.nix_db_cursor()?.map(|cursor| NixDbView {
            // Best effort: `status` need not run as root.
            nix_last: nix_outbox_store::nix_db::NixDb::open(
                std::path::Path::new(&cursor.db_path)
                    .parent()
                    .and_then(std::path::Path::parent)
                    .unwrap_or(std::path::Path::new("/")),
            )
            .and_then(|db| db.last_id())
            .ok(),
            cursor,
        }),
    })
}

/// Whether the daemon is up. Its progress file is asked first: fresh and
/// written by a live process means running, without touching the socket
/// (under socket activation a connection would start the daemon, and
/// systemd accepts on the socket whether the daemon runs or not). Only
/// without a fresh file is the socket tried (a connection closed without a
/// request is the daemon's liveness probe).
pub(crate) fn daemon(cfg: &Config, now: i64) -> Daemon {
    let file = progress::read(&cfg.progress_path());
    let pid_alive =
        |f: &progress::ProgressFile| std::path::Path::new(&format!("/proc/{}", f.pid)).exists();
    if let Some(f) = file
        .as_ref()
        .filter(|f| f.updated_at >= now - 3 * HEARTBEAT.as_secs() as i64 && pid_alive(f))
    {
        return Daemon {
            running: true,
            how: format!("pid {}, serving {}", f.pid, cfg.socket.display()),
            progress: Some(f.clone()),
        };
    }
    let socket = cfg.socket.display();
    match std::os::unix::net::UnixStream::connect(&cfg.socket) {
        Ok(_) => match &file {
            None => Daemon {
                running: true,
                how: format!("accepting on {socket}"),
                progress: None,
            },
            Some(f) => Daemon {
                running: false,
                how: format!(
                    "the socket {socket} accepts (systemd may hold it) but the daemon has not \
                     reported for {}s",
                    (now - f.updated_at).max(0)
                ),
                progress: None,
            },
        },
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Daemon {
            running: false,
            how: format!(
                "no permission to connect to {socket}, and no fresh progress file from it"
            ),
            progress: None,
        },
        Err(e) => Daemon {
            running: false,
            how: format!("nothing accepts on {socket} ({e})"),
            progress: None,
        },
    }
}
