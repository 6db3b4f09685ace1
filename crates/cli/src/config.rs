//! The daemon's configuration: TOML with unknown keys rejected, every
//! default documented and shown by `check-config`.
//!
//! Where it comes from, first match wins: `--config FILE`,
//! `$NIX_OUTBOX_CONFIG`, `/etc/nix-outbox/config.toml`, built-in defaults.
//! The hook reads the same file (only `state-dir`, `socket`, `store-dir`,
//! `hook-timeout-ms`) with the same defaults, which live in the hook crate
//! so the two can never disagree.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nix_outbox_core::StoreDir;
use nix_outbox_hook::config::{
    CONFIG_ENV, DEFAULT_CONFIG_FILE, DEFAULT_HOOK_TIMEOUT_MS, Environment, default_socket_for,
    default_state_dir_in,
};
use nix_outbox_upload::TargetConfig;
use serde::Deserialize;

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    secret_key_files: Option<Vec<PathBuf>>,
    targets: Option<Vec<String>>,
    store_dir: Option<String>,
    hook_timeout_ms: Option<u64>,
    workers: Option<usize>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    upstream_keys: Option<Vec<String>>,
    upstream_caches: Option<Vec<String>>,
    upload_build_logs: Option<bool>,
    build_log_dir: Option<PathBuf>,
    sign_local_store: Option<bool>,
    upload_realisations: Option<bool>,
    stop_timeout_secs: Option<u64>,
    metrics_address: Option<String>,
    metrics_allow_remote: Option<bool>,
}

/// The effective configuration, every value resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a file, or "built-in defaults").
    pub source: String,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Group allowed to use the socket (mode 0660); `None`: root only (0600).
    pub socket_group: Option<String>,
    /// Empty: the daemon generates `<state-dir>/keys/<host>-outbox-1` once.
    pub secret_key_files: Vec<PathBuf>,
    pub targets: Vec<TargetConfig>,
    /// True when `targets` is the embedded default file:// cache.
    pub default_target: bool,
    pub store_dir: StoreDir,
    pub hook_timeout_ms: u64,
    pub workers: usize,
    /// `include`, `exclude`, `upstream-keys` (see `service::filters`).
    pub filters: crate::service::Filters,
    /// `upstream-caches`: asked read-only, never uploaded to.
    pub upstream_caches: Vec<TargetConfig>,
    /// Build logs and local signatures (issue 7).
    pub extras: CacheExtras,
    /// How long a stopping daemon lets in-flight uploads finish.
    pub stop_timeout: std::time::Duration,
    /// Where `GET /metrics` is served; `None`: not served (the default).
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// What the daemon publishes besides NARs and narinfos, and what it
/// records locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExtras {
    /// Upload `log/<drv>` for requests that name their derivation (hook
    /// requests). Default false: logs often hold tokens or environment
    /// dumps, and `nix copy` does not upload them either.
    pub upload_build_logs: bool,
    /// Nix's log directory (`<dir>/drvs/…`). Default `$NIX_LOG_DIR`, else
    /// `/nix/var/log/nix`, as Nix itself.
    pub build_log_dir: PathBuf,
    /// Add our signatures to the local store's records of build outputs
    /// (what the manual's hook does with `nix store sign`). Default false.
    pub sign_local_store: bool,
    /// Upload `realisations/<id>.doi` for the floating content-addressed
    /// outputs of hook requests' derivations (`ca-derivations`). Default
    /// true; a no-op for other derivations.
    pub upload_realisations: bool,
}

impl Default for CacheExtras {
    fn default() -> Self {
        Self {
            upload_build_logs: false,
            build_log_dir: nix_outbox_upload::default_log_dir(),
            sign_local_store: false,
            upload_realisations: true,
        }
    }
}

impl Config {
    /// Loads from `--config`, `$NIX_OUTBOX_CONFIG`, the system file, or defaults.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let env_path = std::env::var_os(CONFIG_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let path = match (explicit, env_path) {
            (Some(p), _) => Some(p.to_owned()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read configuration file {}", p.display()))?;
                Self::from_toml(&text, &p.display().to_string())
            }
            None => Self::from_toml("", "built-in defaults"),
        }
    }

    pub fn from_toml(text: &str, source: &str) -> anyhow::Result<Self> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration in {source}: {}\nKnown keys: state-dir, socket, socket-group, secret-key-files, targets, store-dir, hook-timeout-ms, workers, include, exclude, upstream-keys, upstream-caches, stop-timeout-secs, metrics-address, metrics-allow-remote, upload-build-logs, build-log-dir, sign-local-store.",
                e.to_string().trim_end()
            )
        })?;
        let env = Environment::current();
        let state_dir = file.state_dir.unwrap_or_else(|| default_state_dir_in(&env));
        if !state_dir.is_absolute() {
            bail!(
                "state-dir {:?} in {source} must be an absolute path",
                state_dir
            );
        }
        let socket = file
            .socket
            .unwrap_or_else(|| default_socket_for(env.is_root(), &state_dir));
        if !socket.is_absolute() {
            bail!("socket {:?} in {source} must be an absolute path", socket);
        }
        let store_dir = match file.store_dir {
            Some(s) => StoreDir::new(&s).with_context(|| format!("store-dir in {source}"))?,
            None => StoreDir::default(),
        };
        let default_target = file.targets.is_none();
        let target_strings = file.targets.unwrap_or_else(|| {
            vec![format!(
                "file://{}?compression=zstd",
                state_dir.join("cache").display()
            )]
        });
        if target_strings.is_empty() {
            bail!(
                "targets in {source} is empty: name at least one cache, e.g. targets = [\"file:///var/cache/nix-outbox?compression=zstd\"]"
            );
        }
        let mut targets = Vec::new();
        for t in &target_strings {
            targets
                .push(TargetConfig::parse(t).with_context(|| format!("target {t:?} in {source}"))?);
        }
        let hook_timeout_ms = file.hook_timeout_ms.unwrap_or(DEFAULT_HOOK_TIMEOUT_MS);
        let workers = file.workers.unwrap_or(4);
        if workers == 0 || workers > 256 {
            bail!("workers = {workers} in {source}: choose 1 to 256");
        }
        let stop_timeout_secs = file
            .stop_timeout_secs
            .unwrap_or(crate::service::DEFAULT_STOP_TIMEOUT.as_secs());
        if stop_timeout_secs > 3600 {
            bail!(
                "stop-timeout-secs = {stop_timeout_secs} in {source}: choose 0 to 3600 (and keep the systemd unit's TimeoutStopSec above it)"
            );
        }
        let metrics_address = crate::service::metrics::parse_address(
            file.metrics_address.as_deref(),
            file.metrics_allow_remote.unwrap_or(false),
        )
        .map_err(|e| anyhow::anyhow!("{e} (in {source})"))?;
        let build_log_dir = file
            .build_log_dir
            .unwrap_or_else(nix_outbox_upload::default_log_dir);
        if !build_log_dir.is_absolute() {
            bail!("build-log-dir {build_log_dir:?} in {source} must be an absolute path");
        }
        let extras = CacheExtras {
            upload_build_logs: file.upload_build_logs.unwrap_or(false),
            build_log_dir,
            sign_local_store: file.sign_local_store.unwrap_or(false),
            upload_realisations: file.upload_realisations.unwrap_or(true),
        };
        let (filters, upstream_caches) = crate::service::filters::FilterKeys {
            include: file.include,
            exclude: file.exclude,
            upstream_keys: file.upstream_keys,
            upstream_caches: file.upstream_caches,
        }
        .resolve(&targets)
        .map_err(|e| anyhow::anyhow!("{e} (in {source})"))?;
        Ok(Self {
            filters,
            upstream_caches,
            extras,
            source: source.to_owned(),
            state_dir,
            socket,
            socket_group: file.socket_group,
            secret_key_files: file.secret_key_files.unwrap_or_default(),
            targets,
            default_target,
            store_dir,
            hook_timeout_ms,
            workers,
            stop_timeout: std::time::Duration::from_secs(stop_timeout_secs),
            metrics_address,
        })
    }

    /// Creates the state directory and spool (mode 0700: the queue and the
    /// spool say what was built, which is nobody else's business).
    pub fn ensure_state_dir(&self) -> anyhow::Result<()> {
        for dir in [self.state_dir.clone(), self.spool_dir()] {
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                std::fs::set_permissions(
                    &dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )?;
            }
        }
        Ok(())
    }

    pub fn queue_path(&self) -> PathBuf {
        self.state_dir.join("queue.sqlite")
    }

    /// The daemon's in-flight progress, for `status` (see `service::metrics::progress`).
    pub fn progress_path(&self) -> PathBuf {
        self.state_dir.join("progress.json")
    }

    pub fn spool_dir(&self) -> PathBuf {
        nix_outbox_hook::config::spool_dir(&self.state_dir)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("", "test").unwrap();
        assert!(c.default_target);
        assert_eq!(c.targets.len(), 1);
        assert!(
            c.targets[0].to_string().starts_with("file://"),
            "{}",
            c.targets[0]
        );
        let c = Config::from_toml(
            "state-dir = \"/srv/o\"\nsocket = \"/run/o.sock\"\ntargets = [\"file:///srv/cache?compression=xz\"]\nsecret-key-files = [\"/etc/nix/k\"]\nworkers = 2\n",
            "test",
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/o"));
        assert_eq!(c.queue_path(), PathBuf::from("/srv/o/queue.sqlite"));
        assert_eq!(c.socket, PathBuf::from("/run/o.sock"));
        assert!(!c.default_target);
        assert_eq!(c.workers, 2);
        assert_eq!(c.stop_timeout, crate::service::DEFAULT_STOP_TIMEOUT);
        let c = Config::from_toml("stop-timeout-secs = 0\n", "test").unwrap();
        assert_eq!(c.stop_timeout, std::time::Duration::ZERO);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = Config::from_toml("stat-dir = \"/x\"\n", "/etc/x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stat-dir") && e.contains("/etc/x.toml") && e.contains("Known keys"),
            "{e}"
        );
        let e = Config::from_toml("targets = []\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = format!(
            "{:#}",
            Config::from_toml("targets = [\"ftp://x\"]\n", "f").unwrap_err()
        );
        assert!(e.contains("ftp://x"), "{e}");
        let e = Config::from_toml("state-dir = \"rel\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = Config::from_toml("workers = 0\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
        let e = Config::from_toml("stop-timeout-secs = 3601\n", "f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("stop-timeout-secs") && e.contains("TimeoutStopSec"),
            "{e}"
        );
    }

    #[test]
    fn cache_extras_default_and_override() {
        let c = Config::from_toml("", "test").unwrap();
        assert!(!c.extras.upload_build_logs && !c.extras.sign_local_store);
        assert!(c.extras.build_log_dir.is_absolute());
        let c = Config::from_toml(
            "upload-build-logs = true\nsign-local-store = true\nbuild-log-dir = \"/srv/logs\"\n",
            "test",
        )
        .unwrap();
        assert!(c.extras.upload_build_logs && c.extras.sign_local_store);
        assert_eq!(c.extras.build_log_dir, PathBuf::from("/srv/logs"));
        let e = Config::from_toml("build-log-dir = \"logs\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("build-log-dir") && e.contains("absolute"), "{e}");
        assert!(
            Config::from_toml("", "t")
                .unwrap()
                .extras
                .upload_realisations
        );
        let c = Config::from_toml("upload-realisations = false\n", "t").unwrap();
        assert!(!c.extras.upload_realisations);
    }
}
