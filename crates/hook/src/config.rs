//! The few settings the hook needs, read from the daemon's TOML config file.
//!
//! The daemon owns and validates that file; the hook reads only its four
//! keys and ignores everything else, so a config written for a newer daemon
//! never breaks builds. Any problem means "use the default and say so" —
//! never an error exit. The default-resolution functions are public so the
//! daemon resolves exactly the same paths.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix_outbox_core::StoreDir;

use crate::protocol::truncate;

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "NIX_OUTBOX_CONFIG";
/// The config file used when [`CONFIG_ENV`] is unset, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/nix-outbox/config.toml";
/// How long the hook waits for the daemon's acknowledgement by default.
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 2000;
/// Upper bound on `hook-timeout-ms`: every millisecond of it can stall a
/// build when the daemon hangs.
pub const MAX_HOOK_TIMEOUT_MS: u64 = 60_000;
/// Config files larger than this are not read (the hook must stay fast).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The process facts the defaults depend on, captured once so tests (and
/// the daemon) can resolve defaults for any situation without touching the
/// real environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    pub euid: u32,
    pub xdg_state_home: Option<OsString>,
    pub home: Option<OsString>,
    /// The value of [`CONFIG_ENV`].
    pub config_file: Option<OsString>,
}

impl Environment {
    /// Reads the current process's effective uid and environment.
    pub fn current() -> Self {
        Self {
            euid: effective_uid(),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME"),
            home: std::env::var_os("HOME"),
            config_file: std::env::var_os(CONFIG_ENV),
        }
    }

    pub fn is_root(&self) -> bool {
        self.euid == 0
    }
}

/// The effective uid: what decides where we may write.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The default `state-dir` for the current process; see [`default_state_dir_in`].
pub fn default_state_dir() -> PathBuf {
    default_state_dir_in(&Environment::current())
}

/// Root: `/var/lib/nix-outbox`. Others: `$XDG_STATE_HOME/nix-outbox`, else
/// `$HOME/.local/state/nix-outbox`, else `/tmp/nix-outbox-<uid>`. Relative
/// or empty values are ignored, as the XDG spec asks.
pub fn default_state_dir_in(env: &Environment) -> PathBuf {
    if env.is_root() {
        return PathBuf::from("/var/lib/nix-outbox");
    }
    let absolute = |v: &Option<OsString>| v.as_ref().map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(xdg) = absolute(&env.xdg_state_home) {
        return xdg.join("nix-outbox");
    }
    if let Some(home) = absolute(&env.home) {
        return home.join(".local/state/nix-outbox");
    }
    PathBuf::from(format!("/tmp/nix-outbox-{}", env.euid))
}

/// The default `socket` for the current process; see [`default_socket_for`].
pub fn default_socket(state_dir: &Path) -> PathBuf {
    default_socket_for(effective_uid() == 0, state_dir)
}

/// Root: `/run/nix-outbox/hook.sock`; others: `<state-dir>/hook.sock`.
pub fn default_socket_for(root: bool, state_dir: &Path) -> PathBuf {
    if root {
        PathBuf::from("/run/nix-outbox/hook.sock")
    } else {
        state_dir.join("hook.sock")
    }
}

/// Where hooks queue requests the daemon did not acknowledge.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("spool")
}

/// The resolved settings the hook uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    /// The file the settings came from, if one was read.
    pub file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub store_dir: StoreDir,
    pub hook_timeout: Duration,
}

impl HookConfig {
    /// Built-in defaults only.
    pub fn defaults(env: &Environment) -> Self {
        let state_dir = default_state_dir_in(env);
        Self {
            file: None,
            socket: default_socket_for(env.is_root(), &state_dir),
            state_dir,
            store_dir: StoreDir::default(),
            hook_timeout: Duration::from_millis(DEFAULT_HOOK_TIMEOUT_MS),
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        spool_dir(&self.state_dir)
    }

    /// Loads the config for the current process. Never fails: the second
    /// value lists problems (each already naming the file), for which
    /// defaults were used.
    pub fn load() -> (Self, Vec<String>) {
        Self::load_in(&Environment::current())
    }

    /// [`load`](Self::load) for a given environment.
    pub fn load_in(env: &Environment) -> (Self, Vec<String>) {
        let (path, explicit) = match env.config_file.as_ref().filter(|v| !v.is_empty()) {
            Some(v) => (PathBuf::from(v), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let text = match read_config(&path) {
            Ok(text) => text,
            // Without an explicit file, a missing default file just means
            // "no config": the normal case for a default install.
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return (Self::defaults(env), Vec::new());
            }
            Err(e) => {
                let problem = format!("cannot read config {}: {e}; using defaults", path.display());
                return (Self::defaults(env), vec![problem]);
            }
        };
        let (mut cfg, problems) = Self::from_toml(&text, env);
        cfg.file = Some(path.clone());
        let problems = problems
            .into_iter()
            .map(|p| format!("config {}: {p}", path.display()))
            .collect();
        (cfg, problems)
    }

    /// Takes the hook's keys from config text; unknown keys and tables are
    /// ignored. A file that does not parse yields all defaults.
    pub fn from_toml(text: &str, env: &Environment) -> (Self, Vec<String>) {
        let mut cfg = Self::defaults(env);
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => return (cfg, vec![toml_error(text, &e)]),
        };
        let mut problems = Vec::new();
        let mut bad = |key: &str, want: &str, default: &dyn std::fmt::Display| {
            problems.push(format!("{key} must be {want}; using the default {default}"));
        };
        let absolute = |v: &toml::Value| v.as_str().map(PathBuf::from).filter(|p| p.is_absolute());
        if let Some(v) = table.get("state-dir") {
            match absolute(v) {
                Some(p) => cfg.state_dir = p,
                None => bad("state-dir", "an absolute path", &cfg.state_dir.display()),
            }
        }
        // The socket default follows the (possibly configured) state dir.
        cfg.socket = default_socket_for(env.is_root(), &cfg.state_dir);
        if let Some(v) = table.get("socket") {
            match absolute(v) {
                Some(p) => cfg.socket = p,
                None => bad("socket", "an absolute path", &cfg.socket.display()),
            }
        }
        if let Some(v) = table.get("store-dir") {
            match v.as_str().map(StoreDir::new) {
                Some(Ok(sd)) => cfg.store_dir = sd,
                _ => bad(
                    "store-dir",
                    "an absolute path like /nix/store",
                    &cfg.store_dir,
                ),
            }
        }
        if let Some(v) = table.get("hook-timeout-ms") {
            let range = 1..=MAX_HOOK_TIMEOUT_MS;
            match v.as_integer().and_then(|i| u64::try_from(i).ok()) {
                Some(ms) if range.contains(&ms) => cfg.hook_timeout = Duration::from_millis(ms),
                _ => bad(
                    "hook-timeout-ms",
                    &format!("an integer from 1 to {MAX_HOOK_TIMEOUT_MS}"),
                    &DEFAULT_HOOK_TIMEOUT_MS,
                ),
            }
        }
        (cfg, problems)
    }
}

/// Reads a config file without ever blocking: a FIFO or device named by
/// mistake is refused instead of stalling the build.
fn read_config(path: &Path) -> std::io::Result<String> {
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// toml's own message spans several lines with a source excerpt; the hook
/// may print only one line.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| {
        text.as_bytes()[..s.start.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    let msg = truncate(&msg, 200);
    match line {
        Some(n) => format!("line {n}: {msg}; using defaults"),
        None => format!("{msg}; using defaults"),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
