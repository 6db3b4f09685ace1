//! Where things are by default, which depends on who runs us: root gets
//! system paths, anyone else paths under their home. The daemon, the CLI
//! and the hook resolve defaults with these same functions, so a hook and
//! a daemon started without a config file always meet at one socket and
//! one spool.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "NIX_OUTBOX_CONFIG";
/// The config file used when [`CONFIG_ENV`] is unset, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/nix-outbox/config.toml";

/// The process facts the defaults depend on, captured once so tests can
/// resolve defaults for any situation without touching the real
/// environment.
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

    /// The config file to read: [`CONFIG_ENV`] if set and not empty (then
    /// `true`: it was asked for, so its absence is an error), else
    /// [`DEFAULT_CONFIG_FILE`] (`false`: absent means built-in defaults).
    pub fn config_path(&self) -> (PathBuf, bool) {
        match self.config_file.as_ref().filter(|v| !v.is_empty()) {
            Some(v) => (PathBuf::from(v), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        }
    }
}

/// The effective uid: what decides where we may write.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(xdg: Option<&str>, home: Option<&str>) -> Environment {
        Environment {
            euid: 1000,
            xdg_state_home: xdg.map(OsString::from),
            home: home.map(OsString::from),
            config_file: None,
        }
    }

    #[test]
    fn root_defaults() {
        let env = Environment::default();
        let state = default_state_dir_in(&env);
        assert_eq!(state, Path::new("/var/lib/nix-outbox"));
        assert_eq!(
            default_socket_for(true, &state),
            Path::new("/run/nix-outbox/hook.sock")
        );
        assert_eq!(spool_dir(&state), Path::new("/var/lib/nix-outbox/spool"));
    }

    #[test]
    fn non_root_defaults_follow_xdg_then_home_then_tmp() {
        let cases = [
            (Some("/x/state"), Some("/home/u"), "/x/state/nix-outbox"),
            (
                Some("relative"),
                Some("/home/u"),
                "/home/u/.local/state/nix-outbox",
            ),
            (Some(""), Some("/home/u"), "/home/u/.local/state/nix-outbox"),
            (None, Some("/home/u"), "/home/u/.local/state/nix-outbox"),
            (None, Some(""), "/tmp/nix-outbox-1000"),
            (None, None, "/tmp/nix-outbox-1000"),
        ];
        for (xdg, home, want) in cases {
            let env = user(xdg, home);
            assert_eq!(
                default_state_dir_in(&env),
                Path::new(want),
                "{xdg:?} {home:?}"
            );
            assert_eq!(
                default_socket_for(false, Path::new(want)),
                Path::new(want).join("hook.sock")
            );
        }
    }

    #[test]
    fn an_empty_config_variable_means_unset() {
        let env = Environment {
            config_file: Some(OsString::new()),
            ..Environment::default()
        };
        assert_eq!(
            env.config_path(),
            (PathBuf::from(DEFAULT_CONFIG_FILE), false)
        );
        let env = Environment {
            config_file: Some("/srv/o.toml".into()),
            ..Environment::default()
        };
        assert_eq!(env.config_path(), (PathBuf::from("/srv/o.toml"), true));
    }
}
