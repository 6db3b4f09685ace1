//! Binary-cache signing keys in Nix's file formats, and narinfo signatures.
//!
//! - secret key file: `name:base64(seed ‖ public key)` (64 bytes), mode 0600,
//!   no trailing newline — what `nix-store --generate-binary-cache-key` writes;
//! - public key: `name:base64(public key)` (32 bytes), the string users put
//!   in `trusted-public-keys`;
//! - signature: `name:base64(ed25519 signature)` (64 bytes), one `Sig:` line.

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::atomic_write::{self, AtomicWriteError};

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{what} {value:?} is malformed: expected `<name>:<base64>`")]
    NoColon { what: &'static str, value: String },
    #[error(
        "{what} has an empty or invalid name {name:?}: a key name must be non-empty, without ':' or whitespace"
    )]
    BadName { what: &'static str, name: String },
    #[error("{what} named {name:?}: invalid base64 ({reason})")]
    Base64 {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("{what} named {name:?}: decodes to {got} bytes, expected {expected}")]
    Length {
        what: &'static str,
        name: String,
        got: usize,
        expected: usize,
    },
    #[error("secret key named {name:?} is corrupt: its public half does not match its seed")]
    Mismatch { name: String },
    #[error("public key named {name:?} is not a valid ed25519 point")]
    BadPoint { name: String },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    InFile {
        path: PathBuf,
        source: Box<KeyError>,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes.
fn split_key<const N: usize>(what: &'static str, s: &str) -> Result<(String, [u8; N]), KeyError> {
    let s = s.trim_end_matches(['\n', '\r']);
    let (name, b64) = s.split_once(':').ok_or_else(|| KeyError::NoColon {
        what,
        // Never echo secret material: only the part before any colon exists here anyway,
        // but a secret key without a colon is one long base64 string; show its length only.
        value: if what == "secret key" {
            format!("<{} bytes>", s.len())
        } else {
            s.to_owned()
        },
    })?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(KeyError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    let bytes = BASE64.decode(b64.trim()).map_err(|e| KeyError::Base64 {
        what,
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let got = bytes.len();
    let arr = bytes.try_into().map_err(|_| KeyError::Length {
        what,
        name: name.to_owned(),
        got,
        expected: N,
    })?;
    Ok((name.to_owned(), arr))
}

fn check_name(what: &'static str, name: &str) -> Result<(), KeyError> {
    if name.is_empty()
        || name.contains(':')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(KeyError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A secret signing key. Its `Debug` never shows the key material.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretKey({:?}, public {})",
            self.name,
            self.public_key()
        )
    }
}

impl SecretKey {
    /// A fresh key from the OS random source.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        check_name("key", name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses the contents of a secret key file.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key::<64>("secret key", s)?;
        // Nix stores seed ‖ public key; a file whose halves disagree would sign
        // with one key and advertise another, so refuse it.
        let key = SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| KeyError::Mismatch { name: name.clone() })?;
        Ok(Self { name, key })
    }

    /// The secret key file's contents (no trailing newline, like Nix).
    pub fn to_file_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `msg` (a narinfo fingerprint), giving the `Sig:` value.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(msg).to_bytes(),
        }
    }
}

/// A public key, as written in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key::<32>("public key", s.trim())?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| KeyError::BadPoint { name: name.clone() })?;
        Ok(Self { name, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when `sig` was made by this key over `msg`. A signature by a key
    /// of another name is simply not ours (Nix matches keys by name first).
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        sig.name == self.name
            && self
                .key
                .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A narinfo `Sig:` value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature {
    name: String,
    bytes: [u8; 64],
}

impl Signature {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key::<64>("signature", s.trim())?;
        Ok(Self { name, bytes })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

/// A secret key read from a file, with the warning the caller must show
/// loudly when the file is readable by others.
#[derive(Debug)]
pub struct LoadedSecretKey {
    pub key: SecretKey,
    pub permission_warning: Option<String>,
}

/// Reads a secret key file. Loose permissions are not an error (Nix itself
/// does not check) but the caller must surface the warning.
pub fn read_secret_key_file(path: &Path) -> Result<LoadedSecretKey, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let key = SecretKey::parse(&text).map_err(|e| KeyError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    let permission_warning = (mode & 0o077 != 0).then(|| {
        format!(
            "secret key file {} has mode {mode:04o}: it is readable by {}; anyone who can read it can sign paths your users will trust. Run: chmod 600 {}",
            path.display(),
            if mode & 0o004 != 0 { "every user" } else { "its group" },
            path.display()
        )
    });
    Ok(LoadedSecretKey {
        key,
        permission_warning,
    })
}

pub fn read_public_key_file(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    PublicKey::parse(&text).map_err(|e| KeyError::InFile {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Writes a key pair the way `nix-store --generate-binary-cache-key` does
/// (secret 0600, public 0644, no trailing newline), each file atomically.
/// Refuses to replace an existing file unless `force`.
pub fn write_key_files(
    key: &SecretKey,
    secret: &Path,
    public: &Path,
    force: bool,
) -> Result<(), KeyError> {
    if !force {
        for p in [secret, public] {
            if p.symlink_metadata().is_ok() {
                return Err(AtomicWriteError::Exists(p.to_owned()).into());
            }
        }
    }
    atomic_write::write(secret, key.to_file_string().as_bytes(), 0o600, force)?;
    atomic_write::write(
        public,
        key.public_key().to_string().as_bytes(),
        0o644,
        force,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `nix-store --generate-binary-cache-key test-1 sk pk` (Nix 2.8.0).
    const SK: &str = "test-1:D804M/umUR5GKx67ZYgxUGKC3Hd2qLSy0GIbPuA1+BHDqyRQNiAp9vcEPcAxWR5HZEzLZkWlobfDdu8aL8v2Qw==";
    const PK: &str = "test-1:w6skUDYgKfb3BD3AMVkeR2RMy2ZFpaG3w3bvGi/L9kM=";

    #[test]
    fn nix_generated_key_round_trips() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.to_file_string(), SK);
        assert_eq!(sk.public_key().to_string(), PK);
        assert_eq!(PublicKey::parse(PK).unwrap(), sk.public_key());
        assert!(
            !format!("{sk:?}").contains("D804M"),
            "Debug must not leak the secret"
        );
    }

    #[test]
    fn sign_and_verify() {
        let sk = SecretKey::generate("host-1").unwrap();
        let sig = sk.sign(b"1;fingerprint");
        let sig2 = Signature::parse(&sig.to_string()).unwrap();
        assert_eq!(sig, sig2);
        assert!(sk.public_key().verify(b"1;fingerprint", &sig2));
        assert!(!sk.public_key().verify(b"1;fingerprinT", &sig2));
        let other = SecretKey::generate("host-1").unwrap();
        assert!(!other.public_key().verify(b"1;fingerprint", &sig2));
        let renamed = Signature {
            name: "host-2".into(),
            ..sig2
        };
        assert!(!sk.public_key().verify(b"1;fingerprint", &renamed));
    }

    #[test]
    fn bad_keys_give_precise_errors() {
        assert!(matches!(
            PublicKey::parse("nocolon"),
            Err(KeyError::NoColon { .. })
        ));
        assert!(matches!(
            PublicKey::parse(":AAAA"),
            Err(KeyError::BadName { .. })
        ));
        assert!(matches!(
            PublicKey::parse("k:!!"),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            PublicKey::parse("k:AAAA"),
            Err(KeyError::Length {
                got: 3,
                expected: 32,
                ..
            })
        ));
        let e = SecretKey::parse("c2VjcmV0c2VjcmV0").unwrap_err();
        assert!(
            !e.to_string().contains("c2Vj"),
            "error must not echo secret material: {e}"
        );
        // Swap the public half for another key's: refused.
        let a = SecretKey::generate("a").unwrap().key.to_keypair_bytes();
        let b = SecretKey::generate("a").unwrap().key.to_keypair_bytes();
        let mixed = [&a[..32], &b[32..]].concat();
        let s = format!("a:{}", BASE64.encode(mixed));
        assert!(matches!(
            SecretKey::parse(&s),
            Err(KeyError::Mismatch { .. })
        ));
        assert!(SecretKey::generate("bad name").is_err());
        assert!(SecretKey::generate("a:b").is_err());
    }

    #[test]
    fn key_files_and_permission_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (sp, pp) = (dir.path().join("sk"), dir.path().join("pk"));
        let sk = SecretKey::generate("h-1").unwrap();
        write_key_files(&sk, &sp, &pp, false).unwrap();
        assert_eq!(
            std::fs::metadata(&sp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let loaded = read_secret_key_file(&sp).unwrap();
        assert_eq!(loaded.key.to_file_string(), sk.to_file_string());
        assert!(loaded.permission_warning.is_none());
        assert_eq!(read_public_key_file(&pp).unwrap(), sk.public_key());
        let again = SecretKey::generate("h-2").unwrap();
        assert!(matches!(
            write_key_files(&again, &sp, &pp, false),
            Err(KeyError::Write(AtomicWriteError::Exists(_)))
        ));
        assert_eq!(
            read_secret_key_file(&sp).unwrap().key.name(),
            "h-1",
            "refused write must leave the old key"
        );
        write_key_files(&again, &sp, &pp, true).unwrap();
        assert_eq!(read_secret_key_file(&sp).unwrap().key.name(), "h-2");
        std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = read_secret_key_file(&sp)
            .unwrap()
            .permission_warning
            .unwrap();
        assert!(w.contains("every user") && w.contains("chmod 600"), "{w}");
        std::fs::set_permissions(&sp, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            read_secret_key_file(&sp)
                .unwrap()
                .permission_warning
                .unwrap()
                .contains("its group")
        );
    }
}
