//! Store directories and store paths, validated the way Nix validates them.
//!
//! A [`StorePath`] is only the basename (`<32 nixbase32 chars>-<name>`); the
//! directory it lives in is a separate [`StoreDir`] value so a test store or
//! a non-default store works the same as `/nix/store`.

use std::fmt;
use std::path::Path;

use thiserror::Error;

use crate::nixbase32;

/// Length of the hash part (160 bits in nixbase32).
pub const HASH_PART_LEN: usize = 32;
/// Nix's `StorePath::MaxPathLen`: the longest name a store path may carry.
pub const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("empty path where a store path was expected")]
    Empty,
    #[error(
        "{path:?} is not directly inside the store directory {store_dir:?} (expected {store_dir}/<hash>-<name>)"
    )]
    NotInStore { path: String, store_dir: String },
    #[error(
        "{path:?} points inside a store path, not at one; pass the top-level store path {top:?}"
    )]
    SubPath { path: String, top: String },
    #[error("store path {0:?} is too short: expected <32-char hash>-<name>")]
    TooShort(String),
    #[error(
        "store path {path:?}: hash part has invalid character {char:?} at position {pos} (nixbase32 excludes e, o, t, u)"
    )]
    BadHashChar {
        path: String,
        char: char,
        pos: usize,
    },
    #[error("store path {0:?}: expected '-' after the 32-character hash part")]
    MissingDash(String),
    #[error(
        "store path {path:?}: name has invalid character {char:?} at position {pos} (allowed: A-Z a-z 0-9 + - . _ ? =)"
    )]
    BadNameChar {
        path: String,
        char: char,
        pos: usize,
    },
    #[error("store path {0:?}: name must not start with '.'")]
    DotName(String),
    #[error("store path {path:?}: name is {len} bytes, longer than Nix's limit of {MAX_NAME_LEN}")]
    NameTooLong { path: String, len: usize },
    #[error(
        "store directory {0:?} must be an absolute, normalised path without a trailing slash (like /nix/store)"
    )]
    BadStoreDir(String),
}

/// The directory holding store paths (`/nix/store` by default).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        Self("/nix/store".to_owned())
    }
}

impl StoreDir {
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let ok = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && dir[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(Self(dir.to_owned()))
        } else {
            Err(StorePathError::BadStoreDir(dir.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses an absolute path that must name a store path itself — not a
    /// file inside one, not anything reached through `..`.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        if path.is_empty() {
            return Err(StorePathError::Empty);
        }
        let not_in_store = || StorePathError::NotInStore {
            path: path.to_owned(),
            store_dir: self.0.clone(),
        };
        let rest = path
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        // A trailing slash names the same directory; Nix accepts it too.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if let Some((top, _)) = rest.split_once('/') {
            // `..` and `.` components would let a "store path" escape the store.
            if top == ".." || top == "." || top.is_empty() {
                return Err(not_in_store());
            }
            return Err(StorePathError::SubPath {
                path: path.to_owned(),
                top: format!("{}/{}", self.0, top),
            });
        }
        if rest == ".." || rest == "." || rest.is_empty() {
            return Err(not_in_store());
        }
        StorePath::from_base_name(rest)
    }

    /// Like [`parse_path`](Self::parse_path) for an OS path, which may not be UTF-8.
    pub fn parse_os_path(&self, path: &Path) -> Result<StorePath, StorePathError> {
        match path.to_str() {
            Some(s) => self.parse_path(s),
            None => Err(StorePathError::NotInStore {
                path: path.to_string_lossy().into_owned(),
                store_dir: self.0.clone(),
            }),
        }
    }

    /// The full path of `p` in this store.
    pub fn display(&self, p: &StorePath) -> String {
        format!("{}/{}", self.0, p.0)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store path's basename, `<hash>-<name>`. Ordered like Nix orders
/// references: by the string, which for one store dir equals full-path order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath(String);

impl StorePath {
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        if base.is_empty() {
            return Err(StorePathError::Empty);
        }
        if base.len() < HASH_PART_LEN + 2 {
            return Err(StorePathError::TooShort(base.to_owned()));
        }
        for (pos, c) in base.char_indices().take_while(|(i, _)| *i < HASH_PART_LEN) {
            if !c.is_ascii() || !nixbase32::is_valid_str(c.encode_utf8(&mut [0; 4])) {
                return Err(StorePathError::BadHashChar {
                    path: base.to_owned(),
                    char: c,
                    pos,
                });
            }
        }
        if base.as_bytes()[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base.to_owned()));
        }
        let name = &base[HASH_PART_LEN + 1..];
        if name.len() > MAX_NAME_LEN {
            return Err(StorePathError::NameTooLong {
                path: base.to_owned(),
                len: name.len(),
            });
        }
        if let Some((i, c)) = name.char_indices().find(|&(_, c)| !is_name_char(c)) {
            return Err(StorePathError::BadNameChar {
                path: base.to_owned(),
                char: c,
                pos: HASH_PART_LEN + 1 + i,
            });
        }
        // Nix 2.8 rejects every leading dot; newer Nix only `.`, `..` and
        // `.-`/`..-` prefixes. We keep the stricter rule so whatever we upload
        // is substitutable by every client back to 2.8.
        if name.starts_with('.') {
            return Err(StorePathError::DotName(base.to_owned()));
        }
        Ok(Self(base.to_owned()))
    }

    pub fn hash_part(&self) -> &str {
        &self.0[..HASH_PART_LEN]
    }

    /// The 20-byte digest the hash part encodes.
    pub fn digest(&self) -> [u8; 20] {
        nixbase32::decode(self.hash_part(), 20)
            .expect("validated on construction")
            .try_into()
            .expect("20 bytes")
    }

    pub fn name(&self) -> &str {
        &self.0[HASH_PART_LEN + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `.drv` store paths (derivations).
    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-._?=".contains(c)
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";

    fn sd() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn parses_good_paths() {
        let p = sd()
            .parse_path(&format!("/nix/store/{H}-hello-2.12.1"))
            .unwrap();
        assert_eq!(p.hash_part(), H);
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(sd().display(&p), format!("/nix/store/{H}-hello-2.12.1"));
        assert_eq!(nixbase32::encode(&p.digest()), H);
        let p = sd()
            .parse_path(&format!("/nix/store/{H}-a+b_c?d=e.drv/"))
            .unwrap();
        assert!(p.is_derivation());
        let other = StoreDir::new("/tmp/x/store").unwrap();
        assert!(other.parse_path(&format!("/tmp/x/store/{H}-x")).is_ok());
        assert!(other.parse_path(&format!("/nix/store/{H}-x")).is_err());
    }

    #[test]
    fn rejects_escapes_and_subpaths() {
        use StorePathError::*;
        let s = sd();
        assert_eq!(s.parse_path(""), Err(Empty));
        assert!(matches!(
            s.parse_path("/nix/store/../etc"),
            Err(NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path("/nix/store/../etc/passwd"),
            Err(NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path("/nix/store//x"),
            Err(NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path("nix/store/x"),
            Err(NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path(&format!("{H}-x")),
            Err(NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path("/nix/storex/y"),
            Err(NotInStore { .. })
        ));
        let e = s
            .parse_path(&format!("/nix/store/{H}-x/bin/sh"))
            .unwrap_err();
        assert_eq!(
            e,
            SubPath {
                path: format!("/nix/store/{H}-x/bin/sh"),
                top: format!("/nix/store/{H}-x")
            }
        );
        assert!(e.to_string().contains("top-level"));
    }

    #[test]
    fn rejects_bad_names() {
        use StorePathError::*;
        assert!(matches!(StorePath::from_base_name("abc"), Err(TooShort(_))));
        let e = StorePath::from_base_name(&format!("{}e-x", &H[..31])).unwrap_err();
        assert!(
            matches!(
                e,
                BadHashChar {
                    char: 'e',
                    pos: 31,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(matches!(
            StorePath::from_base_name(&format!("{H}_x")),
            Err(MissingDash(_))
        ));
        let e = StorePath::from_base_name(&format!("{H}-a b")).unwrap_err();
        assert!(
            matches!(
                e,
                BadNameChar {
                    char: ' ',
                    pos: 34,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(matches!(
            StorePath::from_base_name(&format!("{H}-a*")),
            Err(BadNameChar { char: '*', .. })
        ));
        assert!(matches!(
            StorePath::from_base_name(&format!("{H}-.x")),
            Err(DotName(_))
        ));
        assert!(StorePath::from_base_name(&format!("{H}-{}", "a".repeat(211))).is_ok());
        assert!(matches!(
            StorePath::from_base_name(&format!("{H}-{}", "a".repeat(212))),
            Err(NameTooLong { len: 212, .. })
        ));
        // Multi-byte characters must give an error, not a slicing panic.
        assert!(StorePath::from_base_name("ééééééééééééééééééééééééééééééééé-x").is_err());
        assert!(StorePath::from_base_name(&format!("{}é-x", &H[..31])).is_err());
    }

    #[test]
    fn store_dir_rules() {
        assert!(StoreDir::new("/nix/store").is_ok());
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix/../store",
            "/nix//store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }
}
