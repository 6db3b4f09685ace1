//! The four settings the hook needs (`state-dir`, `socket`, `store-dir`,
//! `hook-timeout-ms`), read through the one schema in `nix-outbox-config`.
//!
//! The daemon owns and validates the file; the hook takes only its keys
//! ([`ConfigFile::lenient`]), so a config written for a newer daemon never
//! breaks builds. Any problem means "use the default and say so", never an
//! error exit; and since the daemon judges the same keys by the same rules,
//! a value the hook would ignore keeps the daemon from starting.

use std::path::PathBuf;
use std::time::Duration;

use nix_outbox_config::{ConfigFile, read_config, spool_dir};
use nix_outbox_core::StoreDir;

pub use nix_outbox_config::Environment;

/// The keys the hook reads; the daemon reads them too.
const HOOK_KEYS: [&str; 4] = ["state-dir", "socket", "store-dir", "hook-timeout-ms"];

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
        Self::resolve(&ConfigFile::default(), env)
    }

    fn resolve(file: &ConfigFile, env: &Environment) -> Self {
        Self {
            file: None,
            state_dir: file.state_dir(env),
            socket: file.socket(env),
            store_dir: file.store_dir.clone(),
            hook_timeout: file.hook_timeout(),
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
        let (path, explicit) = env.config_path();
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

    /// Takes the hook's keys from config text; other keys and tables are
    /// ignored. A file that does not parse yields all defaults.
    pub fn from_toml(text: &str, env: &Environment) -> (Self, Vec<String>) {
        let (file, problems) = ConfigFile::lenient(text, &HOOK_KEYS);
        (Self::resolve(&file, env), problems)
    }
}

#[cfg(test)]
mod tests;
