//! Finding the store the way Nix's own tools do: `NIX_REMOTE`
//! (`daemon`, `unix://PATH`, `local`, unset/`auto`),
//! `NIX_DAEMON_SOCKET_PATH`, `NIX_STATE_DIR`, the default socket — and, with
//! no daemon answering, `nix-daemon --stdio` on the local store when we are
//! root (single-user installs), speaking the same protocol over its pipes.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::StoreError;
use crate::protocol::Connection;

pub const DEFAULT_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAddress {
    /// A daemon socket, and nothing else (`NIX_REMOTE=daemon` or `unix://`).
    Socket(PathBuf),
    /// `nix-daemon --stdio`, with this `NIX_REMOTE` for it (`None`: unset).
    Stdio { nix_remote: Option<String> },
    /// The daemon's socket if it answers, else `nix-daemon --stdio` when root.
    Auto { socket: PathBuf },
}

impl StoreAddress {
    /// From the process environment.
    pub fn from_env() -> Result<Self, StoreError> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, StoreError> {
        let socket = || {
            var("NIX_DAEMON_SOCKET_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| match var("NIX_STATE_DIR") {
                    Some(state) => PathBuf::from(state).join("daemon-socket/socket"),
                    None => PathBuf::from(DEFAULT_SOCKET),
                })
        };
        let Some(remote) = var("NIX_REMOTE") else {
            return Ok(Self::Auto { socket: socket() });
        };
        // Store URIs may carry `?params`; the socket path is before them.
        let (base, _params) = remote.split_once('?').unwrap_or((&remote, ""));
        match base {
            "auto" => Ok(Self::Auto { socket: socket() }),
            "daemon" => Ok(Self::Socket(socket())),
            s if s.starts_with("unix://") => Ok(Self::Socket(PathBuf::from(&s["unix://".len()..]))),
            s if s == "local" || s.starts_with('/') || s.starts_with("local://") => {
                Ok(Self::Stdio {
                    nix_remote: Some(remote.clone()),
                })
            }
            _ => Err(StoreError::UnsupportedRemote(remote)),
        }
    }

    /// Opens and handshakes one connection.
    pub async fn connect(&self) -> Result<Connection, StoreError> {
        match self {
            Self::Socket(socket) => connect_socket(socket).await,
            Self::Stdio { nix_remote } => {
                spawn_stdio(nix_remote.as_deref(), Path::new("(none)")).await
            }
            Self::Auto { socket } => match connect_socket(socket).await {
                Err(StoreError::Connect { socket, source }) => {
                    // Nix's `auto` store: a root process with no daemon uses
                    // the local store directly — here, through a private
                    // `nix-daemon --stdio` child.
                    if is_root() {
                        tracing::debug!(
                            "no daemon at {}: {source}; using nix-daemon --stdio",
                            socket.display()
                        );
                        spawn_stdio(None, &socket).await
                    } else {
                        Err(StoreError::Connect { socket, source })
                    }
                }
                other => other,
            },
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn connect_socket(socket: &Path) -> Result<Connection, StoreError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| StoreError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let (r, w) = stream.into_split();
    Ok(Connection::handshake(Box::new(r), Box::new(w), None).await?)
}

async fn spawn_stdio(nix_remote: Option<&str>, socket: &Path) -> Result<Connection, StoreError> {
    let mut cmd = tokio::process::Command::new("nix-daemon");
    cmd.arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // A daemon whose own NIX_REMOTE points at a daemon would just proxy
    // (or, pointing at itself, fork without end): give it the local store.
    match nix_remote {
        Some(r) => cmd.env("NIX_REMOTE", r),
        None => cmd.env_remove("NIX_REMOTE"),
    };
    let mut child = cmd.spawn().map_err(|source| StoreError::Spawn {
        socket: socket.to_owned(),
        source,
    })?;
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    Ok(Connection::handshake(Box::new(stdout), Box::new(stdin), Some(child)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn addr(vars: &[(&str, &str)]) -> Result<StoreAddress, StoreError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        StoreAddress::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn resolves_like_nix() {
        assert_eq!(
            addr(&[]).unwrap(),
            StoreAddress::Auto {
                socket: DEFAULT_SOCKET.into()
            }
        );
        assert_eq!(
            addr(&[("NIX_REMOTE", "daemon")]).unwrap(),
            StoreAddress::Socket(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            addr(&[
                ("NIX_REMOTE", "daemon"),
                ("NIX_DAEMON_SOCKET_PATH", "/tmp/s")
            ])
            .unwrap(),
            StoreAddress::Socket("/tmp/s".into())
        );
        assert_eq!(
            addr(&[("NIX_STATE_DIR", "/st")]).unwrap(),
            StoreAddress::Auto {
                socket: "/st/daemon-socket/socket".into()
            }
        );
        assert_eq!(
            addr(&[("NIX_REMOTE", "unix:///run/x.sock?foo=1")]).unwrap(),
            StoreAddress::Socket("/run/x.sock".into())
        );
        assert_eq!(
            addr(&[("NIX_REMOTE", "local?root=/tmp/r")]).unwrap(),
            StoreAddress::Stdio {
                nix_remote: Some("local?root=/tmp/r".into())
            }
        );
        let e = addr(&[("NIX_REMOTE", "ssh://host")]).unwrap_err();
        assert!(
            e.to_string().contains("ssh://host") && e.to_string().contains("unix://"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn absent_daemon_names_the_socket_and_what_to_set() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("no-such.sock");
        let e = StoreAddress::Socket(sock.clone())
            .connect()
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&*sock.to_string_lossy()) && msg.contains("NIX_DAEMON_SOCKET_PATH"),
            "{msg}"
        );
    }
}
