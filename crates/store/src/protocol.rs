//! One connection speaking the nix-daemon worker protocol: the handshake
//! and the log-message loop every operation ends with.
//!
//! We advertise protocol 1.38 and use the minimum of that and the daemon's:
//! 1.34 (Nix 2.8–2.14), 1.35 (2.15–2.19, Lix), 1.37 (2.20–2.23), 1.38 for
//! Nix ≥ 2.24. 1.38 adds a feature exchange: each side names the features
//! it has and both use the ones they share. Up to 2.34 daemons name none;
//! 2.35 names `realisation-with-path-not-hash`, without which it can no
//! longer answer QueryRealisation at all (it fails the request, and the
//! stream is out of step after that), so we ask for it
//! (docs/design.md, "The daemon protocol").

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};

use crate::error::ProtocolError;
use crate::wire::{self, Request};

pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// 1.38, as `major << 8 | minor`.
pub const CLIENT_VERSION: u64 = (1 << 8) | 38;
/// Realisations keyed by the derivation's store path and output name
/// (Nix 2.35's "build traces"), not by its hash modulo.
pub const FEATURE_REALISATION_WITH_PATH: &str = "realisation-with-path-not-hash";
/// The features we ask for (protocol ≥ 1.38).
pub const CLIENT_FEATURES: &[&str] = &[FEATURE_REALISATION_WITH_PATH];

pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub const STDERR_READ: u64 = 0x6461_7461;
pub const STDERR_WRITE: u64 = 0x6461_7416;
pub const STDERR_LAST: u64 = 0x616c_7473;
pub const STDERR_ERROR: u64 = 0x6378_7470;
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
pub const STDERR_RESULT: u64 = 0x5253_4c54;

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A handshaken connection. Operations live in `ops.rs`.
pub struct Connection {
    /// `None` only while a NAR is being streamed on a blocking thread.
    pub(crate) reader: Option<BufReader<BoxRead>>,
    pub(crate) writer: BoxWrite,
    /// Negotiated minor version.
    pub(crate) minor: u64,
    pub(crate) daemon_nix_version: Option<String>,
    pub(crate) trusted: Option<bool>,
    /// The protocol features both sides named (1.38 and later).
    pub(crate) features: Vec<String>,
    /// True from sending a request until its reply is fully read, and after
    /// any error that left the stream out of sync. A connection dropped in
    /// that state (an error, or a cancelled future mid-request) is closed by
    /// the pool instead of reused.
    pub(crate) broken: bool,
    /// Keeps a `nix-daemon --stdio` child alive (and killed on drop).
    pub(crate) _child: Option<tokio::process::Child>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("protocol", &format_args!("1.{}", self.minor))
            .field("daemon_nix_version", &self.daemon_nix_version)
            .field("trusted", &self.trusted)
            .field("features", &self.features)
            .finish()
    }
}

impl Connection {
    /// Performs the client side of the handshake on an open stream.
    pub async fn handshake(
        reader: BoxRead,
        writer: BoxWrite,
        child: Option<tokio::process::Child>,
    ) -> Result<Self, ProtocolError> {
        let mut conn = Self {
            reader: Some(BufReader::new(reader)),
            writer,
            minor: 0,
            daemon_nix_version: None,
            trusted: None,
            features: Vec::new(),
            broken: false,
            _child: child,
        };
        conn.send(Request(WORKER_MAGIC_1.to_le_bytes().to_vec()))
            .await?;
        let r = conn.reader.as_mut().expect("reader present");
        let magic = wire::read_u64(r, "handshake magic").await?;
        if magic != WORKER_MAGIC_2 {
            return Err(ProtocolError::Malformed {
                what: "handshake magic",
                detail: format!(
                    "got {magic:#x}, expected {WORKER_MAGIC_2:#x}; is this really a nix-daemon socket?"
                ),
            });
        }
        let daemon = wire::read_u64(r, "daemon protocol version").await?;
        let (major, minor) = (daemon >> 8, daemon & 0xff);
        if major != 1 || minor < 10 {
            return Err(ProtocolError::UnsupportedVersion { major, minor });
        }
        conn.minor = minor.min(CLIENT_VERSION & 0xff);
        let mut req = Request::default();
        req.u64(CLIENT_VERSION);
        // The daemon reads our features right after our version, before
        // the rest of the handshake, and only then sends its own.
        if conn.minor >= 38 {
            req.string_list(CLIENT_FEATURES);
        }
        if conn.minor >= 14 {
            req.u64(0); // no CPU affinity
        }
        if conn.minor >= 11 {
            req.u64(0); // reserveSpace: false
        }
        conn.send(req).await?;
        let r = conn.reader.as_mut().expect("reader present");
        if conn.minor >= 38 {
            let theirs = wire::read_string_list(r, "daemon protocol features").await?;
            conn.features = CLIENT_FEATURES
                .iter()
                .filter(|f| theirs.iter().any(|t| t == *f))
                .map(|f| (*f).to_owned())
                .collect();
        }
        if conn.minor >= 33 {
            conn.daemon_nix_version = Some(wire::read_string(r, "daemon Nix version").await?);
        }
        if conn.minor >= 35 {
            conn.trusted = match wire::read_u64(r, "trust flag").await? {
                1 => Some(true),
                2 => Some(false),
                _ => None,
            };
        }
        conn.process_stderr().await?;
        conn.broken = false;
        Ok(conn)
    }

    pub fn protocol_minor(&self) -> u64 {
        self.minor
    }

    /// Whether both sides named protocol feature `name`.
    pub fn has_feature(&self, name: &str) -> bool {
        self.features.iter().any(|f| f == name)
    }

    pub fn daemon_nix_version(&self) -> Option<&str> {
        self.daemon_nix_version.as_deref()
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub(crate) async fn send(&mut self, req: Request) -> Result<(), ProtocolError> {
        self.broken = true;
        let res = async {
            self.writer.write_all(&req.0).await?;
            self.writer.flush().await
        }
        .await;
        res.map_err(|e| {
            self.broken = true;
            match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    ProtocolError::Disconnected {
                        what: "the request (write failed)",
                    }
                }
                _ => ProtocolError::Io {
                    what: "the request",
                    source: e,
                },
            }
        })
    }

    pub(crate) fn reader(&mut self) -> &mut BufReader<BoxRead> {
        self.reader
            .as_mut()
            .expect("reader is only absent while a NAR streams")
    }

    /// Reads log messages until `LAST`. An `ERROR` becomes
    /// [`ProtocolError::Remote`] with its ANSI colour codes removed; the
    /// daemon asking us for data (`READ`) is refused, since no operation we
    /// send uploads anything.
    pub(crate) async fn process_stderr(&mut self) -> Result<(), ProtocolError> {
        let minor = self.minor;
        let res = read_stderr(self.reader(), minor).await;
        if let Err(e) = &res
            && e.connection_usable()
        {
            // A clean error reply ends the operation: the stream is in sync.
            self.broken = false;
        }
        res
    }
}

/// The log-message loop, separated from [`Connection`] so it can be fuzzed
/// and unit-tested on canned bytes.
pub async fn read_stderr<R: AsyncRead + Unpin>(r: &mut R, minor: u64) -> Result<(), ProtocolError> {
    loop {
        match wire::read_u64(r, "log message").await? {
            STDERR_LAST => return Ok(()),
            STDERR_NEXT => {
                let line = wire::read_bytes(r, "log line", wire::MAX_STRING_LEN).await?;
                tracing::debug!(target: "nix_daemon", "{}", strip_ansi(&String::from_utf8_lossy(&line)));
            }
            STDERR_ERROR => return Err(read_error(r, minor).await?),
            STDERR_START_ACTIVITY => {
                wire::read_u64(r, "activity id").await?;
                wire::read_u64(r, "activity level").await?;
                wire::read_u64(r, "activity type").await?;
                let text = wire::read_bytes(r, "activity text", wire::MAX_STRING_LEN).await?;
                read_fields(r).await?;
                wire::read_u64(r, "activity parent").await?;
                tracing::trace!(target: "nix_daemon", "{}", String::from_utf8_lossy(&text));
            }
            STDERR_STOP_ACTIVITY => {
                wire::read_u64(r, "activity id").await?;
            }
            STDERR_RESULT => {
                wire::read_u64(r, "result activity id").await?;
                wire::read_u64(r, "result type").await?;
                read_fields(r).await?;
            }
            STDERR_READ => return Err(ProtocolError::Unexpected("input data (STDERR_READ)")),
            STDERR_WRITE => {
                return Err(ProtocolError::Unexpected(
                    "to receive a data stream (STDERR_WRITE)",
                ));
            }
            other => {
                return Err(ProtocolError::Malformed {
                    what: "log message",
                    detail: format!("unknown message type {other:#x}"),
                });
            }
        }
    }
}

async fn read_fields<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), ProtocolError> {
    let n = wire::read_u64(r, "activity fields").await?;
    if n > 1024 {
        return Err(ProtocolError::Malformed {
            what: "activity fields",
            detail: format!("{n} fields"),
        });
    }
    for _ in 0..n {
        match wire::read_u64(r, "field type").await? {
            0 => {
                wire::read_u64(r, "integer field").await?;
            }
            1 => {
                wire::read_bytes(r, "string field", wire::MAX_STRING_LEN).await?;
            }
            t => {
                return Err(ProtocolError::Malformed {
                    what: "activity field",
                    detail: format!("unknown field type {t}"),
                });
            }
        }
    }
    Ok(())
}

async fn read_error<R: AsyncRead + Unpin>(
    r: &mut R,
    minor: u64,
) -> Result<ProtocolError, ProtocolError> {
    let text = |b: Vec<u8>| strip_ansi(&String::from_utf8_lossy(&b));
    if minor < 26 {
        let msg = wire::read_bytes(r, "error message", wire::MAX_STRING_LEN).await?;
        wire::read_u64(r, "error status").await?;
        return Ok(ProtocolError::Remote(text(msg)));
    }
    // type ("Error"), level, name (unused since 2.4), message, position
    // flag, then traces (each a position flag and a message).
    wire::read_bytes(r, "error type", 1024).await?;
    wire::read_u64(r, "error level").await?;
    wire::read_bytes(r, "error name", 1024).await?;
    let mut msg = text(wire::read_bytes(r, "error message", wire::MAX_STRING_LEN).await?);
    wire::read_u64(r, "error position flag").await?;
    let traces = wire::read_u64(r, "error trace count").await?;
    if traces > 1024 {
        return Err(ProtocolError::Malformed {
            what: "error traces",
            detail: format!("{traces} traces"),
        });
    }
    for _ in 0..traces {
        wire::read_u64(r, "trace position flag").await?;
        let t = text(wire::read_bytes(r, "error trace", wire::MAX_STRING_LEN).await?);
        msg.push_str("\n… ");
        msg.push_str(&t);
    }
    Ok(ProtocolError::Remote(msg))
}

/// Removes ANSI escape sequences (Nix colours its error messages).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
