//! SHA-256 digests in the three spellings Nix uses: `sha256:<nix32>` in
//! narinfo files, SRI `sha256-<base64>` in newer CLIs, and bare hex in the
//! daemon protocol's QueryPathInfo reply.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest as _;
use thiserror::Error;

use crate::nixbase32;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashError {
    #[error(
        "hash {0:?} is not SHA-256: expected `sha256:<52 nixbase32 chars>`, `sha256-<base64>` or 64 hex digits"
    )]
    Unrecognised(String),
    #[error("hash {input:?}: {source}")]
    Nix32 {
        input: String,
        source: nixbase32::DecodeError,
    },
    #[error("hash {0:?}: invalid base64 or not 32 bytes")]
    Base64(String),
    #[error("hash {0:?}: invalid hex (need 64 hex digits)")]
    Hex(String),
}

impl Sha256Hash {
    pub fn digest(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// `sha256:<nix32>`, as in narinfo `NarHash:` / `FileHash:` and in fingerprints.
    pub fn to_nix32_string(&self) -> String {
        format!("sha256:{}", nixbase32::encode(&self.0))
    }

    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn from_hex(s: &str) -> Result<Self, HashError> {
        let bad = || HashError::Hex(s.to_owned());
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }

    /// Parses any of Nix's spellings of a SHA-256: `sha256:<nix32>`,
    /// `sha256:<hex>`, `sha256-<base64>` (SRI) or bare hex (daemon protocol).
    pub fn parse(s: &str) -> Result<Self, HashError> {
        if let Some(rest) = s.strip_prefix("sha256:") {
            if rest.len() == 64 {
                return Self::from_hex(rest);
            }
            let bytes = nixbase32::decode(rest, 32).map_err(|source| HashError::Nix32 {
                input: s.to_owned(),
                source,
            })?;
            return Ok(Self(bytes.try_into().expect("decode returns 32 bytes")));
        }
        if let Some(rest) = s.strip_prefix("sha256-") {
            let bytes = BASE64
                .decode(rest)
                .map_err(|_| HashError::Base64(s.to_owned()))?;
            return Ok(Self(
                bytes
                    .try_into()
                    .map_err(|_| HashError::Base64(s.to_owned()))?,
            ));
        }
        if s.len() == 64 {
            return Self::from_hex(s);
        }
        Err(HashError::Unrecognised(s.to_owned()))
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32_string())
    }
}

/// A `Write` sink that hashes and counts what passes through, so a NAR can be
/// hashed while it streams without a second pass.
#[derive(Default, Clone)]
pub struct HashingCounter {
    hasher: sha2::Sha256,
    len: u64,
}

impl HashingCounter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.len += data.len() as u64;
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> (Sha256Hash, u64) {
        (Sha256Hash(self.hasher.finalize().into()), self.len)
    }
}

impl std::io::Write for HashingCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn spellings_agree() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(h.to_hex(), EMPTY_HEX);
        assert_eq!(
            h.to_sri(),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        for s in [
            h.to_nix32_string(),
            h.to_sri(),
            h.to_hex(),
            format!("sha256:{EMPTY_HEX}"),
        ] {
            assert_eq!(Sha256Hash::parse(&s).unwrap(), h, "{s}");
        }
    }

    #[test]
    fn errors_name_the_input() {
        let e = Sha256Hash::parse("md5:abc").unwrap_err();
        assert!(e.to_string().contains("md5:abc"), "{e}");
        let e = Sha256Hash::parse(&format!("sha256:{}", "e".repeat(52))).unwrap_err();
        assert!(e.to_string().contains("position 0"), "{e}");
        assert!(matches!(
            Sha256Hash::parse("sha256-AAAA"),
            Err(HashError::Base64(_))
        ));
        assert!(matches!(
            Sha256Hash::from_hex(&"g".repeat(64)),
            Err(HashError::Hex(_))
        ));
    }

    #[test]
    fn hashing_counter_matches_digest() {
        let mut c = HashingCounter::new();
        c.update(b"hello ");
        c.update(b"world");
        assert_eq!(c.finish(), (Sha256Hash::digest(b"hello world"), 11));
    }
}
