//! Why a target URL was refused, precisely enough to fix it.

use thiserror::Error;

/// The parameters every target accepts, for error messages.
pub(crate) const COMMON: &str =
    "compression, compression-level, parallel-compression, write-nar-listing, max-connections";
/// What an `s3://` target accepts, for error messages.
pub(crate) const S3_ACCEPTED: &str = "compression, compression-level, parallel-compression, \
     write-nar-listing, max-connections, region, endpoint, scheme, profile, multipart-upload, \
     multipart-chunk-size (or buffer-size), multipart-threshold, addressing-style, storage-class";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetUrlError {
    #[error("empty target URL: expected file:///absolute/path, s3://bucket or https://host/path")]
    Empty,
    #[error("target {url:?} has no URL scheme: write a binary cache directory as {suggestion}")]
    NoScheme { url: String, suggestion: String },
    #[error(
        "target {url:?}: the {scheme}:// scheme is not a binary cache nix-outbox can upload to; \
         use file:///absolute/path, s3://bucket or http(s)://host/path"
    )]
    UnknownScheme { url: String, scheme: String },
    #[error(
        "target {url:?}: file URLs take no host ({host:?}); write file:///absolute/path (three slashes)"
    )]
    FileHost { url: String, host: String },
    #[error(
        "target {url:?}: the cache directory must be an absolute path, e.g. file:///var/cache/nix"
    )]
    RelativePath { url: String },
    #[error("target {url:?}: the cache directory path must not contain '..' components")]
    DotDot { url: String },
    #[error("target {url:?}: the filesystem root cannot be a binary cache; name a directory")]
    FilesystemRoot { url: String },
    #[error("target {url:?}: bucket {bucket:?} is not a valid S3 bucket name: {reason}")]
    BadBucket {
        url: String,
        bucket: String,
        reason: &'static str,
    },
    #[error(
        "target {url:?}: an s3:// target names a bucket only (the cache is its top level, as in Nix), \
         not a path ({path:?}); use a bucket of its own"
    )]
    S3Path { url: String, path: String },
    #[error("target {url:?}: endpoint={endpoint:?} is invalid: {reason}")]
    BadEndpoint {
        url: String,
        endpoint: String,
        reason: &'static str,
    },
    #[error(
        "target {url:?}: endpoint says {endpoint_scheme}:// but scheme={scheme}; give one of them"
    )]
    SchemeConflict {
        url: String,
        endpoint_scheme: &'static str,
        scheme: String,
    },
    #[error("target {url:?}: invalid HTTP cache URL: {reason}")]
    BadHttpUrl { url: String, reason: &'static str },
    #[error("target {url:?}: parameter {param:?} is not of the form name=value")]
    MalformedParam { url: String, param: String },
    #[error("target {url:?}: parameter {param:?} is given twice")]
    DuplicateParam { url: String, param: String },
    #[error("target {url:?}: unknown parameter {param:?}; a {scheme}:// target accepts {accepted}")]
    UnknownParam {
        url: String,
        param: String,
        scheme: &'static str,
        accepted: &'static str,
    },
    #[error(
        "target {url:?}: parameter {param:?} only applies to s3:// targets; a {scheme}:// target accepts {COMMON}"
    )]
    S3Param {
        url: String,
        param: String,
        scheme: &'static str,
    },
    #[error(
        "target {url:?}: signing keys are not given in the target URL; list their files in `secret-key-files` in the nix-outbox configuration"
    )]
    SecretKeyParam { url: String },
    #[error("target {url:?}: {param}={value:?} is invalid: expected {expected}")]
    BadValue {
        url: String,
        param: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "target {url:?}: compression {name:?} is not supported; use compression=zstd (the default), xz or none"
    )]
    UnsupportedCompression { url: String, name: String },
    #[error(
        "target {url:?}: compression-level={level} is out of range for {compression}: use {range}"
    )]
    LevelOutOfRange {
        url: String,
        compression: &'static str,
        level: i64,
        range: &'static str,
    },
    #[error("target {url:?}: compression-level has no effect with compression=none; remove it")]
    LevelWithoutCompression { url: String },
    #[error(
        "target {url:?}: multipart-chunk-size and multipart-threshold have no effect with \
         multipart-upload=false; remove one"
    )]
    ChunkSizeWithoutMultipart { url: String },
    #[error(
        "target {url:?}: addressing-style=virtual cannot name bucket {bucket:?} in a host name: \
         its dots would make it several labels, which the server's TLS certificate does not \
         cover; use addressing-style=path (or auto, which picks it)"
    )]
    VirtualWithDots { url: String, bucket: String },
}
