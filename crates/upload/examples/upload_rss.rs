//! Measures the peak memory (VmHWM) of uploading one large NAR, to check
//! that S3 uploads stream with bounded memory. A measurement, not a test:
//!
//! ```text
//! cargo run --release -p nix-outbox-upload --example upload_rss -- s3 100 [URL-PARAMS]
//! cargo run --release -p nix-outbox-upload --example upload_rss -- file 100
//! ```
//!
//! builds a store path of that many MiB of random data (so its compressed
//! NAR is as large), uploads it to a private s3s-fs (`scripts/s3s.sh`) or a
//! temporary file:// cache, prints the process's peak RSS, and deletes the
//! path again. Needs root and Nix, like the tests.

use nix_outbox_core::StoreDir;
use nix_outbox_store::{StoreAddress, StorePool};
use nix_outbox_testkit as tk;
use nix_outbox_upload::{TargetConfig, open_target, upload_closure};

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map_or("s3", String::as_str).to_owned();
    let mib: u64 = args.get(2).map_or(100, |s| s.parse().unwrap());
    let params = args.get(3).cloned().unwrap_or_default();

    let drv = tk::sh_derivation(
        &format!("rss-{}", tk::nonce()),
        &["out"],
        &format!("head -c {} /dev/urandom > $out", mib * 1024 * 1024),
    );
    let path = tk::nix_build(&drv).remove(0);
    let before = peak_rss_kib();

    let s3 = (kind == "s3").then(|| tk::s3::S3Server::start("nix-cache"));
    let dir = tempfile::tempdir().unwrap();
    let url = match &s3 {
        Some(s3) => {
            // SAFETY: no other thread exists yet.
            unsafe {
                std::env::set_var("AWS_ACCESS_KEY_ID", &s3.access_key);
                std::env::set_var("AWS_SECRET_ACCESS_KEY", &s3.secret_key);
            }
            format!(
                "s3://nix-cache?endpoint={}&scheme=http&{params}",
                s3.endpoint()
            )
        }
        None => format!("file://{}?{params}", dir.path().display()),
    };
    let daemon = tk::PrivateDaemon::start("");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let report = rt.block_on(async {
        let sd = StoreDir::default();
        let pool = StorePool::new(StoreAddress::Socket(daemon.socket.clone()), sd.clone(), 2);
        let cfg = TargetConfig::parse(&url).unwrap();
        let target = open_target(&cfg).unwrap();
        let key = nix_outbox_core::keys::SecretKey::generate("rss-1").unwrap();
        let root = sd.parse_path(&path).unwrap();
        upload_closure(&pool, target.as_ref(), &cfg, &[key], &root)
            .await
            .unwrap()
    });
    println!(
        "{kind} {url}: {} MiB NAR -> {} MiB in {:.1?}; peak RSS {} MiB (before upload {} MiB)",
        report.nar_bytes >> 20,
        report.file_bytes >> 20,
        started.elapsed(),
        peak_rss_kib() / 1024,
        before / 1024
    );
    drop(daemon);
    tk::run(
        tk::nix_store()
            .env_remove("NIX_REMOTE")
            .args(["--delete", &path]),
    );
}
