//! `nix-outbox check-config [--config FILE]`: validates and explains the
//! effective configuration, including the key files and where the hook and
//! daemon will meet.

use std::path::PathBuf;

use anyhow::bail;
use nix_outbox::config::Config;
use nix_outbox_core::keys;

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
    for t in &cfg.targets {
        println!(
            "target          = {t}{}",
            if cfg.default_target {
                "   (embedded default)"
            } else {
                ""
            }
        );
    }
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
