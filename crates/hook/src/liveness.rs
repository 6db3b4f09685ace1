//! The daemon's heartbeat, so that a hook can tell a hung daemon from a
//! busy one without waiting for its own timeout.
//!
//! The thread that serves the hook socket names itself in
//! `<spool>/.daemon-alive` (its pid and the process's start time, which
//! tells it apart from a later process that got the same pid) and touches
//! the file's mtime every [`BEAT`]. A hook reads the file before it
//! connects and again while it waits for the acknowledgement:
//! - no file, or its process is gone: nothing is known, connect as usual
//!   (a daemon that is down refuses at once; under socket activation the
//!   connection starts it);
//! - the process is stopped (SIGSTOP, a debugger): it is hung;
//! - the mtime is older than [`STALE`]: the thread that answers hooks has
//!   not run for that long, so it is hung;
//! - otherwise it is alive, and the hook waits for it up to its timeout.
//!
//! A hung daemon thus costs the first hook at most [`STALE`] plus one beat
//! (a stopped one nothing), not `hook-timeout-ms`; the `unresponsive`
//! marker then spares the hooks after it even that. A wrong "hung" only
//! spools a request, which the daemon ingests later: nothing is lost.
//!
//! Linux only (it reads `/proc`); elsewhere the file is not written and
//! hooks wait for their timeout as before.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file's name in the spool directory (a dot name: the spool lister
/// skips it).
pub const FILE: &str = ".daemon-alive";

/// How often the daemon's hook thread touches the file.
pub const BEAT: Duration = Duration::from_millis(200);

/// A heartbeat older than this means the hook thread is not running.
/// Five beats: a thread that a busy machine leaves unscheduled for a
/// moment is not called hung.
pub const STALE: Duration = Duration::from_secs(1);

pub fn path(spool_dir: &Path) -> PathBuf {
    spool_dir.join(FILE)
}

/// What a hook learns from the heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// No heartbeat, or its process has exited: connect and see.
    Unknown,
    /// The daemon's hook thread ran within [`STALE`].
    Alive,
    /// The daemon's process exists but does not run; the reason, for the
    /// hook's message.
    Hung(String),
}

/// Reads the heartbeat in `spool_dir` as of `now`.
pub fn check(spool_dir: &Path, now: SystemTime) -> Liveness {
    let file = path(spool_dir);
    let (Ok(text), Ok(meta)) = (std::fs::read_to_string(&file), std::fs::metadata(&file)) else {
        return Liveness::Unknown;
    };
    let Some((pid, started)) = parse(&text) else {
        return Liveness::Unknown;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Liveness::Unknown;
    };
    let Some(proc) = ProcStat::parse(&stat) else {
        return Liveness::Unknown;
    };
    if proc.started != started {
        // Another process with a reused pid: the daemon died uncleanly.
        return Liveness::Unknown;
    }
    match proc.state {
        'T' | 't' => return Liveness::Hung(format!("its process {pid} is stopped")),
        // A zombie or a dead process: no daemon to wait for.
        'Z' | 'X' | 'x' => return Liveness::Unknown,
        _ => {}
    }
    let Ok(beat) = meta.modified() else {
        return Liveness::Unknown;
    };
    match now.duration_since(beat) {
        Ok(age) if age > STALE => Liveness::Hung(format!(
            "its hook thread has not run for {} ms",
            age.as_millis()
        )),
        _ => Liveness::Alive,
    }
}

fn parse(text: &str) -> Option<(u32, u64)> {
    let mut words = text.split_ascii_whitespace();
    let pid = words.next()?.parse().ok()?;
    let started = words.next()?.parse().ok()?;
    Some((pid, started))
}

/// The two fields of `/proc/<pid>/stat` that matter here.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    state: char,
    /// Field 22, `starttime`: clock ticks after boot.
    started: u64,
}

impl ProcStat {
    fn parse(stat: &str) -> Option<ProcStat> {
        // The command name (field 2) is in parentheses and may hold spaces
        // or parentheses itself; the fields after its last `)` are plain.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace();
        let state = fields.next()?.chars().next()?;
        // `state` is field 3, so `starttime` (22) is 19 further on.
        let started = fields.nth(18)?.parse().ok()?;
        Some(ProcStat { state, started })
    }
}

/// The daemon's side: the heartbeat file, removed again on drop.
#[derive(Debug)]
pub struct Heartbeat {
    file: std::fs::File,
    path: PathBuf,
}

impl Heartbeat {
    /// Names this process in `spool_dir`'s heartbeat. `Ok(None)` where
    /// `/proc` is missing (not Linux): hooks then wait as before.
    pub fn start(spool_dir: &Path) -> io::Result<Option<Heartbeat>> {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return Ok(None);
        };
        let Some(me) = ProcStat::parse(&stat) else {
            return Ok(None);
        };
        let path = path(spool_dir);
        let tmp = spool_dir.join(format!(".daemon-alive.{}", std::process::id()));
        // A hint, not data: renamed into place so no hook reads half of
        // it, but not synced (after a crash its process is gone anyway).
        std::fs::write(&tmp, format!("{} {}\n", std::process::id(), me.started))?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::File::open(&path)?;
        Ok(Some(Heartbeat { file, path }))
    }

    /// One beat: the file's mtime becomes now.
    pub fn beat(&self) -> io::Result<()> {
        self.file.set_modified(SystemTime::now())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // A daemon that stopped cleanly is not hung: hooks connect, and
        // are refused at once (or start it, under socket activation).
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests;
