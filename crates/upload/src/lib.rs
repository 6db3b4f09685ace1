//! Uploading store paths to binary caches that a stock Nix (2.8 and newer)
//! substitutes from and verifies.
//!
//! - [`TargetConfig`] parses a target URL in Nix's store-URI syntax
//!   (`file:///var/cache/nix?compression=xz`, `s3://bucket?region=…`,
//!   `https://host/path`).
//! - [`Target`] is a cache's storage ([`FileTarget`] for directories,
//!   [`ObjectStoreTarget`] for S3 buckets and WebDAV-style HTTP servers),
//!   opened from a config with [`open_target`].
//! - [`upload_path`] streams one path's NAR from the daemon, compresses,
//!   checks it against the store's record, and publishes NAR then narinfo;
//!   [`upload_closure`] does that for a closure, references first.
//! - [`upload_build_log`] publishes a derivation's build log as
//!   `log/<drv>` (read from Nix's log directory, decompressed, capped).
//! - [`upload_realisation`] publishes a content-addressed derivation
//!   output's realisation, signed, as `realisations/<id>.doi` (Nix ≤ 2.34),
//!   and [`upload_build_trace`] as `build-trace-v2/<drv>/<output>.doi`
//!   (Nix 2.35).
//! - [`UploadError::is_transient`] tells the caller how soon to retry.
//! - [`CacheReader`] reads a cache back (narinfos, NAR streams, listing),
//!   for `nix-outbox verify`.
//!
//! The source tree, by concept:
//!
//! ```text
//! url/               target URLs: TargetConfig, TargetLocation, TargetUrlError
//! target/            the Target and NarWriter traits, open_target (mod.rs);
//!                    FileTarget (file.rs, file/writeback.rs);
//!                    ObjectStoreTarget for S3 and HTTP (object.rs)
//! remote/            S3 and HTTP servers through object_store: requests and
//!                    their errors (mod.rs), AWS credentials, Retry-After
//!                    (throttle.rs), multipart uploads whose id was lost
//!                    (multipart_cleanup.rs)
//! nar_writer/        a NAR's one pass: hashing, listing and compression
//!                    (sink.rs, listing_tee.rs) into an object store: in
//!                    parts for S3 (multipart.rs), or from a temporary file
//!                    in one PUT (temp_file.rs)
//! pipeline.rs        upload_path: one path, NAR then narinfo
//! closure_upload.rs  upload_closure: a closure, references first
//! build_log.rs       build logs
//! realisation.rs     CA realisations
//! cache_reader.rs    CacheReader (cache_reader/: local files, tests)
//! compress.rs        Compression
//! error.rs           UploadError
//! ```

mod build_log;
mod cache_reader;
mod closure_upload;
mod compress;
mod error;
mod nar_writer;
mod pipeline;
mod realisation;
mod remote;
mod target;
mod url;
pub mod verify;

pub use build_log::{
    BuildLogError, BuildLogOutcome, DEFAULT_LOG_DIR, MAX_BUILD_LOG, default_log_dir,
    read_build_log, upload_build_log,
};
pub use cache_reader::{
    BlobReader, CacheReader, MAX_LISTING, MAX_NARINFO, READABLE_COMPRESSIONS, decompressor,
    is_cache_key,
};
pub use closure_upload::{
    ClosureReport, MEMORY_BUDGET, PathSelector, Skip, SkipReason, UploadAll, upload_closure,
    upload_closure_selected,
};
pub use compress::Compression;
pub use error::{NarDigest, RemoteErrorKind, UploadError};
pub use pipeline::{PathOutcome, upload_path};
pub use realisation::{
    BUILD_TRACE_DIR, BuildTraceEntry, RealisationError, RealisationOutcome,
    realisation_fingerprint, realisation_key, sign_realisation, upload_build_trace,
    upload_realisation,
};
pub use remote::throttle::{WAIT_IN_REQUEST, parse_retry_after};
pub use target::file::FileTarget;
pub use target::object::ObjectStoreTarget;
pub use target::{BoxFuture, EXISTENCE_CONCURRENCY, NarWriter, Target, UploadClaim, open_target};
pub use url::{
    DEFAULT_FILE_CONNECTIONS, DEFAULT_REMOTE_CONNECTIONS, MAX_CONNECTIONS, TargetConfig,
    TargetLocation, TargetUrlError,
};
