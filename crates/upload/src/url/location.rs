//! The "where" half of a target URL: a directory, an S3 bucket or an HTTP
//! base URL, parsed and normalised so two spellings of one cache compare
//! equal (and so share a queue id).

use std::fmt;
use std::path::{Path, PathBuf};

use super::TargetUrlError;

/// Nix's default region for `s3://` stores, and ours.
pub(crate) const DEFAULT_REGION: &str = "us-east-1";

/// Where a target's files go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetLocation {
    /// A binary-cache directory on a local (or mounted) filesystem.
    File { root: PathBuf },
    /// An S3 bucket (AWS, or any S3-compatible store via `endpoint`). Keys
    /// live at the bucket's top level, as with `nix copy --to s3://…`.
    S3 {
        bucket: String,
        /// The signing region; `us-east-1` unless the URL says otherwise.
        region: String,
        /// `host[:port]` of an S3-compatible store; `None` for AWS itself.
        /// Setting it switches to path-style requests, as Nix does.
        endpoint: Option<String>,
        /// `https` (the default) or `http`.
        scheme: String,
        /// A profile in the AWS shared credentials file; `None`: the usual
        /// chain (environment, `AWS_PROFILE` or `default`, instance role).
        profile: Option<String>,
    },
    /// An HTTP(S) server accepting WebDAV-style `PUT`s under a base URL:
    /// `scheme://host[:port][/path]`, without a trailing slash.
    Http { url: String },
}

impl TargetLocation {
    /// The cache's identity: what must stay the same for queued work to
    /// keep its target. For S3 that is the bucket and the server holding it;
    /// region, scheme and credentials only say how to reach it, so changing
    /// them does not orphan queued jobs.
    pub fn id(&self) -> String {
        match self {
            Self::S3 {
                bucket,
                endpoint: Some(e),
                ..
            } => format!("s3://{bucket}?endpoint={e}"),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
            _ => self.to_string(),
        }
    }

    pub(crate) fn scheme(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::S3 { .. } => "s3",
            Self::Http { url } if url.starts_with("https:") => "https",
            Self::Http { .. } => "http",
        }
    }
}

/// Every location parameter, in canonical order, so the canonical URL of a
/// config parses back to an equal value.
impl fmt::Display for TargetLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { root } => write!(f, "file://{}", root.display()),
            Self::Http { url } => f.write_str(url),
            Self::S3 {
                bucket,
                region,
                endpoint,
                scheme,
                profile,
            } => {
                write!(f, "s3://{bucket}")?;
                let mut params = Vec::new();
                if region != DEFAULT_REGION {
                    params.push(format!("region={region}"));
                }
                if let Some(e) = endpoint {
                    params.push(format!("endpoint={e}"));
                }
                if scheme != "https" {
                    params.push(format!("scheme={scheme}"));
                }
                if let Some(p) = profile {
                    params.push(format!("profile={p}"));
                }
                if !params.is_empty() {
                    write!(f, "?{}", params.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

/// Normalises the path of a `file://` URL: collapses `//` and `.`, drops a
/// trailing slash; refuses hosts, relative paths and `..` (which could only
/// be resolved against the filesystem, and would make two spellings of one
/// cache look like different targets).
pub(crate) fn parse_file_path(url: &str, path: &str) -> Result<PathBuf, TargetUrlError> {
    if path.is_empty() {
        return Err(TargetUrlError::RelativePath {
            url: url.to_owned(),
        });
    }
    if !path.starts_with('/') {
        // `file://host/path` and `file://relative/path` look the same; the
        // message covers both.
        let host = path.split('/').next().unwrap_or(path);
        if host == "." || host == ".." || host == "~" || !path.contains('/') {
            return Err(TargetUrlError::RelativePath {
                url: url.to_owned(),
            });
        }
        return Err(TargetUrlError::FileHost {
            url: url.to_owned(),
            host: host.to_owned(),
        });
    }
    let mut out = PathBuf::from("/");
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                return Err(TargetUrlError::DotDot {
                    url: url.to_owned(),
                });
            }
            c => out.push(c),
        }
    }
    if out == Path::new("/") {
        return Err(TargetUrlError::FilesystemRoot {
            url: url.to_owned(),
        });
    }
    Ok(out)
}

/// Checks the bucket of `s3://bucket`: S3's naming rules for new buckets
/// (3–63 characters of `a-z 0-9 . -`, a letter or digit at each end, no
/// `..`, not shaped like an IP address). Anything else would fail at the
/// first request with a less helpful message, or be addressed wrongly.
pub(crate) fn parse_bucket(url: &str, rest: &str) -> Result<String, TargetUrlError> {
    let bad = |reason: &'static str| TargetUrlError::BadBucket {
        url: url.to_owned(),
        bucket: rest.to_owned(),
        reason,
    };
    if let Some((_, path)) = rest.split_once('/') {
        return Err(TargetUrlError::S3Path {
            url: url.to_owned(),
            path: path.to_owned(),
        });
    }
    let b = rest;
    if b.is_empty() {
        return Err(bad("it is empty; write s3://BUCKET"));
    }
    if b.len() < 3 || b.len() > 63 {
        return Err(bad("a bucket name has 3 to 63 characters"));
    }
    if !b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
    {
        return Err(bad(
            "a bucket name has only lowercase letters, digits, '.' and '-'",
        ));
    }
    let alnum = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !alnum(b.bytes().next()) || !alnum(b.bytes().last()) {
        return Err(bad("a bucket name starts and ends with a letter or digit"));
    }
    if b.contains("..") {
        return Err(bad("a bucket name has no two adjacent dots"));
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(bad("a bucket name must not look like an IP address"));
    }
    Ok(b.to_owned())
}

/// `endpoint=` as Nix takes it: `host[:port]`, or a URL whose scheme then
/// sets `scheme` (the AWS SDK Nix uses accepts both). Returns the host part
/// and the scheme the URL named, if any.
pub(crate) fn parse_endpoint(
    url: &str,
    value: &str,
) -> Result<(String, Option<&'static str>), TargetUrlError> {
    let bad = |reason: &'static str| TargetUrlError::BadEndpoint {
        url: url.to_owned(),
        endpoint: value.to_owned(),
        reason,
    };
    let (scheme, rest) = match value.split_once("://") {
        Some(("http", r)) => (Some("http"), r),
        Some(("https", r)) => (Some("https"), r),
        Some(_) => return Err(bad("only http:// and https:// endpoints exist")),
        None => (None, value),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.contains('/') {
        return Err(bad(
            "it names a host and port only; buckets are addressed path-style below it",
        ));
    }
    check_authority(host).map_err(bad)?;
    Ok((host.to_ascii_lowercase(), scheme))
}

/// Checks `host[:port]` (an IPv6 literal in brackets allowed); user names
/// and passwords are refused, since the URL ends up in logs and ids.
fn check_authority(a: &str) -> Result<(), &'static str> {
    if a.contains('@') {
        return Err(
            "credentials do not belong in the URL (it is logged); see the documentation for how credentials are found",
        );
    }
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 address lacks its ']'")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the bracketed host is not an IPv6 address");
        }
        match after {
            "" => (h, None),
            p => (
                h,
                Some(p.strip_prefix(':').ok_or("junk after the IPv6 address")?),
            ),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    if !host
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'))
    {
        return Err("the host has characters no host name has");
    }
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return Err("the port is not a number from 0 to 65535");
    }
    Ok(())
}

/// Normalises an `http(s)://` base URL: lowercase host, no trailing slash,
/// `//` and `.` collapsed; refuses credentials, fragments and `..`.
pub(crate) fn parse_http_url(
    url: &str,
    scheme: &str,
    rest: &str,
) -> Result<String, TargetUrlError> {
    let bad = |reason: &'static str| TargetUrlError::BadHttpUrl {
        url: url.to_owned(),
        reason,
    };
    if rest.contains('#') {
        return Err(bad("a fragment (#…) means nothing to a cache; remove it"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    check_authority(authority).map_err(bad)?;
    let mut out = format!("{scheme}://{}", authority.to_ascii_lowercase());
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(bad("the path must not contain '..' components")),
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    Ok(out)
}
