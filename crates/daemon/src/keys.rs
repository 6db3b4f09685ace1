//! Signing keys: the configured `secret-key-files`, or with none
//! configured the embedded default key `<state-dir>/keys/<host>-outbox-1`,
//! generated on first start. Secret key files that others can read are
//! used, with a loud warning.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix_outbox_core::keys::{self, SecretKey};

use crate::Config;

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Loads the configured keys, or with none configured, the embedded
/// default key `<state-dir>/keys/<host>-outbox-1`, generated on first use.
pub fn load_or_generate(cfg: &Config) -> anyhow::Result<(Vec<SecretKey>, bool)> {
    let mut generated = false;
    let files = if cfg.secret_key_files.is_empty() {
        let (name, sk, pk) = default_key_files(cfg);
        if !sk.exists() {
            create_private_dir(&cfg.keys_dir())?;
            let key = SecretKey::generate(&name)?;
            keys::write_key_files(&key, &sk, &pk, false)?;
            eprintln!(
                "nix-outbox: generated signing key {} (public key in {})",
                sk.display(),
                pk.display()
            );
            generated = true;
        }
        vec![sk]
    } else {
        cfg.secret_key_files.clone()
    };
    Ok((read(&files)?, generated))
}

/// The embedded default key used when `secret-key-files` is empty: its
/// name and its secret and public key files under `<state-dir>/keys/`.
/// Shared with `copy`, which uses the key but never generates it.
pub fn default_key_files(cfg: &Config) -> (String, PathBuf, PathBuf) {
    let name = format!("{}-outbox-1", hostname());
    let (sk, pk) = (
        cfg.keys_dir().join(format!("{name}.sk")),
        cfg.keys_dir().join(format!("{name}.pk")),
    );
    (name, sk, pk)
}

/// Reads secret key files, warning loudly about group/world-readable ones.
pub fn read(files: &[PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    let mut out = Vec::new();
    for f in files {
        let loaded = keys::read_secret_key_file(f)?;
        if let Some(w) = &loaded.permission_warning {
            // Loud on purpose: both in the log and on the terminal.
            tracing::warn!("{w}");
            eprintln!("nix-outbox: WARNING: {w}");
        }
        out.push(loaded.key);
    }
    Ok(out)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && SecretKey::generate(h).is_ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

pub fn nix_conf_advice(cfg: &Config, keys: &[SecretKey]) -> String {
    let hook = std::env::current_exe()
        .map(|e| e.with_file_name("nix-outbox-hook"))
        .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/nix-outbox-hook"));
    let pks: Vec<String> = keys.iter().map(|k| k.public_key().to_string()).collect();
    // What Nix reads from is the cache without our upload options.
    let caches: Vec<String> = cfg.targets.iter().map(|t| t.location.to_string()).collect();
    format!(
        "nix-outbox: add to /etc/nix/nix.conf on this machine, then restart nix-daemon:\n    post-build-hook = {}\n\
         nix-outbox: and on every machine that should use the cache:\n    extra-substituters = {}\n    extra-trusted-public-keys = {}",
        hook.display(),
        caches.join(" "),
        pks.join(" ")
    )
}
