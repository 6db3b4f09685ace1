use std::ffi::OsString;
use std::path::Path;

use nix_outbox_config::{DEFAULT_CONFIG_FILE, DEFAULT_HOOK_TIMEOUT_MS};

use super::*;

fn root() -> Environment {
    Environment::default()
}

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
    let cfg = HookConfig::defaults(&root());
    assert_eq!(cfg.state_dir, Path::new("/var/lib/nix-outbox"));
    assert_eq!(cfg.socket, Path::new("/run/nix-outbox/hook.sock"));
    assert_eq!(cfg.spool_dir(), Path::new("/var/lib/nix-outbox/spool"));
    assert_eq!(cfg.store_dir, StoreDir::default());
    assert_eq!(cfg.hook_timeout, Duration::from_millis(2000));
}

#[test]
fn keys_override_defaults_and_unknown_keys_are_ignored() {
    let text = r#"
        state-dir = "/srv/outbox"
        hook-timeout-ms = 300
        store-dir = "/opt/store"
        future-key = { nested = [1, 2] }
        [[cache]]
        url = "s3://bucket"
        socket = "/not/this/one.sock"
    "#;
    let (cfg, problems) = HookConfig::from_toml(text, &user(None, None));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(cfg.state_dir, Path::new("/srv/outbox"));
    // A `socket` inside a table is not the top-level key.
    assert_eq!(cfg.socket, Path::new("/srv/outbox/hook.sock"));
    assert_eq!(cfg.store_dir.as_str(), "/opt/store");
    assert_eq!(cfg.hook_timeout, Duration::from_millis(300));

    let (cfg, _) = HookConfig::from_toml("socket = \"/run/x.sock\"", &root());
    assert_eq!(cfg.socket, Path::new("/run/x.sock"));
    assert_eq!(cfg.state_dir, Path::new("/var/lib/nix-outbox"));
}

#[test]
fn bad_values_fall_back_per_key() {
    let text = r#"
        state-dir = "relative/dir"
        socket = 5
        store-dir = "/nix/store/"
        hook-timeout-ms = 0
    "#;
    let (cfg, problems) = HookConfig::from_toml(text, &root());
    assert_eq!(cfg, HookConfig::defaults(&root()));
    let all = problems.join("\n");
    for key in [
        "state-dir: must be an absolute path",
        "socket: invalid type",
        "store-dir: ",
        "hook-timeout-ms: must be an integer from 1 to 60000",
    ] {
        assert!(all.contains(key), "{all}");
    }
    let (cfg, problems) = HookConfig::from_toml("hook-timeout-ms = 9999999", &root());
    assert_eq!(
        cfg.hook_timeout,
        Duration::from_millis(DEFAULT_HOOK_TIMEOUT_MS)
    );
    assert_eq!(problems.len(), 1);
}

#[test]
fn unparsable_file_gives_defaults_and_one_line() {
    let (cfg, problems) = HookConfig::from_toml("a = 1\nstate-dir = [\n", &root());
    assert_eq!(cfg, HookConfig::defaults(&root()));
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].contains('\n'), "{:?}", problems[0]);
    assert!(problems[0].starts_with("line "), "{:?}", problems[0]);
}

#[test]
fn load_reads_the_file_named_by_the_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "state-dir = \"/srv/o\"\n").unwrap();
    let env = Environment {
        config_file: Some(path.clone().into()),
        ..root()
    };
    let (cfg, problems) = HookConfig::load_in(&env);
    assert!(problems.is_empty());
    assert_eq!(cfg.file.as_deref(), Some(path.as_path()));
    assert_eq!(cfg.state_dir, Path::new("/srv/o"));

    std::fs::write(&path, "state-dir = 7\n").unwrap();
    let (_, problems) = HookConfig::load_in(&env);
    assert!(problems[0].starts_with(&format!("config {}: state-dir", path.display())));
}

#[test]
fn missing_or_unreadable_explicit_file_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Environment {
        config_file: Some(dir.path().join("nope.toml").into()),
        ..root()
    };
    let (cfg, problems) = HookConfig::load_in(&missing);
    assert_eq!(cfg, HookConfig::defaults(&root()));
    assert!(problems[0].contains("cannot read config"), "{problems:?}");

    // A directory (or a FIFO) must be refused, not read or waited on.
    let not_file = Environment {
        config_file: Some(dir.path().into()),
        ..root()
    };
    let (_, problems) = HookConfig::load_in(&not_file);
    assert!(problems[0].contains("cannot read config"), "{problems:?}");

    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let env = Environment {
        config_file: Some(fifo.into()),
        ..root()
    };
    let (_, problems) = HookConfig::load_in(&env);
    assert!(problems[0].contains("not a regular file"), "{problems:?}");
}

#[test]
fn empty_env_value_means_unset() {
    let env = Environment {
        config_file: Some(OsString::new()),
        ..root()
    };
    // Falls back to /etc/nix-outbox/config.toml: read when this machine
    // has one, else built-in defaults without a problem.
    let (cfg, problems) = HookConfig::load_in(&env);
    if Path::new(DEFAULT_CONFIG_FILE).exists() {
        assert_eq!(cfg.file.as_deref(), Some(Path::new(DEFAULT_CONFIG_FILE)));
    } else {
        assert_eq!((cfg, problems), (HookConfig::defaults(&env), vec![]));
    }
}
