//! The one configuration schema of nix-outbox: [`ConfigFile`], a TOML file
//! with unknown keys rejected and every default written next to its key.
//!
//! Everything that reads the file reads it through this crate:
//! - the daemon and the CLI with [`load`], which refuses any problem with
//!   a message naming the file, the key and what it must be;
//! - the hook with [`ConfigFile::lenient`], which takes only the keys it
//!   needs and replaces a bad value by its default (a hook must never fail
//!   a build), judged by the very same checks ([`ConfigFile::problems`]).
//!   So a value the hook would ignore is an error at daemon start and in
//!   `check-config`, never a silent difference.
//!
//! Synchronous and small: the hook links it and has no async runtime.

mod env;
mod keys;
mod read;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use serde::Deserialize;

pub use env::{
    CONFIG_ENV, DEFAULT_CONFIG_FILE, Environment, default_socket_for, default_state_dir_in,
    effective_uid, spool_dir,
};
pub use keys::keys;
pub use read::{MAX_CONFIG_BYTES, read_config};

/// How long the hook waits for the daemon's acknowledgement by default.
pub const DEFAULT_HOOK_TIMEOUT_MS: u64 = 2000;
/// Upper bound on `hook-timeout-ms`: every millisecond of it can stall a
/// build when the daemon hangs.
pub const MAX_HOOK_TIMEOUT_MS: u64 = 60_000;
/// Upload workers by default (`workers`).
pub const DEFAULT_WORKERS: usize = 4;
/// `upload-nice` by default: a build on the same cores gets about ten
/// times the CPU of an upload, and an upload on an otherwise busy machine
/// still moves (BENCHMARKS.md, "Without a hook").
pub const DEFAULT_UPLOAD_NICE: i32 = 10;
/// How long a stopping daemon waits for in-flight uploads by default
/// (`stop-timeout-secs`); the systemd unit's TimeoutStopSec is above it.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on `stop-timeout-secs`.
const MAX_STOP_TIMEOUT_SECS: u64 = 3600;

/// The configuration file, as written; a missing key takes the default
/// shown by [`Default`]. Defaults that depend on who runs us (`state-dir`,
/// `socket`, `build-log-dir`) are `None` here and resolved by the methods.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ConfigFile {
    /// Queue, spool, keys and the default cache. Default: see
    /// [`default_state_dir_in`].
    pub state_dir: Option<PathBuf>,
    /// The hook socket. Default: see [`default_socket_for`].
    pub socket: Option<PathBuf>,
    /// Group allowed to use the socket (mode 0660); `None`: root only (0600).
    pub socket_group: Option<String>,
    /// Empty: the daemon generates `<state-dir>/keys/<host>-outbox-1` once.
    pub secret_key_files: Vec<PathBuf>,
    /// Cache URLs in `nix copy --to` syntax. `None`: one file:// cache in
    /// `<state-dir>/cache`.
    pub targets: Option<Vec<String>>,
    #[serde(deserialize_with = "store_dir")]
    pub store_dir: StoreDir,
    pub hook_timeout_ms: u64,
    pub workers: usize,
    /// Globs on store path names; `None`: everything.
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    /// `None`: cache.nixos.org's key; empty: none.
    pub upstream_keys: Option<Vec<String>>,
    /// `None`: none.
    pub upstream_caches: Option<Vec<String>>,
    /// Upload `log/<drv>` (off: logs often hold tokens; `nix copy` does
    /// not upload them either).
    pub upload_build_logs: bool,
    /// `None`: `$NIX_LOG_DIR`, else `/nix/var/log/nix`, as Nix itself.
    pub build_log_dir: Option<PathBuf>,
    /// Add our signatures to the local store's records of build outputs.
    pub sign_local_store: bool,
    /// Upload realisations of content-addressed derivations' outputs.
    pub upload_realisations: bool,
    pub stop_timeout_secs: u64,
    /// Where `GET /metrics` is served; `None`: not served.
    pub metrics_address: Option<String>,
    pub metrics_allow_remote: bool,
    /// Where requests come from: the hook (its socket and spool), Nix's
    /// own database, or both.
    pub ingest: Vec<Ingest>,
    /// Which newly valid paths the `nix-db` source queues.
    pub nix_db_paths: NixDbPaths,
    /// The nice value (0–19) of the threads that upload (hash, compress,
    /// write, and follow Nix's database), so that builds on the same cores
    /// go first. The thread that answers hooks keeps the daemon's own.
    pub upload_nice: i32,
}

/// A source of requests (`ingest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ingest {
    /// `nix-outbox-hook` as Nix's post-build-hook.
    Hook,
    /// Nix's database of valid paths, followed by the daemon.
    NixDb,
}

/// Which paths the `nix-db` source picks (`nix-db-paths`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NixDbPaths {
    /// What a post-build hook would have been called for: outputs of
    /// derivations built on this machine.
    #[default]
    Built,
    /// Every newly valid path (filters and upstreams still apply).
    All,
}

impl Default for ConfigFile {
    fn default() -> Self {
        Self {
            state_dir: None,
            socket: None,
            socket_group: None,
            secret_key_files: Vec::new(),
            targets: None,
            store_dir: StoreDir::default(),
            hook_timeout_ms: DEFAULT_HOOK_TIMEOUT_MS,
            workers: DEFAULT_WORKERS,
            include: None,
            exclude: None,
            upstream_keys: None,
            upstream_caches: None,
            upload_build_logs: false,
            build_log_dir: None,
            sign_local_store: false,
            upload_realisations: true,
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT.as_secs(),
            metrics_address: None,
            metrics_allow_remote: false,
            ingest: vec![Ingest::Hook],
            nix_db_paths: NixDbPaths::Built,
            upload_nice: DEFAULT_UPLOAD_NICE,
        }
    }
}

fn store_dir<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StoreDir, D::Error> {
    let s = String::deserialize(d)?;
    StoreDir::new(&s).map_err(|e| {
        serde::de::Error::custom(format!("{e}; write an absolute path like /nix/store"))
    })
}

/// A value of the right type that is still unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    /// The value as written.
    pub value: String,
    /// What it must be instead.
    pub must_be: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}: must be {}", self.key, self.value, self.must_be)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {message}\nKnown keys: {}.", keys().join(", "))]
    Syntax { origin: String, message: String },
    #[error("invalid configuration in {origin}: {}", problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("; "))]
    Values {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigFile {
    /// Parses a whole file strictly: any unknown key, wrong type or
    /// unusable value is an error naming `origin` (the file, or "built-in
    /// defaults").
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: Self = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let problems = file.problems();
        if problems.is_empty() {
            Ok(file)
        } else {
            Err(ConfigError::Values {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// Takes only `wanted` keys from `text`, each judged alone by the same
    /// rules as [`parse`](Self::parse); a key that fails keeps its default
    /// and adds a one-line problem. Other keys, known or not, are ignored:
    /// a file written for a newer daemon must not break the hook.
    pub fn lenient(text: &str, wanted: &[&str]) -> (Self, Vec<String>) {
        let table = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => return (Self::default(), vec![one_line_toml_error(text, &e)]),
        };
        let mut kept = toml::Table::new();
        let mut problems = Vec::new();
        for (key, value) in table.iter().filter(|(k, _)| wanted.contains(&k.as_str())) {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            let why = match alone.clone().try_into::<Self>() {
                Err(e) => Some(squeeze(e.message())),
                Ok(one) => one
                    .problems()
                    .first()
                    .map(|p| format!("must be {}", p.must_be)),
            };
            match why {
                Some(why) => problems.push(format!("{key}: {why}; using its default")),
                None => kept.extend(alone),
            }
        }
        // Each kept key passed alone, and no rule spans two keys.
        let file = kept.try_into::<Self>().unwrap_or_default();
        (file, problems)
    }

    /// The values that parse but cannot be used, in key order.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &'static str, value: String, must_be: &str| {
            if !ok {
                out.push(Problem {
                    key,
                    value,
                    must_be: must_be.to_owned(),
                });
            }
        };
        let absolute = "an absolute path";
        for (key, path) in [
            ("state-dir", &self.state_dir),
            ("socket", &self.socket),
            ("build-log-dir", &self.build_log_dir),
        ] {
            if let Some(p) = path {
                check(p.is_absolute(), key, format!("{p:?}"), absolute);
            }
        }
        if let Some(t) = &self.targets {
            check(
                !t.is_empty(),
                "targets",
                "[]".into(),
                "a list of at least one cache (it is empty), e.g. targets = [\"file:///var/cache/nix-outbox?compression=zstd\"]",
            );
        }
        check(
            (1..=MAX_HOOK_TIMEOUT_MS).contains(&self.hook_timeout_ms),
            "hook-timeout-ms",
            self.hook_timeout_ms.to_string(),
            &format!(
                "an integer from 1 to {MAX_HOOK_TIMEOUT_MS} (how long a build may wait for the daemon)"
            ),
        );
        check(
            (1..=256).contains(&self.workers),
            "workers",
            self.workers.to_string(),
            "from 1 to 256",
        );
        check(
            self.stop_timeout_secs <= MAX_STOP_TIMEOUT_SECS,
            "stop-timeout-secs",
            self.stop_timeout_secs.to_string(),
            &format!(
                "from 0 to {MAX_STOP_TIMEOUT_SECS} (and keep the systemd unit's TimeoutStopSec above it)"
            ),
        );
        check(
            (0..=19).contains(&self.upload_nice),
            "upload-nice",
            self.upload_nice.to_string(),
            "a nice value from 0 (as the daemon) to 19 (only what the builds leave)",
        );
        let mut seen = std::collections::HashSet::new();
        check(
            !self.ingest.is_empty() && self.ingest.iter().all(|i| seen.insert(*i)),
            "ingest",
            format!("{:?}", self.ingest),
            "a list of the sources \"hook\" and \"nix-db\", each at most once, at least one (e.g. [\"hook\", \"nix-db\"])",
        );
        if let Err(e) = self.metrics_address() {
            check(
                false,
                "metrics-address",
                format!("{:?}", self.metrics_address.as_deref().unwrap_or("")),
                &e,
            );
        }
        out
    }

    pub fn state_dir(&self, env: &Environment) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir_in(env))
    }

    /// The socket default follows the (possibly configured) state dir.
    pub fn socket(&self, env: &Environment) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| default_socket_for(env.is_root(), &self.state_dir(env)))
    }

    /// Whether `source` is among `ingest`.
    pub fn ingests(&self, source: Ingest) -> bool {
        self.ingest.contains(&source)
    }

    pub fn hook_timeout(&self) -> Duration {
        Duration::from_millis(self.hook_timeout_ms)
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.stop_timeout_secs)
    }

    /// `metrics-address`, checked: metrics say when and how much is built,
    /// so only loopback addresses are accepted unless
    /// `metrics-allow-remote`. The error says what the value must be.
    pub fn metrics_address(&self) -> Result<Option<SocketAddr>, String> {
        let Some(value) = &self.metrics_address else {
            return Ok(None);
        };
        let addr: SocketAddr = value.parse().map_err(|_| {
            "an IP address and port, e.g. \"127.0.0.1:9184\" or \"[::1]:9184\"".to_owned()
        })?;
        if !addr.ip().is_loopback() && !self.metrics_allow_remote {
            return Err(format!(
                "a loopback address: metrics reveal when and how much this machine builds. Use \
                 127.0.0.1 (and let a local agent or proxy forward them), or set \
                 metrics-allow-remote = true to serve them on {} anyway",
                addr.ip()
            ));
        }
        Ok(Some(addr))
    }
}

/// Reads and parses the configuration strictly. Where it comes from, first
/// match wins: `explicit` (`--config FILE`), `$NIX_OUTBOX_CONFIG`,
/// [`DEFAULT_CONFIG_FILE`] if it exists, built-in defaults. Returns the
/// file and where it came from (a path, or "built-in defaults").
pub fn load(
    explicit: Option<&Path>,
    env: &Environment,
) -> Result<(ConfigFile, String), ConfigError> {
    let path = match explicit {
        Some(p) => Some(p.to_owned()),
        None => match env.config_path() {
            (p, true) => Some(p),
            (p, false) => Some(p).filter(|p| p.exists()),
        },
    };
    let Some(path) = path else {
        let origin = "built-in defaults".to_owned();
        return Ok((ConfigFile::parse("", &origin)?, origin));
    };
    let text = read_config(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let origin = path.display().to_string();
    Ok((ConfigFile::parse(&text, &origin)?, origin))
}

/// toml's own message spans several lines with a source excerpt; the hook
/// may print only one line.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| {
        text.as_bytes()[..s.start.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let msg = squeeze(e.message());
    match line {
        Some(n) => format!("line {n}: {msg}; using defaults"),
        None => format!("{msg}; using defaults"),
    }
}

/// One line of at most 200 bytes (cut at a character boundary).
fn squeeze(msg: &str) -> String {
    let mut s = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests;
