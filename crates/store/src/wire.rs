//! The worker protocol's framing: little-endian u64 integers, byte strings
//! as a u64 length + bytes + zero padding to 8, lists as a count + items.
//!
//! Every length read from the daemon is checked against a cap before any
//! allocation, so a corrupt or hostile reply cannot make us allocate
//! gigabytes or loop for ever.

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::error::ProtocolError;

/// Longest string we accept anywhere: error messages and log lines can be
/// long (build logs), paths and hashes are short.
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Most items we accept in one list (references, signatures, valid paths).
pub const MAX_LIST_LEN: u64 = 1 << 20;

pub async fn read_u64<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<u64, ProtocolError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .await
        .map_err(|e| ProtocolError::io(what, e))?;
    Ok(u64::from_le_bytes(b))
}

pub async fn read_bool<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<bool, ProtocolError> {
    match read_u64(r, what).await? {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(ProtocolError::Malformed {
            what,
            detail: format!("boolean is {n}, expected 0 or 1"),
        }),
    }
}

pub async fn read_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: u64,
) -> Result<Vec<u8>, ProtocolError> {
    let len = read_u64(r, what).await?;
    if len > max {
        return Err(ProtocolError::Malformed {
            what,
            detail: format!("length {len} exceeds the limit of {max}"),
        });
    }
    let len = len as usize;
    let padded = len.div_ceil(8) * 8;
    let mut buf = vec![0u8; padded];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| ProtocolError::io(what, e))?;
    if buf[len..].iter().any(|&b| b != 0) {
        return Err(ProtocolError::Malformed {
            what,
            detail: "non-zero padding after string".into(),
        });
    }
    buf.truncate(len);
    Ok(buf)
}

pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<String, ProtocolError> {
    let b = read_bytes(r, what, MAX_STRING_LEN).await?;
    String::from_utf8(b).map_err(|e| ProtocolError::Malformed {
        what,
        detail: format!("not UTF-8 at byte {}", e.utf8_error().valid_up_to()),
    })
}

pub async fn read_string_list<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<Vec<String>, ProtocolError> {
    let n = read_u64(r, what).await?;
    if n > MAX_LIST_LEN {
        return Err(ProtocolError::Malformed {
            what,
            detail: format!("list of {n} items exceeds the limit of {MAX_LIST_LEN}"),
        });
    }
    let mut out = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        out.push(read_string(r, what).await?);
    }
    Ok(out)
}

/// A request being assembled; sent in one write so a request is never
/// half-written between two awaits.
#[derive(Default)]
pub struct Request(pub Vec<u8>);

impl Request {
    pub fn new(op: u64) -> Self {
        let mut r = Self(Vec::with_capacity(128));
        r.u64(op);
        r
    }
    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        let pad = b.len().div_ceil(8) * 8 - b.len();
        self.0.extend_from_slice(&[0u8; 8][..pad]);
        self
    }
    pub fn string_list<S: AsRef<str>>(&mut self, items: &[S]) -> &mut Self {
        self.u64(items.len() as u64);
        for s in items {
            self.bytes(s.as_ref().as_bytes());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn string_round_trip_and_padding() {
        let mut req = Request::default();
        req.bytes(b"hello").bytes(b"").bytes(b"12345678");
        assert_eq!(req.0.len(), 8 + 8 + 8 + 8 + 8);
        let mut r = &req.0[..];
        assert_eq!(read_string(&mut r, "t").await.unwrap(), "hello");
        assert_eq!(read_string(&mut r, "t").await.unwrap(), "");
        assert_eq!(read_string(&mut r, "t").await.unwrap(), "12345678");
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn rejects_bad_frames() {
        let huge = (MAX_STRING_LEN + 1).to_le_bytes();
        let e = read_string(&mut &huge[..], "path").await.unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        let mut bad_pad = Request::default();
        bad_pad.bytes(b"abc");
        bad_pad.0[8 + 5] = 1;
        assert!(
            read_string(&mut &bad_pad.0[..], "p")
                .await
                .unwrap_err()
                .to_string()
                .contains("padding")
        );
        let mut trunc = Request::default();
        trunc.bytes(b"abcdefghij");
        let e = read_string(&mut &trunc.0[..12], "p").await.unwrap_err();
        assert!(matches!(e, ProtocolError::Disconnected { .. }), "{e:?}");
        let list = (MAX_LIST_LEN + 1).to_le_bytes();
        assert!(read_string_list(&mut &list[..], "l").await.is_err());
        assert!(read_bool(&mut &2u64.to_le_bytes()[..], "b").await.is_err());
        let mut not_utf8 = Request::default();
        not_utf8.bytes(b"\xff");
        assert!(
            read_string(&mut &not_utf8.0[..], "s")
                .await
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }
}
