//! `nix-outbox check-config [--config FILE]`: validates and explains the
//! effective configuration, including the key files and where the hook and
//! daemon will meet.

use std::path::PathBuf;

use anyhow::bail;
use nix_outbox_core::keys;
use nix_outbox_daemon::Config;
use nix_outbox_upload::TargetLocation;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    println!("configuration: {}", cfg.source);
    println!(
        "state-dir       = {:?}   (queue {}, spool {})",
        cfg.state_dir,
        cfg.queue_path().display(),
        cfg.spool_dir().display()
    );
    println!(
        "socket          = {:?}   ({})",
        cfg.socket,
        match &cfg.socket_group {
            None => "mode 0600: only its owner (root under nix-daemon) may enqueue".to_owned(),
            Some(g) => format!("mode 0660, group {g}"),
        }
    );
    println!("store-dir       = {:?}", cfg.store_dir.as_str());
    println!(
        "hook-timeout-ms = {}   (the hook spools after this long without an acknowledgement)",
        cfg.hook_timeout_ms
    );
    println!("workers         = {}", cfg.workers);
    println!(
        "upload-nice     = {}   (the upload threads' nice value; hooks are answered at the daemon's)",
        cfg.upload_nice
    );
    println!(
        "stop-timeout-secs = {}   (on stop, in-flight uploads get this long to finish; the rest stay queued)",
        cfg.stop_timeout.as_secs()
    );
    match cfg.metrics_address {
        Some(a) => println!("metrics-address = {a}   (GET /metrics, OpenMetrics text)"),
        None => println!("metrics-address = none   (no metrics served)"),
    }
    println!(
        "upload-build-logs = {}   (log/<drv> for hook requests, read from build-log-dir = {:?}; off by default: logs may hold secrets)",
        cfg.extras.upload_build_logs, cfg.extras.build_log_dir
    );
    println!(
        "upload-realisations = {}   (realisations/<id>.doi for content-addressed derivations' outputs)",
        cfg.extras.upload_realisations
    );
    println!(
        "sign-local-store = {}   (add our signatures to the local store's records of build outputs)",
        cfg.extras.sign_local_store
    );
    for t in &cfg.targets {
        println!(
            "target          = {t}{}",
            if cfg.default_target {
                "   (embedded default)"
            } else {
                ""
            }
        );
        let what = match t.location {
            TargetLocation::File { .. } => "NARs written at once",
            _ => "requests in flight, shared by every job",
        };
        let how = match t.max_connections {
            Some(_) => "max-connections in its URL",
            None => "the default; set max-connections=N in its URL",
        };
        println!("  max-connections {}: {what} ({how})", t.connections());
    }
    print_filters(&cfg);
    let mut problems = 0;
    if cfg.secret_key_files.is_empty() {
        println!(
            "secret-key-files: none configured; the daemon uses (and generates once) a key in {}",
            cfg.keys_dir().display()
        );
    }
    for f in &cfg.secret_key_files {
        match keys::read_secret_key_file(f) {
            Ok(k) => {
                println!(
                    "secret key      = {}   (public key {})",
                    f.display(),
                    k.key.public_key()
                );
                if let Some(w) = k.permission_warning {
                    println!("  WARNING: {w}");
                }
            }
            Err(e) => {
                println!("  ERROR: {e}");
                problems += 1;
            }
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s) in the configuration");
    }
    println!("configuration OK");
    Ok(())
}

/// What is left out of uploads, and what clients then need.
fn print_filters(cfg: &Config) {
    let f = &cfg.filters;
    let keys: Vec<String> = f.upstream_keys().iter().map(|k| k.to_string()).collect();
    println!(
        "upstream-keys   = {:?}   ({})",
        keys,
        if keys.is_empty() {
            "none: paths are uploaded whoever signed them"
        } else {
            "paths carrying a valid signature by one of these are not uploaded"
        }
    );
    for u in &cfg.upstream_caches {
        println!(
            "upstream-cache  = {u}   (asked read-only; paths it has are not uploaded; unreachable = not there)"
        );
    }
    if cfg.upstream_caches.is_empty() {
        println!("upstream-caches = []   (none asked)");
    }
    println!(
        "include         = {:?}   ({})",
        f.include(),
        if f.include().is_empty() {
            "empty: every name"
        } else {
            "only names matching one of these"
        }
    );
    println!("exclude         = {:?}", f.exclude());
    if !keys.is_empty() || !cfg.upstream_caches.is_empty() {
        println!(
            "  note: clients must also use the upstream cache(s) as substituters: uploaded paths may reference paths only upstream serves"
        );
    }
}
