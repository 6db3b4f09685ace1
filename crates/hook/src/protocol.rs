//! The hook ↔ daemon wire format, protocol version 1, shared by the hook
//! (which encodes requests) and the daemon (which decodes them) so the two
//! can never disagree about framing.
//!
//! One request per Unix-stream connection, ASCII text, `\n`-terminated lines:
//!
//! ```text
//! nix-outbox-hook 1
//! drv /nix/store/<hash>-<name>.drv      (optional, at most one, first)
//! out /nix/store/<hash>-<name>          (zero or more, at most 1024)
//! end
//! ```
//!
//! The whole request is at most 64 KiB and names at least one path. The
//! daemon answers with one line: `ok <request-id>` once the request is
//! durably committed, or `error <message>`.
//!
//! Decoding is pure (no I/O) so an async daemon can read a frame its own way
//! and call [`decode`]; [`read_request_frame`] is the blocking helper.

use std::io::{self, Read};

use nix_outbox_core::store_path::StorePathError;
use nix_outbox_core::{StoreDir, StorePath};
use thiserror::Error;

/// The first line of every request; the number is the protocol version.
pub const HEADER: &str = "nix-outbox-hook 1";
/// Largest request frame, header to `end\n` inclusive.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most `out` lines one request may carry.
pub const MAX_OUT_PATHS: usize = 1024;
/// Longest message in an `error` reply.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Longest reply line, `\n` included: `error ` plus the longest message.
pub const MAX_REPLY_BYTES: usize = "error ".len() + MAX_ERROR_TEXT + 1;

const HEADER_NAME: &str = "nix-outbox-hook ";
const END: &[u8] = b"\nend\n";

/// What the hook hands to the daemon: the outputs Nix just built, plus the
/// derivation so the daemon can resolve outputs itself when `OUT_PATHS` is
/// empty (Nix 2.8.0, nix#6446).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookRequest {
    pub drv_path: Option<StorePath>,
    pub out_paths: Vec<StorePath>,
}

/// Why a request frame was rejected. Line numbers count from 1.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("request is larger than the {MAX_REQUEST_BYTES}-byte limit ({0} bytes)")]
    TooLarge(usize),
    #[error("empty request (expected the header {HEADER:?})")]
    Empty,
    #[error("line {line}: byte 0x{byte:02x} is not printable ASCII")]
    BadByte { line: usize, byte: u8 },
    #[error("line {line}: not terminated by a newline (truncated request?)")]
    Unterminated { line: usize },
    #[error("line 1: expected the header {HEADER:?}, got {got:?}")]
    BadHeader { got: String },
    #[error("line 1: unsupported protocol version {version:?} (this side speaks 1)")]
    UnsupportedVersion { version: String },
    #[error("line {line}: unknown line kind {kind:?} (expected drv, out or end)")]
    UnknownKind { line: usize, kind: String },
    #[error("line {line}: {kind:?} needs exactly one argument, a store path")]
    MissingPath { line: usize, kind: &'static str },
    #[error("line {line}: \"end\" takes no argument")]
    EndWithArgument { line: usize },
    #[error("line {line}: {source}")]
    BadPath { line: usize, source: StorePathError },
    #[error("line {line}: path {got:?} is not written canonically (expected {expected:?})")]
    NonCanonicalPath {
        line: usize,
        got: String,
        expected: String,
    },
    #[error("line {line}: drv path {path:?} is not a derivation (must end in .drv)")]
    NotDerivation { line: usize, path: String },
    #[error("line {line}: a second drv line (at most one is allowed)")]
    DuplicateDrv { line: usize },
    #[error("line {line}: the drv line must come before all out lines")]
    DrvAfterOut { line: usize },
    #[error("line {line}: more than {MAX_OUT_PATHS} out lines")]
    TooManyOutPaths { line: usize },
    #[error("request ends after line {lines} without an \"end\" line (truncated?)")]
    MissingEnd { lines: usize },
    #[error("line {line}: data after the \"end\" line")]
    TrailingData { line: usize },
    #[error("line {line}: request names no store path (neither drv nor out lines)")]
    NoPaths { line: usize },
}

impl HookRequest {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.drv_path.is_none() && self.out_paths.is_empty()
    }

    /// Encodes the request. The caller keeps it within the limits
    /// ([`fits`](Self::fits)); [`crate::input`] does.
    pub fn encode(&self, sd: &StoreDir) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len(sd));
        out.extend_from_slice(HEADER.as_bytes());
        out.push(b'\n');
        for (kind, p) in self.lines() {
            out.extend_from_slice(kind.as_bytes());
            out.extend_from_slice(sd.display(p).as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"end\n");
        out
    }

    /// Exact length of [`encode`](Self::encode)'s output, without encoding.
    pub fn encoded_len(&self, sd: &StoreDir) -> usize {
        let dir = sd.as_str().len() + 1;
        HEADER.len()
            + 1
            + self
                .lines()
                .map(|(kind, p)| kind.len() + dir + p.as_str().len() + 1)
                .sum::<usize>()
            + "end\n".len()
    }

    /// Whether the encoded request is one [`decode`] accepts.
    pub fn fits(&self, sd: &StoreDir) -> bool {
        !self.is_empty()
            && self.out_paths.len() <= MAX_OUT_PATHS
            && self.encoded_len(sd) <= MAX_REQUEST_BYTES
            && self.drv_path.as_ref().is_none_or(StorePath::is_derivation)
    }

    fn lines(&self) -> impl Iterator<Item = (&'static str, &StorePath)> {
        let drv = self.drv_path.iter().map(|p| ("drv ", p));
        drv.chain(self.out_paths.iter().map(|p| ("out ", p)))
    }
}

/// Strictly decodes one complete request frame. Every accepted frame is
/// byte-identical to the [`HookRequest::encode`] of the result, so there is
/// exactly one spelling of each request.
pub fn decode(bytes: &[u8], sd: &StoreDir) -> Result<HookRequest, FrameError> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    let mut req = HookRequest::default();
    let mut rest = bytes;
    let mut line_no = 0;
    loop {
        line_no += 1;
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return Err(if rest.is_empty() {
                FrameError::MissingEnd { lines: line_no - 1 }
            } else {
                // Report a bad byte first: it is the more specific complaint.
                check_line(rest, line_no)?;
                FrameError::Unterminated { line: line_no }
            });
        };
        let line = check_line(&rest[..nl], line_no)?;
        rest = &rest[nl + 1..];
        if line_no == 1 {
            check_header(line)?;
            continue;
        }
        let (kind, arg) = match line.split_once(' ') {
            Some((k, a)) => (k, Some(a)),
            None => (line, None),
        };
        match kind {
            "end" => {
                if arg.is_some() {
                    return Err(FrameError::EndWithArgument { line: line_no });
                }
                if !rest.is_empty() {
                    return Err(FrameError::TrailingData { line: line_no + 1 });
                }
                if req.is_empty() {
                    return Err(FrameError::NoPaths { line: line_no });
                }
                return Ok(req);
            }
            "drv" => {
                let p = parse_arg(arg, "drv", line_no, sd)?;
                if req.drv_path.is_some() {
                    return Err(FrameError::DuplicateDrv { line: line_no });
                }
                if !req.out_paths.is_empty() {
                    return Err(FrameError::DrvAfterOut { line: line_no });
                }
                if !p.is_derivation() {
                    return Err(FrameError::NotDerivation {
                        line: line_no,
                        path: sd.display(&p),
                    });
                }
                req.drv_path = Some(p);
            }
            "out" => {
                if req.out_paths.len() == MAX_OUT_PATHS {
                    return Err(FrameError::TooManyOutPaths { line: line_no });
                }
                req.out_paths.push(parse_arg(arg, "out", line_no, sd)?);
            }
            other => {
                return Err(FrameError::UnknownKind {
                    line: line_no,
                    kind: other.to_owned(),
                });
            }
        }
    }
}

/// Rejects anything but printable ASCII, so a frame can never smuggle a
/// second line or terminal escapes into logs.
fn check_line(line: &[u8], line_no: usize) -> Result<&str, FrameError> {
    let bad = |byte| FrameError::BadByte {
        line: line_no,
        byte,
    };
    if let Some(&byte) = line.iter().find(|b| !is_printable(**b)) {
        return Err(bad(byte));
    }
    // Printable ASCII is always UTF-8; the fallback only avoids a panic path.
    std::str::from_utf8(line).map_err(|_| bad(line.first().copied().unwrap_or(0)))
}

fn is_printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

fn check_header(line: &str) -> Result<(), FrameError> {
    if line == HEADER {
        return Ok(());
    }
    match line.strip_prefix(HEADER_NAME) {
        Some(version) => Err(FrameError::UnsupportedVersion {
            version: version.to_owned(),
        }),
        None => Err(FrameError::BadHeader {
            got: truncate(line, 80).to_owned(),
        }),
    }
}

fn parse_arg(
    arg: Option<&str>,
    kind: &'static str,
    line: usize,
    sd: &StoreDir,
) -> Result<StorePath, FrameError> {
    let text = match arg {
        Some(a) if !a.is_empty() => a,
        _ => return Err(FrameError::MissingPath { line, kind }),
    };
    let p = sd
        .parse_path(text)
        .map_err(|source| FrameError::BadPath { line, source })?;
    // parse_path tolerates a trailing slash; one spelling per request keeps
    // "decode then encode" the identity.
    let expected = sd.display(&p);
    if expected != text {
        return Err(FrameError::NonCanonicalPath {
            line,
            got: text.to_owned(),
            expected,
        });
    }
    Ok(p)
}

/// Why a reply line was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("reply is longer than {MAX_REPLY_BYTES} bytes")]
    TooLong,
    #[error("reply is not terminated by a newline")]
    Unterminated,
    #[error("data after the reply line")]
    TrailingData,
    #[error("reply contains byte 0x{0:02x}, which is not printable ASCII")]
    BadByte(u8),
    #[error("unknown reply {0:?} (expected \"ok <id>\" or \"error <message>\")")]
    Unknown(String),
    #[error("bad request id {0:?} in ok reply (expected a decimal number without leading zeros)")]
    BadId(String),
    #[error("error reply without a message")]
    EmptyMessage,
}

/// The daemon's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request is durably committed under this id.
    Ok(u64),
    /// The request was not accepted; one line of printable ASCII.
    Error(String),
}

impl Reply {
    /// An `Error` reply whose text is already fit for the wire.
    pub fn error(message: &str) -> Self {
        Self::Error(sanitize_error_text(message))
    }

    /// Encodes the reply; an `Error` text is sanitised on the way out so the
    /// reply always stays one line.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Ok(id) => format!("ok {id}\n").into_bytes(),
            Self::Error(msg) => format!("error {}\n", sanitize_error_text(msg)).into_bytes(),
        }
    }

    /// Strictly decodes one reply line, `\n` included, nothing after it.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReplyError> {
        if bytes.len() > MAX_REPLY_BYTES {
            return Err(ReplyError::TooLong);
        }
        let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
            return Err(ReplyError::Unterminated);
        };
        if nl + 1 != bytes.len() {
            return Err(ReplyError::TrailingData);
        }
        let line = &bytes[..nl];
        if let Some(&b) = line.iter().find(|b| !is_printable(**b)) {
            return Err(ReplyError::BadByte(b));
        }
        let line = std::str::from_utf8(line).map_err(|_| ReplyError::BadByte(0))?;
        if let Some(id) = line.strip_prefix("ok ") {
            let canonical = id.bytes().all(|b| b.is_ascii_digit())
                && !id.is_empty()
                && (id == "0" || !id.starts_with('0'));
            return match id.parse() {
                Ok(n) if canonical => Ok(Self::Ok(n)),
                _ => Err(ReplyError::BadId(truncate(id, 40).to_owned())),
            };
        }
        if let Some(msg) = line.strip_prefix("error ") {
            if msg.is_empty() {
                return Err(ReplyError::EmptyMessage);
            }
            return Ok(Self::Error(msg.to_owned()));
        }
        Err(ReplyError::Unknown(truncate(line, 40).to_owned()))
    }
}

/// Makes `message` one line of printable ASCII of at most [`MAX_ERROR_TEXT`]
/// bytes: control characters become spaces, other non-ASCII becomes `?`.
pub fn sanitize_error_text(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .take(MAX_ERROR_TEXT)
        .collect();
    if message.chars().count() > MAX_ERROR_TEXT {
        out.truncate(MAX_ERROR_TEXT - 3);
        out.push_str("...");
    }
    if out.is_empty() {
        out.push_str("unspecified error");
    }
    out
}

/// Why [`read_request_frame`] or [`read_reply`] stopped without a frame.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("no terminator within {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one request frame from a blocking stream: up to and including the
/// `end` line, at most `max` bytes (normally [`MAX_REQUEST_BYTES`]). On EOF
/// it returns what arrived, which [`decode`] then rejects precisely. Bytes
/// already received past `end\n` are kept so decode reports them.
pub fn read_request_frame<R: Read>(r: &mut R, max: usize) -> Result<Vec<u8>, ReadError> {
    read_until(r, max, |buf, new_from| {
        // The header precedes `end`, so the end line always follows a `\n`;
        // look only where the terminator could newly have appeared.
        let start = new_from.saturating_sub(END.len() - 1);
        buf[start..].windows(END.len()).any(|w| w == END)
    })
}

/// Reads one reply line (at most [`MAX_REPLY_BYTES`]) from a blocking
/// stream, for [`Reply::decode`].
pub fn read_reply<R: Read>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    read_until(r, MAX_REPLY_BYTES, |buf, new_from| {
        buf[new_from..].contains(&b'\n')
    })
}

fn read_until<R: Read>(
    r: &mut R,
    max: usize,
    done: impl Fn(&[u8], usize) -> bool,
) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= max {
            return Err(ReadError::TooLarge(max));
        }
        // Never ask for more than the limit allows, so a peer cannot make us
        // buffer past `max`.
        let want = chunk.len().min(max - buf.len());
        let n = match r.read(&mut chunk[..want]) {
            Ok(0) => return Ok(buf),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let new_from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if done(&buf, new_from) {
            return Ok(buf);
        }
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
