//! A private S3 server for tests: s3s-fs on 127.0.0.1, on a port of its
//! own, with random keys and a temporary data directory; killed by PID on
//! drop.
//!
//! s3s-fs checks SigV4 signatures and S3's 5 MiB minimum part size, and
//! stores each object as a plain file, so `DATA_DIR/<bucket>` is itself a
//! file:// binary cache Nix can substitute from. It is built once by
//! `scripts/s3s.sh` into a tools directory; a missing binary fails the test
//! (with that instruction) rather than skipping it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, random_hex, wait_for_port};

mod uploads;

/// Where `scripts/s3s.sh` installs tools unless `NIX_OUTBOX_TOOLS` says
/// otherwise; keep the two in step.
pub const DEFAULT_TOOLS_DIR: &str = "/var/cache/nix-outbox/tools";

pub struct S3Server {
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    dir: tempfile::TempDir,
    child: Child,
}

/// The s3s-fs binary `scripts/s3s.sh` installs; panics, saying how to get
/// it, when it is not there.
pub fn s3s_fs_binary() -> PathBuf {
    let tools = std::env::var_os("NIX_OUTBOX_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR));
    let bin = tools.join("bin/s3s-fs");
    assert!(
        bin.is_file(),
        "{} is missing: the S3 tests need the s3s-fs server. Run scripts/s3s.sh \
         (it builds s3s-fs 0.14.1 into {} once, a few minutes).",
        bin.display(),
        tools.display()
    );
    bin
}

impl S3Server {
    /// Starts s3s-fs with one bucket, `bucket`.
    pub fn start(bucket: &str) -> Self {
        let bin = s3s_fs_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join(bucket)).unwrap();
        let (access_key, secret_key) = (format!("AK{}", random_hex(8)), random_hex(20));
        // A free port can be taken by someone else before the server binds
        // it; then the server exits and we try another.
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("s3s-fs.log")).unwrap();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&data)
                // Debug logging records each multipart step, which tests
                // read back (`log`).
                .env("RUST_LOG", "s3s_fs=debug")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
            if wait_for_port(port, &mut child, Duration::from_secs(30)) {
                return Self {
                    port,
                    access_key,
                    secret_key,
                    bucket: bucket.to_owned(),
                    dir,
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start; its log: {}",
            std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default()
        );
    }

    /// `host:port`, as an `endpoint=` value.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's data directory: one subdirectory per bucket, plus its
    /// own bookkeeping files (multipart uploads in progress, metadata).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The bucket's directory: a file:// binary cache once uploaded to.
    pub fn bucket_dir(&self) -> PathBuf {
        self.data_dir().join(&self.bucket)
    }

    /// Files of multipart uploads that were neither completed nor aborted.
    pub fn pending_uploads(&self) -> Vec<String> {
        names_in(&self.data_dir())
            .into_iter()
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }

    /// ListMultipartUploads, which s3s-fs lacks, made from its data
    /// directory: for [`FaultProxy::fill_in`](crate::fault_proxy::FaultProxy::fill_in)
    /// in front of this server (see `s3/uploads.rs`).
    pub fn uploads_listing(
        &self,
    ) -> impl Fn(&str, &str, &str) -> Option<String> + Send + Sync + 'static {
        let dir = self.data_dir();
        move |method, path_and_query, body| uploads::answer(&dir, method, path_and_query, body)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
