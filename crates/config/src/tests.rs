use std::path::Path;

use super::*;

fn root() -> Environment {
    Environment::default()
}

#[test]
fn keys_are_the_schema_fields_in_file_spelling() {
    let keys = keys();
    for k in [
        "state-dir",
        "socket",
        "hook-timeout-ms",
        "upload-realisations",
        "metrics-allow-remote",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    // Every listed key parses (so the list cannot name a key the file rejects).
    for k in keys {
        let e = ConfigFile::parse(&format!("{k} = {{}}\n"), "t").unwrap_err();
        assert!(
            !e.to_string().contains("unknown field"),
            "{k} is listed but unknown: {e}"
        );
    }
}

#[test]
fn defaults_and_overrides() {
    let c = ConfigFile::parse("", "test").unwrap();
    assert_eq!(c, ConfigFile::default());
    assert_eq!(c.state_dir(&root()), Path::new("/var/lib/nix-outbox"));
    assert_eq!(c.socket(&root()), Path::new("/run/nix-outbox/hook.sock"));
    assert_eq!(c.hook_timeout(), Duration::from_millis(2000));
    assert_eq!(c.stop_timeout(), DEFAULT_STOP_TIMEOUT);
    assert!(c.upload_realisations && !c.upload_build_logs && !c.sign_local_store);
    let c = ConfigFile::parse(
        "state-dir = \"/srv/o\"\ntargets = [\"file:///srv/cache?compression=xz\"]\nsecret-key-files = [\"/etc/nix/k\"]\nworkers = 2\nstop-timeout-secs = 0\nstore-dir = \"/opt/store\"\n",
        "test",
    )
    .unwrap();
    assert_eq!(c.state_dir(&root()), Path::new("/srv/o"));
    assert_eq!(c.workers, 2);
    assert_eq!(c.stop_timeout(), Duration::ZERO);
    assert_eq!(c.store_dir.as_str(), "/opt/store");
    // A non-root user's socket follows the configured state dir.
    let user = Environment {
        euid: 1000,
        ..root()
    };
    assert_eq!(c.socket(&user), Path::new("/srv/o/hook.sock"));
}

#[test]
fn errors_say_what_and_where() {
    let e = ConfigFile::parse("stat-dir = \"/x\"\n", "/etc/x.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stat-dir") && e.contains("/etc/x.toml") && e.contains("Known keys"),
        "{e}"
    );
    assert!(e.contains("upload-realisations"), "{e}");
    let cases = [
        ("targets = []\n", "empty"),
        ("state-dir = \"rel\"\n", "absolute"),
        ("build-log-dir = \"logs\"\n", "build-log-dir"),
        ("workers = 0\n", "workers"),
        ("stop-timeout-secs = 3601\n", "TimeoutStopSec"),
        ("hook-timeout-ms = 0\n", "hook-timeout-ms"),
        ("hook-timeout-ms = 60001\n", "1 to 60000"),
        ("store-dir = \"/nix/store/\"\n", "store-dir"),
        ("metrics-address = \"0.0.0.0:9184\"\n", "loopback"),
        ("metrics-address = \"here\"\n", "IP address and port"),
    ];
    for (text, want) in cases {
        let e = ConfigFile::parse(text, "f").unwrap_err().to_string();
        assert!(e.contains(want) && e.contains(" f"), "{text}: {e}");
    }
    // Every problem is reported, not only the first.
    let e = ConfigFile::parse("workers = 0\nhook-timeout-ms = 0\n", "f")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workers") && e.contains("hook-timeout-ms"),
        "{e}"
    );
    // Remote metrics only when asked for.
    let c = ConfigFile::parse(
        "metrics-address = \"0.0.0.0:9184\"\nmetrics-allow-remote = true\n",
        "f",
    )
    .unwrap();
    assert_eq!(
        c.metrics_address().unwrap(),
        Some("0.0.0.0:9184".parse().unwrap())
    );
}

#[test]
fn lenient_takes_only_the_wanted_keys_and_ignores_the_rest() {
    let text = r#"
        state-dir = "/srv/outbox"
        hook-timeout-ms = 300
        store-dir = "/opt/store"
        workers = 0
        future-key = { nested = [1, 2] }
        [[cache]]
        url = "s3://bucket"
        socket = "/not/this/one.sock"
    "#;
    let wanted = ["state-dir", "socket", "store-dir", "hook-timeout-ms"];
    let (c, problems) = ConfigFile::lenient(text, &wanted);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(c.state_dir.as_deref(), Some(Path::new("/srv/outbox")));
    // A `socket` inside a table is not the top-level key.
    assert_eq!(c.socket, None);
    assert_eq!(c.store_dir.as_str(), "/opt/store");
    assert_eq!(c.hook_timeout_ms, 300);
    // Not wanted, so not judged: the daemon refuses it, the hook need not.
    assert_eq!(c.workers, DEFAULT_WORKERS);
}

#[test]
fn lenient_falls_back_per_key_with_the_strict_rules() {
    let text = r#"
        state-dir = "relative/dir"
        socket = 5
        store-dir = "/nix/store/"
        hook-timeout-ms = 0
    "#;
    let wanted = ["state-dir", "socket", "store-dir", "hook-timeout-ms"];
    let (c, problems) = ConfigFile::lenient(text, &wanted);
    assert_eq!(c, ConfigFile::default());
    assert_eq!(problems.len(), 4, "{problems:?}");
    for (key, why) in [
        ("state-dir", "absolute path"),
        ("socket", "invalid type"),
        ("store-dir", "absolute path like /nix/store"),
        ("hook-timeout-ms", "1 to 60000"),
    ] {
        let p = problems.iter().find(|p| p.starts_with(&format!("{key}: ")));
        let p = p.unwrap_or_else(|| panic!("no problem for {key}: {problems:?}"));
        assert!(p.contains(why) && p.ends_with("using its default"), "{p}");
        // The strict parse refuses the same value.
        let line = text.lines().find(|l| l.trim().starts_with(key)).unwrap();
        assert!(ConfigFile::parse(line.trim(), "f").is_err(), "{line}");
    }
    let (c, problems) = ConfigFile::lenient("hook-timeout-ms = 9999999", &wanted);
    assert_eq!(c.hook_timeout_ms, DEFAULT_HOOK_TIMEOUT_MS);
    assert_eq!(problems.len(), 1);
}

#[test]
fn lenient_on_an_unparsable_file_gives_defaults_and_one_line() {
    let (c, problems) = ConfigFile::lenient("a = 1\nstate-dir = [\n", &["state-dir"]);
    assert_eq!(c, ConfigFile::default());
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].contains('\n'), "{:?}", problems[0]);
    assert!(problems[0].starts_with("line "), "{:?}", problems[0]);
}

#[test]
fn load_reads_explicit_then_env_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "workers = 3\n").unwrap();
    let env = Environment {
        config_file: Some(path.clone().into()),
        ..root()
    };
    let (c, origin) = load(None, &env).unwrap();
    assert_eq!((c.workers, origin), (3, path.display().to_string()));
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "workers = 5\n").unwrap();
    assert_eq!(load(Some(&other), &env).unwrap().0.workers, 5);
    let missing = Environment {
        config_file: Some(dir.path().join("nope.toml").into()),
        ..root()
    };
    let e = load(None, &missing).unwrap_err().to_string();
    assert!(e.contains("cannot read configuration file"), "{e}");
    // A directory (or a FIFO) is refused, not read or waited on.
    let e = load(Some(dir.path()), &root()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = load(Some(&fifo), &root()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn metrics_address_must_be_loopback_unless_allowed() {
    let at = |text: &str| ConfigFile::parse(text, "f").map(|c| c.metrics_address());
    assert_eq!(at("").unwrap(), Ok(None));
    assert_eq!(
        at("metrics-address = \"127.0.0.1:9184\"").unwrap(),
        Ok(Some("127.0.0.1:9184".parse().unwrap()))
    );
    assert!(
        at("metrics-address = \"[::1]:0\"")
            .unwrap()
            .unwrap()
            .is_some()
    );
    let e = at("metrics-address = \"0.0.0.0:9184\"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("must be a loopback address") && e.contains("metrics-allow-remote"),
        "{e}"
    );
    let e = at("metrics-address = \"localhost:9184\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be an IP address and port"), "{e}");
}

#[test]
fn ingest_sources_and_nix_db_paths() {
    let c = ConfigFile::default();
    assert_eq!(
        (c.ingest.as_slice(), c.nix_db_paths),
        ([Ingest::Hook].as_slice(), NixDbPaths::Built)
    );
    let c = ConfigFile::parse(
        "ingest = [\"hook\", \"nix-db\"]\nnix-db-paths = \"all\"\n",
        "f",
    )
    .unwrap();
    assert!(c.ingests(Ingest::Hook) && c.ingests(Ingest::NixDb));
    assert_eq!(c.nix_db_paths, NixDbPaths::All);
    for (text, key) in [
        ("ingest = []\n", "ingest"),
        ("ingest = [\"hook\", \"hook\"]\n", "ingest"),
    ] {
        let e = ConfigFile::parse(text, "f").unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("nix-db"), "{text}: {e}");
    }
    let e = ConfigFile::parse("ingest = [\"inotify\"]\n", "f")
        .unwrap_err()
        .to_string();
    assert!(e.contains("inotify") && e.contains("nix-db"), "{e}");
    let e = ConfigFile::parse("nix-db-paths = \"some\"\n", "f")
        .unwrap_err()
        .to_string();
    assert!(e.contains("built") && e.contains("all"), "{e}");
    assert!(keys().contains(&"ingest") && keys().contains(&"nix-db-paths"));
}
