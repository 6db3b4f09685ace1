//! A private nginx accepting WebDAV-style `PUT`s, for tests of http://
//! targets: started through `scripts/nginx-webdav.sh run` (which installs
//! Debian's nginx if missing) on 127.0.0.1 and a port of its own, serving
//! a temporary directory; killed by PID on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, wait_for_port};

pub struct WebDavServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nginx-webdav.sh")
}

impl WebDavServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // scripts/test.sh installs nginx first; run alone, the script may
        // install it on the first run, which takes a while. A taken port
        // makes nginx exit, and we try another.
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
            let mut child = Command::new("bash")
                .arg(script())
                .arg("run")
                .arg(dir.path())
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("run scripts/nginx-webdav.sh");
            if wait_for_port(port, &mut child, Duration::from_secs(120)) {
                return Self { port, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start: {}", self_log(&dir));
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The directory served at `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn log(&self) -> String {
        self_log(&self.dir)
    }
}

fn self_log(dir: &tempfile::TempDir) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    format!("{}{}", read("run.log"), read("error.log"))
}

impl Drop for WebDavServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
