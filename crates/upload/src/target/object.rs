//! `s3://` and `http(s)://` targets, both through object_store: an S3
//! bucket (AWS or an S3-compatible store) or an HTTP server that accepts
//! WebDAV-style `PUT` (object_store's HttpStore, which also issues `MKCOL`
//! for directories a server wants created first).
//!
//! Keys are those of `nix copy`: `nix-cache-info`, `<hash>.narinfo`,
//! `<hash>.ls` and `nar/…`, with the content types Nix sends. A single
//! `PUT` (and S3's multipart completion) replaces an object atomically, so
//! readers never see a partial one.
//!
//! NARs go up one of two ways (see [`crate::nar_writer::multipart`] and
//! [`crate::nar_writer::temp_file`]):
//! - S3 with `multipart-upload=true` (the default): streamed in parts while
//!   being compressed, with bounded memory. The name must be chosen before
//!   the compressed bytes are known, so it is `<nix32 NarHash>-<random>`.
//! - HTTP, and S3 with `multipart-upload=false`: buffered in a temporary
//!   file, then sent in one `PUT` under the hash of the compressed bytes, as
//!   Nix names NARs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix_outbox_core::StoreDir;
use object_store::aws::AmazonS3Builder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, GetOptions, ObjectStore, RetryConfig};

use crate::error::{RemoteErrorKind, UploadError};
use crate::nar_writer::multipart::MultipartNarWriter;
use crate::nar_writer::temp_file::TempFileNarWriter;
use crate::remote::aws_credentials;
use crate::remote::multipart_cleanup::{self, MultipartCleanup};
use crate::remote::throttle::{Throttle, ThrottledConnector};
use crate::remote::{self, Remote};
use crate::target::{
    BoxFuture, NarWriter, Target, check_drv_name, check_hash_part, check_realisation_key,
};
use crate::url::{TargetConfig, TargetLocation};

const CACHE_INFO: &str = "nix-cache-info";

pub struct ObjectStoreTarget {
    remote: Remote,
    /// The part size setting, and whether to stream multipart at all
    /// (`None`: buffer in a temporary file and `PUT`).
    multipart: Option<TargetConfig>,
    cache_info_ok: AtomicBool,
    /// What the server said about when to come back.
    throttle: Arc<Throttle>,
    /// One per NAR in flight (`max-connections`, like the requests).
    nar_slots: tokio::sync::Semaphore,
}

impl ObjectStoreTarget {
    /// Builds the client for an `s3://` or `http(s)://` target, finding S3
    /// credentials (the order is in the crate README). Sends nothing yet.
    pub fn open(cfg: &TargetConfig) -> Result<Self, UploadError> {
        let id = cfg.id();
        let setup = |message: String| UploadError::TargetSetup {
            target: id.clone(),
            message,
        };
        // object_store's own timeout applies to every request alike; ours
        // (see `Remote::deadline`) grows with the request's size instead.
        let options = ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(Duration::from_secs(10));
        // Enough to ride out a server restart or throttling; after that the
        // queue's own backoff takes over.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 6,
            retry_timeout: Duration::from_secs(120),
        };
        let throttle = Arc::new(Throttle::default());
        let requests = Arc::new(tokio::sync::Semaphore::new(cfg.connections()));
        let connector = || ThrottledConnector {
            throttle: throttle.clone(),
            requests: requests.clone(),
        };
        // Multipart S3 uploads only: finds those whose id was lost.
        let mut cleanup = None;
        let (store, is_s3, credentials): (Arc<dyn ObjectStore>, bool, String) = match &cfg.location
        {
            TargetLocation::S3 {
                bucket,
                region,
                endpoint,
                scheme,
                profile,
            } => {
                let env = |name: &str| std::env::var(name).ok();
                let (creds, source) =
                    aws_credentials::resolve(profile.as_deref(), &env).map_err(setup)?;
                let options = options.with_allow_http(scheme == "http");
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_client_options(options.clone())
                    .with_retry(retry)
                    .with_http_connector(connector());
                // Deliberately no `with_checksum_algorithm`: the extra
                // checksum headers break several S3-compatible stores.
                // `addressing-style`, as Nix 2.35 resolves it: by default
                // AWS is addressed virtual-hosted and a custom endpoint
                // path-style. object_store wants the bucket in a
                // virtual-hosted endpoint.
                let hosted = cfg.addressing.virtual_hosted(bucket, endpoint.as_deref());
                let host = match (endpoint, hosted) {
                    (Some(e), false) => e.clone(),
                    (Some(e), true) => format!("{bucket}.{e}"),
                    (None, false) => format!("s3.{region}.amazonaws.com"),
                    (None, true) => format!("{bucket}.s3.{region}.amazonaws.com"),
                };
                b = b
                    .with_endpoint(format!("{scheme}://{host}"))
                    .with_virtual_hosted_style_request(hosted);
                match creds {
                    Some(c) => {
                        b = b
                            .with_access_key_id(c.key_id)
                            .with_secret_access_key(c.secret);
                        if let Some(t) = c.token {
                            b = b.with_token(t);
                        }
                    }
                    None => b = with_ambient_credentials(b),
                }
                let bucket_url = multipart_cleanup::bucket_url(&b, bucket, region);
                let s3 = Arc::new(
                    b.build()
                        .map_err(|e| setup(format!("cannot set up the S3 client: {e}")))?,
                );
                if cfg.multipart_upload {
                    let c = MultipartCleanup::new(
                        s3.clone(),
                        bucket_url,
                        &options,
                        connector(),
                        region,
                        &id,
                    )
                    .map_err(|e| setup(format!("cannot set up the S3 client: {e}")))?;
                    cleanup = Some(Arc::new(c));
                }
                (s3, true, source.to_string())
            }
            TargetLocation::Http { url } => {
                let http = HttpBuilder::new()
                    .with_url(url)
                    .with_client_options(options.with_allow_http(true))
                    .with_retry(retry)
                    .with_http_connector(connector())
                    .build()
                    .map_err(|e| setup(format!("cannot set up the HTTP client: {e}")))?;
                (Arc::new(http), false, "no credentials".to_owned())
            }
            TargetLocation::File { .. } => {
                return Err(UploadError::Internal(format!(
                    "{id} is not an object store"
                )));
            }
        };
        Ok(Self {
            remote: Remote {
                store,
                id: id.as_str().into(),
                is_s3,
                credentials: credentials.into(),
                cleanup,
                storage_class: cfg.storage_class.as_deref().map(Into::into),
            },
            multipart: (is_s3 && cfg.multipart_upload).then(|| cfg.clone()),
            cache_info_ok: AtomicBool::new(false),
            throttle,
            nar_slots: tokio::sync::Semaphore::new(cfg.connections()),
        })
    }

    /// The client, for reading the cache back ([`crate::cache_reader`]).
    pub(crate) fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Whether `key` exists (a HEAD request), for narinfos, build logs and
    /// realisations.
    async fn has_key(&self, key: String) -> Result<bool, UploadError> {
        let path = ObjectPath::from(key.as_str());
        let head = self
            .remote
            .store
            .get_opts(&path, GetOptions::new().with_head(true));
        match self.remote.deadline("look up", &key, 0, head).await {
            Ok(_) => Ok(true),
            Err(e) if is_missing_key(&e) => Ok(false),
            // Without s3:ListBucket a missing key gives 403, and a HEAD
            // answer has no body to tell it from bad credentials. Nix
            // treats it as missing too; bad credentials then show up
            // clearly on the next write.
            Err(UploadError::Remote {
                kind: RemoteErrorKind::Credentials | RemoteErrorKind::Denied,
                ..
            }) if self.remote.is_s3 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, UploadError> {
        let path = ObjectPath::from(key);
        let r = self.remote.deadline("read", key, 0, async {
            let got = self.remote.store.get_opts(&path, GetOptions::new()).await?;
            got.bytes().await
        });
        match r.await {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A 404 for the key itself, not for the whole bucket (which S3 reports
/// as `NoSuchBucket` and must not pass for an empty cache).
pub(crate) fn is_missing_key(e: &UploadError) -> bool {
    matches!(e, UploadError::Remote { kind: RemoteErrorKind::NotFound, detail, .. }
        if !detail.contains("NoSuchBucket"))
}

/// The environment variables of the AWS credential chain that object_store
/// handles itself (web identity, containers, instance metadata). Read one
/// by one rather than with `AmazonS3Builder::from_env`, which would also let
/// variables like `AWS_ENDPOINT` or `AWS_CHECKSUM_ALGORITHM` silently change
/// where and how we upload.
fn with_ambient_credentials(mut b: AmazonS3Builder) -> AmazonS3Builder {
    const VARS: &[&str] = &[
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_ENDPOINT_URL_STS",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_METADATA_ENDPOINT",
        "AWS_IMDSV1_FALLBACK",
    ];
    for var in VARS {
        if let (Ok(value), Ok(key)) = (std::env::var(var), var.to_ascii_lowercase().parse()) {
            b = b.with_config(key, value);
        }
    }
    b
}

/// What Nix's `BinaryCacheStore::registerDrvOutput` sends a realisation as.
const REALISATION_TYPE: &str = "application/json";

/// What Nix's `BinaryCacheStore::addBuildLog` sends a build log as.
const LOG_TYPE: &str = "text/plain; charset=utf-8";

impl Target for ObjectStoreTarget {
    fn id(&self) -> &str {
        &self.remote.id
    }

    fn nar_slots(&self) -> Option<&tokio::sync::Semaphore> {
        Some(&self.nar_slots)
    }

    fn retry_after(&self) -> Option<Duration> {
        self.throttle.remaining()
    }

    fn ensure_cache_info<'a>(
        &'a self,
        store_dir: &'a StoreDir,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            if self.cache_info_ok.load(Ordering::Acquire) {
                return Ok(());
            }
            let ours = store_dir.to_string();
            let existing = match self.get(CACHE_INFO).await {
                Ok(e) => e,
                // Without s3:ListBucket, S3 answers 403 AccessDenied for a
                // missing key; writing it then tells whether we may write.
                Err(UploadError::Remote {
                    kind: RemoteErrorKind::Denied,
                    ..
                }) if self.remote.is_s3 => None,
                Err(e) => return Err(e),
            };
            match existing {
                None => {
                    let text = format!("StoreDir: {ours}\n");
                    self.remote
                        .put(CACHE_INFO, text.into(), remote::CACHE_INFO_TYPE)
                        .await?;
                }
                Some(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let theirs = text
                        .lines()
                        .find_map(|l| l.strip_prefix("StoreDir:"))
                        .map(str::trim);
                    if let Some(theirs) = theirs
                        && theirs != ours
                    {
                        return Err(UploadError::StoreDirMismatch {
                            target: self.remote.id.to_string(),
                            cache_store_dir: theirs.to_owned(),
                            store_dir: ours,
                        });
                    }
                }
            }
            self.cache_info_ok.store(true, Ordering::Release);
            Ok(())
        })
    }

    fn has_narinfo<'a>(&'a self, hash_part: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            self.has_key(format!("{hash_part}.narinfo")).await
        })
    }

    fn put_narinfo<'a>(
        &'a self,
        hash_part: &'a str,
        text: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            let key = format!("{hash_part}.narinfo");
            let body = text.to_owned().into();
            self.remote.put(&key, body, remote::NARINFO_TYPE).await
        })
    }

    fn put_listing<'a>(
        &'a self,
        hash_part: &'a str,
        json: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_hash_part(hash_part)?;
            let key = format!("{hash_part}.ls");
            let body = json.to_owned().into();
            self.remote.put(&key, body, remote::LISTING_TYPE).await
        })
    }

    fn has_build_log<'a>(&'a self, drv: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_drv_name(drv)?;
            self.has_key(format!("log/{drv}")).await
        })
    }

    fn put_build_log<'a>(
        &'a self,
        drv: &'a str,
        log: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_drv_name(drv)?;
            // Uncompressed, as Nix's `log-compression` defaults to none.
            self.remote
                .put(&format!("log/{drv}"), log.into(), LOG_TYPE)
                .await
        })
    }

    fn has_realisation<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, UploadError>> {
        Box::pin(async move {
            check_realisation_key(key)?;
            self.has_key(key.to_owned()).await
        })
    }

    fn put_realisation<'a>(
        &'a self,
        key: &'a str,
        json: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), UploadError>> {
        Box::pin(async move {
            check_realisation_key(key)?;
            self.remote.put(key, json.into(), REALISATION_TYPE).await
        })
    }

    fn begin_nar(&self) -> BoxFuture<'_, Result<Box<dyn NarWriter>, UploadError>> {
        Box::pin(async move {
            let w: Box<dyn NarWriter> = match &self.multipart {
                Some(cfg) => Box::new(MultipartNarWriter::new(self.remote.clone(), cfg.clone())),
                None => Box::new(TempFileNarWriter::create(self.remote.clone())?),
            };
            Ok(w)
        })
    }
}

impl std::fmt::Debug for ObjectStoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreTarget")
            .field("id", &self.remote.id)
            .finish_non_exhaustive()
    }
}
