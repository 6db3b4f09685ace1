//! The S3 parameters Nix 2.35 added: `addressing-style`, `storage-class`
//! and `multipart-threshold`, and sizes written with Nix's suffixes.

use std::fmt;

/// How requests name the bucket (`addressing-style`), as in Nix 2.35.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Addressing {
    /// Virtual-hosted for AWS (`<bucket>.s3.<region>.amazonaws.com`),
    /// path-style for a custom `endpoint` and for bucket names with dots
    /// (a wildcard TLS certificate covers one label only).
    #[default]
    Auto,
    /// `<endpoint>/<bucket>/<key>`.
    Path,
    /// `<bucket>.<endpoint host>/<key>`.
    Virtual,
}

impl Addressing {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "path" => Some(Self::Path),
            "virtual" => Some(Self::Virtual),
            _ => None,
        }
    }

    /// Whether requests to `bucket` at `endpoint` (`None`: AWS) put the
    /// bucket in the host name.
    pub fn virtual_hosted(self, bucket: &str, endpoint: Option<&str>) -> bool {
        match self {
            Self::Auto => endpoint.is_none() && !bucket.contains('.'),
            Self::Path => false,
            Self::Virtual => true,
        }
    }
}

impl fmt::Display for Addressing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Path => "path",
            Self::Virtual => "virtual",
        })
    }
}

/// A byte count as Nix writes its integer settings: digits, optionally
/// followed by `K`, `M`, `G` or `T` (powers of 1024, either case).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        b't' | b'T' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Storage classes whose objects cannot be read without a restore
/// request: a cache there would answer Nix with errors.
const ARCHIVE_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE"];

/// Checks a `storage-class` value: an S3 storage class name (upper case,
/// digits and `_`), and not an archive class.
pub(crate) fn check_storage_class(s: &str) -> Result<(), &'static str> {
    let well_formed = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err(
            "a storage class name such as STANDARD, STANDARD_IA, INTELLIGENT_TIERING or GLACIER_IR",
        );
    }
    if ARCHIVE_CLASSES.contains(&s) {
        return Err(
            "a class whose objects can be read at once: GLACIER and DEEP_ARCHIVE objects need a \
             restore request before every read, so Nix could not substitute from the cache \
             (GLACIER_IR can be read at once)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_nix_suffixes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("5242880"), Some(5 << 20));
        assert_eq!(parse_size("100M"), Some(100 << 20));
        assert_eq!(parse_size("8m"), Some(8 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        for bad in [
            "",
            "M",
            "-1",
            "1.5M",
            "1MB",
            " 1",
            "1 M",
            "99999999999999999999",
            "16777216T",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn addressing_follows_nix() {
        use Addressing::*;
        assert!(Auto.virtual_hosted("cache", None));
        assert!(!Auto.virtual_hosted("cache", Some("minio:9000")));
        assert!(!Auto.virtual_hosted("my.cache", None));
        assert!(!Path.virtual_hosted("cache", None));
        assert!(Virtual.virtual_hosted("cache", Some("minio:9000")));
    }

    #[test]
    fn storage_classes() {
        for ok in [
            "STANDARD",
            "REDUCED_REDUNDANCY",
            "STANDARD_IA",
            "GLACIER_IR",
            "ONEZONE_IA",
        ] {
            assert_eq!(check_storage_class(ok), Ok(()), "{ok}");
        }
        for bad in ["", "standard", "A B", "X\n", "GLACIER", "DEEP_ARCHIVE"] {
            assert!(check_storage_class(bad).is_err(), "{bad}");
        }
    }
}
