//! Errors of the store layer. Each says what failed and, where the user can
//! act, what to do.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error(
        "the Nix daemon closed the connection while we were reading {what} (did it crash or restart?)"
    )]
    Disconnected { what: &'static str },
    #[error("I/O error talking to the Nix daemon while reading {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("malformed reply from the Nix daemon in {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("the Nix daemon speaks protocol {major}.{minor}; nix-outbox needs 1.10 or newer")]
    UnsupportedVersion { major: u64, minor: u64 },
    #[error("the Nix daemon reported an error: {0}")]
    Remote(String),
    #[error("the Nix daemon asked for {0}, which nix-outbox never provides; refusing")]
    Unexpected(&'static str),
}

impl ProtocolError {
    pub(crate) fn io(what: &'static str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Self::Disconnected { what }
        } else {
            Self::Io { what, source: e }
        }
    }

    /// Whether the connection can still be used after this error: only a
    /// clean error reply from the daemon leaves the stream in sync.
    pub fn connection_usable(&self) -> bool {
        matches!(self, Self::Remote(_))
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(
        "cannot connect to the Nix daemon at {socket}: {source}. Is nix-daemon running? Set NIX_REMOTE=unix:///path/to/socket or NIX_DAEMON_SOCKET_PATH to use another socket, or run as root to use `nix-daemon --stdio` on the local store"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot start `nix-daemon --stdio` (needed because no daemon socket answered at {socket}): {source}. Install Nix or put nix-daemon on PATH"
    )]
    Spawn {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "NIX_REMOTE={0:?} is not supported: use `daemon`, `unix:///path/to/socket`, `local` or leave it unset"
    )]
    UnsupportedRemote(String),
    #[error("the Nix daemon returned an invalid store path {path:?} in {what}: {source}")]
    BadPath {
        what: &'static str,
        path: String,
        source: nix_outbox_core::store_path::StorePathError,
    },
    #[error("the Nix daemon returned an invalid hash {hash:?} for {path}: {source}")]
    BadHash {
        path: String,
        hash: String,
        source: nix_outbox_core::hash::HashError,
    },
    #[error("NAR of {path} from the Nix daemon is invalid: {source}")]
    Nar {
        path: String,
        source: nix_outbox_core::nar::ParseError,
    },
    #[error("cannot read derivation {path}: {detail}")]
    Derivation { path: String, detail: String },
    #[error("{path} is not valid in the Nix store (never built, or garbage-collected)")]
    NotValid { path: String },
    #[error("internal error: {0}")]
    Internal(String),
}
