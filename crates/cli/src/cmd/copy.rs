//! `nix-outbox copy [--config FILE] [--to URL]... PATH...`: uploads the
//! closure of each path now, in the foreground, with the daemon's pipeline
//! (references first, narinfo last, skipping what the cache has) but
//! without its queue. For backfilling a cache by hand, and for benchmarks.
//! The configured filters and upstream caches apply, as in the daemon,
//! unless `--no-filters`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use nix_outbox_core::StorePath;
use nix_outbox_core::keys::SecretKey;
use nix_outbox_daemon::Config;
use nix_outbox_daemon::filters::upstream_among_targets;
use nix_outbox_daemon::{Filters, Selection, keys, upstream};
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_upload::{
    Target, TargetConfig, TargetLocation, open_target, upload_closure_selected,
};

/// Store connections: closures are queried level by level over the pool,
/// and one more serves the NAR stream.
const STORE_CONNECTIONS: usize = 4;

#[derive(clap::Args)]
pub struct Args {
    /// Configuration file (default: $NIX_OUTBOX_CONFIG, then /etc/nix-outbox/config.toml, then built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Upload to this cache, in `nix copy --to` syntax, instead of the
    /// configured targets. Repeat for several caches.
    #[arg(long = "to", value_name = "URL")]
    to: Vec<String>,
    /// Upload every path of the closures: ignore include, exclude,
    /// upstream-keys and upstream-caches.
    #[arg(long)]
    no_filters: bool,
    /// Store paths whose closures to upload, e.g. ./result or /nix/store/…-hello-2.12.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    // Everything that can be wrong with the command line is reported
    // before anything is uploaded.
    let targets = if args.to.is_empty() {
        cfg.targets.clone()
    } else {
        args.to
            .iter()
            .map(|u| TargetConfig::parse(u).with_context(|| format!("--to {u:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    // A --to cache that is also an upstream would have every path count
    // as served upstream: nothing would be uploaded, silently.
    if !args.no_filters
        && let Some(u) = upstream_among_targets(&cfg.upstream_caches, &targets)
    {
        let to = args
            .to
            .iter()
            .zip(&targets)
            .find(|(_, t)| t.id() == u.id())
            .map_or_else(|| u.to_string(), |(spelled, _)| spelled.clone());
        bail!(
            "--to {to:?} is also listed in upstream-caches (as {u}, in {}): every path would \
             count as served upstream and nothing would be uploaded; copy to another cache, \
             remove it from upstream-caches, or pass --no-filters to ignore filters and \
             upstream caches",
            cfg.source
        );
    }
    let paths = store_paths(&cfg, &args.paths)?;
    let keys = signing_keys(&cfg)?;
    let opened = targets
        .iter()
        .map(|t| Ok((t, open_target(t).with_context(|| format!("target {t}"))?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The daemon's rules, so a backfill does not copy what upstream serves;
    // asked directly (no queue, so no known-present cache upstream).
    let selection = if args.no_filters {
        Selection {
            store_dir: cfg.store_dir.clone(),
            filters: Filters::default(),
            upstreams: Vec::new(),
        }
    } else {
        Selection {
            store_dir: cfg.store_dir.clone(),
            filters: cfg.filters.clone(),
            upstreams: upstream::open_configured(&cfg)?,
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(copy_all(&cfg, &opened, &keys, &paths, &selection))
}

/// `./result` symlinks are what users have at hand: resolve them, but only
/// accept what lands directly in the store (like `push`).
fn store_paths(cfg: &Config, args: &[PathBuf]) -> anyhow::Result<Vec<StorePath>> {
    let sd = &cfg.store_dir;
    let mut paths = Vec::new();
    let mut bad = Vec::new();
    for p in args {
        let resolved = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        match sd.parse_os_path(&resolved) {
            Ok(sp) if !paths.contains(&sp) => paths.push(sp),
            Ok(_) => {}
            Err(e) => bad.push(format!("  {}: {e}", p.display())),
        }
    }
    if !bad.is_empty() {
        bail!("not store paths (nothing was copied):\n{}", bad.join("\n"));
    }
    Ok(paths)
}

/// The daemon's keys: the configured files, or the embedded default key.
/// Unlike the daemon, `copy` never generates a key: a key made here would
/// sign paths with a key no client trusts yet, and nobody would be told.
fn signing_keys(cfg: &Config) -> anyhow::Result<Vec<SecretKey>> {
    if !cfg.secret_key_files.is_empty() {
        return keys::read(&cfg.secret_key_files);
    }
    let (name, sk, pk) = keys::default_key_files(cfg);
    if !sk.exists() {
        bail!(
            "no signing key: the configuration ({}) lists no secret-key-files and the default key {} does not exist yet.\n\
             Either start `nix-outbox daemon` once (it generates that key and prints the nix.conf lines to trust it), or create it:\n    \
             mkdir -p -m 700 {} && nix-outbox keygen {name} --secret-key-file {} --public-key-file {}\n\
             or list an existing key (e.g. one from `nix-store --generate-binary-cache-key`) in secret-key-files.",
            cfg.source,
            sk.display(),
            cfg.keys_dir().display(),
            sk.display(),
            pk.display()
        );
    }
    keys::read(&[sk])
}

async fn copy_all(
    cfg: &Config,
    targets: &[(&TargetConfig, Arc<dyn Target>)],
    keys: &[SecretKey],
    paths: &[StorePath],
    selection: &Selection,
) -> anyhow::Result<()> {
    let sd = &cfg.store_dir;
    let pool = StorePool::new(StoreAddress::from_env()?, sd.clone(), STORE_CONNECTIONS);
    for (t, _) in targets {
        // Like `nix copy --to file://DIR` (and the daemon), a missing
        // cache directory is created.
        if let TargetLocation::File { root } = &t.location {
            std::fs::create_dir_all(root)
                .with_context(|| format!("cannot create the cache directory {}", root.display()))?;
        }
    }
    // One failure does not stop the others: a backfill should get as far
    // as it can, then say everything that went wrong.
    let mut failures = Vec::new();
    for path in paths {
        let shown = sd.display(path);
        for (t, target) in targets {
            let started = Instant::now();
            let res =
                upload_closure_selected(&pool, target.as_ref(), t, keys, path, selection).await;
            let secs = started.elapsed().as_secs_f64();
            match res {
                Ok(r) if r.missing.contains(path) => failures.push(format!(
                    "{shown}: not valid in the store (never built, or garbage-collected)"
                )),
                Ok(r) if !r.blocked.is_empty() => {
                    let missing: Vec<String> = r.missing.iter().map(|p| sd.display(p)).collect();
                    failures.push(format!(
                        "{shown} → {}: {} path(s) not uploaded because these references are not valid in the store: {}",
                        target.id(),
                        r.blocked.len(),
                        missing.join(" ")
                    ));
                }
                Ok(r) if r.skipped.iter().any(|(p, _)| p == path) => {
                    // Named by the user and left out: say so unmistakably,
                    // never as an upload (nothing of its closure was sent).
                    let skip = r
                        .skipped
                        .iter()
                        .find(|(p, _)| p == path)
                        .map(|(_, s)| s.to_string())
                        .unwrap_or_default();
                    println!(
                        "NOT uploaded: {shown}: {skip} (to {}; use --no-filters to upload it anyway)",
                        target.id()
                    );
                }
                Ok(r) => println!(
                    "{shown} → {}: uploaded {}, already present {}, {} NAR bytes, {} compressed, {secs:.2} s{}",
                    target.id(),
                    r.uploaded,
                    r.already_present,
                    r.nar_bytes,
                    r.file_bytes,
                    skipped_summary(&r.skipped)
                ),
                Err(e) => failures.push(format!("{shown} → {}: {e}", target.id())),
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} copies failed:\n  {}",
            failures.len(),
            paths.len() * targets.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// `, skipped 3 (2 signed by upstream key cache.nixos.org-1, 1 excluded by
/// pattern "*.drv")`, or nothing when nothing was skipped.
fn skipped_summary(skipped: &[(StorePath, nix_outbox_upload::Skip)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let mut by: std::collections::BTreeMap<&nix_outbox_upload::Skip, usize> = Default::default();
    for (_, s) in skipped {
        *by.entry(s).or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!(", skipped {} ({})", skipped.len(), parts.join(", "))
}
