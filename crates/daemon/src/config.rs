//! The daemon's effective configuration: the one schema
//! ([`nix_outbox_config::ConfigFile`]) read strictly, then every value
//! resolved into what the daemon runs with (target URLs parsed, filters
//! compiled, defaults that depend on who runs us filled in).
//!
//! Where it comes from, first match wins: `--config FILE`,
//! `$NIX_OUTBOX_CONFIG`, `/etc/nix-outbox/config.toml`, built-in defaults.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix_outbox_config::{ConfigFile, Environment};
use nix_outbox_core::StoreDir;
use nix_outbox_upload::TargetConfig;

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
    pub filters: crate::Filters,
    /// `upstream-caches`: asked read-only, never uploaded to.
    pub upstream_caches: Vec<TargetConfig>,
    /// Build logs and local signatures (issue 7).
    pub extras: CacheExtras,
    /// How long a stopping daemon lets in-flight uploads finish.
    pub stop_timeout: std::time::Duration,
    /// Where `GET /metrics` is served; `None`: not served (the default).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Where requests come from (`ingest`): the hook, Nix's database.
    pub ingest: Vec<nix_outbox_config::Ingest>,
    /// Which paths the `nix-db` source queues (`nix-db-paths`).
    pub nix_db_paths: nix_outbox_config::NixDbPaths,
    /// The nice value of the upload threads (`upload-nice`).
    pub upload_nice: i32,
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
        let env = Environment::current();
        let (file, source) = nix_outbox_config::load(explicit, &env)?;
        Self::resolve(file, &source, &env)
    }

    /// Parses config text (strictly) and resolves it for this process.
    pub fn from_toml(text: &str, source: &str) -> anyhow::Result<Self> {
        let file = ConfigFile::parse(text, source)?;
        Self::resolve(file, source, &Environment::current())
    }

    fn resolve(file: ConfigFile, source: &str, env: &Environment) -> anyhow::Result<Self> {
        let state_dir = file.state_dir(env);
        let socket = file.socket(env);
        let default_target = file.targets.is_none();
        let target_strings = file.targets.clone().unwrap_or_else(|| {
            vec![format!(
                "file://{}?compression=zstd",
                state_dir.join("cache").display()
            )]
        });
        let mut targets = Vec::new();
        for t in &target_strings {
            targets
                .push(TargetConfig::parse(t).with_context(|| format!("target {t:?} in {source}"))?);
        }
        // Checked by `problems()` when the file was parsed.
        let metrics_address = file.metrics_address().map_err(anyhow::Error::msg)?;
        let extras = CacheExtras {
            upload_build_logs: file.upload_build_logs,
            build_log_dir: file
                .build_log_dir
                .clone()
                .unwrap_or_else(nix_outbox_upload::default_log_dir),
            sign_local_store: file.sign_local_store,
            upload_realisations: file.upload_realisations,
        };
        let (filters, upstream_caches) = crate::filters::FilterKeys {
            include: file.include.clone(),
            exclude: file.exclude.clone(),
            upstream_keys: file.upstream_keys.clone(),
            upstream_caches: file.upstream_caches.clone(),
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
            socket_group: file.socket_group.clone(),
            secret_key_files: file.secret_key_files.clone(),
            targets,
            default_target,
            store_dir: file.store_dir.clone(),
            hook_timeout_ms: file.hook_timeout_ms,
            workers: file.workers,
            stop_timeout: file.stop_timeout(),
            metrics_address,
            ingest: file.ingest.clone(),
            nix_db_paths: file.nix_db_paths,
            upload_nice: file.upload_nice,
        })
    }

    /// Creates the state directory and spool (mode 0700: the queue and the
    /// spool say what was built, which is nobody else's business), and
    /// refuses them, and the default key directory, when another user owns
    /// them or may write in them: that user could read or swap the signing
    /// key, plant spool requests or edit the queue. (A non-root daemon's
    /// fallback, `/tmp/nix-outbox-<uid>`, is where someone else could have
    /// made the directory first.)
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
            check_private_dir(&dir)?;
        }
        if self.keys_dir().exists() {
            check_private_dir(&self.keys_dir())?;
        }
        Ok(())
    }

    pub fn queue_path(&self) -> PathBuf {
        self.state_dir.join("queue.sqlite")
    }

    /// The daemon's in-flight progress, for `status` (see `metrics::progress`).
    pub fn progress_path(&self) -> PathBuf {
        self.state_dir.join("progress.json")
    }

    pub fn spool_dir(&self) -> PathBuf {
        nix_outbox_config::spool_dir(&self.state_dir)
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.state_dir.join("keys")
    }
}

/// Refuses a directory of ours that another user owns or may write in.
pub fn check_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    let us = nix_outbox_config::effective_uid();
    if meta.uid() != us {
        anyhow::bail!(
            "{} is owned by uid {}, not by the daemon's user (uid {us}): whoever owns it could read \
             or replace the signing key, plant spool requests or edit the queue; remove it so \
             that the daemon creates its own, or chown it to uid {us} if it is yours",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "{} is writable by other users (mode {mode:04o}): they could plant spool requests or \
             replace files; run chmod go-w {}",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
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
        assert_eq!(c.stop_timeout, nix_outbox_config::DEFAULT_STOP_TIMEOUT);
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

    /// Issue 14: a non-root daemon's fallback state dir is in /tmp, where
    /// another user could have made it first.
    #[test]
    fn a_state_dir_of_another_user_or_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let c = Config::from_toml(&format!("state-dir = {:?}\n", state), "t").unwrap();
        c.ensure_state_dir().unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = c.ensure_state_dir().unwrap_err().to_string();
        assert!(
            e.contains("writable by other users") && e.contains("0777"),
            "{e}"
        );
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = std::ffi::CString::new(state.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; nobody's uid, group unchanged.
        assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, u32::MAX) }, 0);
        let e = c.ensure_state_dir().unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        // The spool and the default key dir are checked the same way.
        // SAFETY: as above, back to us.
        let us = nix_outbox_config::effective_uid();
        assert_eq!(unsafe { libc::chown(path.as_ptr(), us, u32::MAX) }, 0);
        std::fs::set_permissions(c.spool_dir(), std::fs::Permissions::from_mode(0o733)).unwrap();
        let e = c.ensure_state_dir().unwrap_err().to_string();
        assert!(e.contains("spool") && e.contains("writable"), "{e}");
        std::fs::set_permissions(c.spool_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(c.keys_dir()).unwrap();
        std::fs::set_permissions(c.keys_dir(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = c.ensure_state_dir().unwrap_err().to_string();
        assert!(e.contains("keys") && e.contains("writable"), "{e}");
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
