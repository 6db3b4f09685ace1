//! Finding and aborting S3 multipart uploads whose id we never learned.
//!
//! An upload's id arrives only in the answer to CreateMultipartUpload.
//! When that answer is lost after the server created the upload (a reset,
//! a truncated body, our deadline), nothing can complete or abort that
//! upload, and the bucket keeps (and bills) it until a lifecycle rule
//! removes it. object_store also retries the create by itself after a
//! connection reset (it counts it as idempotent), so even a successful
//! upload can leave a twin behind. And an abort can fail (the cache is
//! down at that moment), leaving the upload we did know about.
//!
//! Every NAR key is unique per upload attempt (a random suffix, see
//! [`crate::nar_writer::multipart`]), so once our own upload is finished, any
//! upload still in progress under exactly that key is a leftover of ours.
//! ListMultipartUploads with `prefix=<key>` finds them, and
//! AbortMultipartUpload removes them. object_store 0.14 has no listing
//! call, so the request is signed here with its [`AwsAuthorizer`] and the
//! client's own credentials, and sent through a client from our
//! [`ThrottledConnector`], so the server's `Retry-After` holds for it too.
//!
//! All of it is best effort, in a background task with a bounded number of
//! tries and total time: it never changes the job's own result nor holds
//! a worker. A server that cannot list uploads for us (not implemented,
//! or no `s3:ListBucketMultipartUploads` permission) is asked once per
//! process; after that only a warning says what may be left.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::ClientOptions;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use tokio::time::Instant;

use crate::remote::throttle::{Throttle, ThrottledConnector};

/// Sweeps of one key: the first at once, then after growing pauses.
const ATTEMPTS: u32 = 8;
/// How long one key's sweep may go on, pauses and requests included.
const TOTAL_TIME: Duration = Duration::from_secs(180);
/// One listing or abort (object_store's retries of the abort included).
const REQUEST_TIME: Duration = Duration::from_secs(60);
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// What a target needs to list and abort its bucket's uploads.
pub(crate) struct MultipartCleanup {
    s3: Arc<AmazonS3>,
    http: HttpClient,
    /// The bucket's URL exactly as object_store addresses it, no slash at
    /// the end: `<endpoint>/<bucket>` (path-style) or the endpoint itself
    /// (virtual-hosted).
    bucket_url: String,
    region: String,
    target: Arc<str>,
    throttle: Arc<Throttle>,
    /// Why this server cannot list uploads for us, once it showed that.
    cannot_list: OnceLock<String>,
}

/// Why a key is swept; decides how loudly a failure is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// The upload was completed or aborted: anything found is a twin from
    /// a create object_store retried, which is rare.
    Finished,
    /// Starting the upload or aborting it failed: an upload is likely left.
    Suspect(&'static str),
}

/// How one sweep failed.
#[derive(Debug)]
enum Failure {
    /// Worth trying again shortly (unreachable, 5xx, throttled, an answer
    /// cut short).
    Transient(String),
    /// This server will not list uploads for us, now or later.
    CannotList(String),
}

impl MultipartCleanup {
    /// For the bucket `s3` writes to, at `bucket_url` (see [`bucket_url`]),
    /// sending with a client made from the same `options` as its own.
    pub(crate) fn new(
        s3: Arc<AmazonS3>,
        bucket_url: String,
        options: &ClientOptions,
        connector: ThrottledConnector,
        region: &str,
        target: &str,
    ) -> object_store::Result<Self> {
        let throttle = connector.throttle.clone();
        Ok(Self {
            s3,
            http: connector.connect(options)?,
            bucket_url,
            region: region.to_owned(),
            target: target.into(),
            throttle,
            cannot_list: OnceLock::new(),
        })
    }

    /// Aborts, in the background, every upload in progress under `key`.
    /// Call only once no upload of ours under `key` is running.
    pub(crate) fn sweep(self: &Arc<Self>, key: &str, why: Sweep) {
        if let Some(reason) = self.cannot_list.get() {
            if let Sweep::Suspect(what) = why {
                tracing::warn!(
                    "{}: {what}, so an incomplete multipart upload of {key} may be left in the \
                     bucket, and it cannot be found to abort: {reason}",
                    self.target
                );
            }
            return;
        }
        let (this, key) = (self.clone(), key.to_owned());
        tokio::spawn(async move { this.run(&key, why).await });
    }

    async fn run(&self, key: &str, why: Sweep) {
        let deadline = Instant::now() + TOTAL_TIME;
        let mut pause = FIRST_PAUSE;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let once = tokio::time::timeout_at(deadline, self.sweep_once(key));
            let result = once.await.unwrap_or_else(|_| {
                Err(Failure::Transient(format!(
                    "out of time ({} s)",
                    TOTAL_TIME.as_secs()
                )))
            });
            match result {
                Ok(0) => {
                    tracing::debug!("{}: no multipart upload of {key} left", self.target);
                    return;
                }
                Ok(n) => {
                    tracing::info!(
                        "{}: aborted {n} incomplete multipart upload(s) of {key} left by a lost answer",
                        self.target
                    );
                    return;
                }
                Err(Failure::CannotList(reason)) => {
                    // Said once per target; later sweeps only warn when
                    // something is likely left.
                    if self.cannot_list.set(reason.clone()).is_ok() {
                        tracing::warn!(
                            "{}: cannot look for incomplete multipart uploads, so those whose \
                             start or abort answer is lost stay in the bucket: {reason}",
                            self.target
                        );
                    }
                    if let Sweep::Suspect(what) = why {
                        tracing::warn!(
                            "{}: {what}; an incomplete multipart upload of {key} may be left",
                            self.target
                        );
                    }
                    return;
                }
                Err(Failure::Transient(e)) => last = e,
            }
            // The server's Retry-After, if longer than our own pause.
            let wait = pause.max(self.throttle.remaining().unwrap_or_default());
            if attempt == ATTEMPTS || Instant::now() + wait > deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
        let what = match why {
            Sweep::Suspect(what) => what,
            Sweep::Finished => "the upload is finished",
        };
        let text = format!(
            "{}: {what}, but checking for incomplete multipart uploads of {key} failed: {last}. \
             One may be left; a lifecycle rule deleting incomplete uploads removes it",
            self.target
        );
        match why {
            Sweep::Suspect(_) => tracing::warn!("{text}"),
            Sweep::Finished => tracing::info!("{text}"),
        }
    }

    /// Lists the uploads under `key` and aborts each; how many there were.
    async fn sweep_once(&self, key: &str) -> Result<usize, Failure> {
        let ids = self.list(key).await?;
        let path = ObjectPath::from(key);
        for id in &ids {
            let abort = self.s3.abort_multipart(&path, id);
            match tokio::time::timeout(REQUEST_TIME, abort).await {
                Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {}
                Ok(Err(e)) => return Err(Failure::Transient(format!("abort {id}: {e}"))),
                Err(_) => {
                    return Err(Failure::Transient(format!(
                        "abort {id}: no answer within {} s",
                        REQUEST_TIME.as_secs()
                    )));
                }
            }
        }
        Ok(ids.len())
    }

    /// The ids of the uploads in progress under exactly `key`.
    async fn list(&self, key: &str) -> Result<Vec<String>, Failure> {
        let transient = |e: String| Failure::Transient(e);
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| transient(format!("no credentials: {e}")))?;
        let url = format!("{}?uploads&prefix={}", self.bucket_url, query_encode(key));
        let mut req = HttpRequest::new(HttpRequestBody::empty());
        *req.uri_mut() = url
            .parse()
            .map_err(|e| Failure::CannotList(format!("cannot make a URL of {url}: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| transient(format!("cannot sign the listing: {e}")))?;
        let answer = async {
            let resp = self.http.execute(req).await?;
            let status = resp.status().as_u16();
            Ok::<_, object_store::client::HttpError>((status, resp.into_body().bytes().await?))
        };
        let (status, body) = match tokio::time::timeout(REQUEST_TIME, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(transient(format!("listing: {e}"))),
            Err(_) => {
                return Err(transient(format!(
                    "listing: no answer within {} s",
                    REQUEST_TIME.as_secs()
                )));
            }
        };
        let text = String::from_utf8_lossy(&body);
        let code = element(&text, "Code").unwrap_or_default();
        match status {
            200..=299 if text.contains("ListMultipartUploadsResult") => Ok(uploads_of(&text, key)),
            200..=299 => Err(transient(format!(
                "an answer that is no upload listing: {}",
                text.chars().take(200).collect::<String>()
            ))),
            501 => Err(Failure::CannotList(format!(
                "the server does not implement ListMultipartUploads ({code})"
            ))),
            403 if code == "AccessDenied" => Err(Failure::CannotList(
                "ListMultipartUploads was denied; allow s3:ListBucketMultipartUploads on the \
                 bucket"
                    .to_owned(),
            )),
            // Anything else may pass: throttling, 5xx, an expiring token.
            _ => Err(transient(format!("listing: HTTP {status} {code}"))),
        }
    }
}

/// The bucket's URL as object_store builds it from `builder` (see
/// `AmazonS3Builder::build`), so the listing goes where every other
/// request goes and is signed for the same host.
pub(crate) fn bucket_url(builder: &AmazonS3Builder, bucket: &str, region: &str) -> String {
    let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
    let virtual_hosted = builder
        .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
        .is_some_and(|v| v == "true");
    let url = match (endpoint, virtual_hosted) {
        (Some(e), true) => e,
        (Some(e), false) => format!("{}/{bucket}", e.trim_end_matches('/')),
        (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    };
    url.trim_end_matches('/').to_owned()
}

/// The upload ids among the `<Upload>`s of a ListMultipartUploadsResult
/// whose `<Key>` is exactly `key` (`prefix` also matches longer keys).
fn uploads_of(xml: &str, key: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Upload>") {
        let inner = &rest[start + "<Upload>".len()..];
        let Some(end) = inner.find("</Upload>") else {
            break;
        };
        let upload = &inner[..end];
        if element(upload, "Key").map(|k| unescape(&k)).as_deref() == Some(key)
            && let Some(id) = element(upload, "UploadId")
        {
            ids.push(unescape(&id));
        }
        rest = &inner[end + "</Upload>".len()..];
    }
    ids
}

/// The raw text of the first `<name>…</name>` in `xml`.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].to_owned())
}

/// Resolves XML's five named entities and character references.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let entity = rest.find(';').map(|end| (&rest[1..end], end));
        let resolved = entity.and_then(|(name, end)| {
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let n = match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => name.strip_prefix('#')?.parse().ok()?,
                    };
                    char::from_u32(n)?
                }
            };
            Some((c, end))
        });
        match resolved {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            // Not an entity: keep the `&` as it is.
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Percent-encodes a query value, all but S3's unreserved characters.
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "nar/0abc-0123456789abcdef.nar.zst";

    #[test]
    fn finds_the_uploads_of_exactly_the_key() {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult \
             xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket>\
             <KeyMarker></KeyMarker><Prefix>{KEY}</Prefix><IsTruncated>false</IsTruncated>\
             <Upload>\n  <Key>{KEY}</Key>\n  <UploadId>a&amp;b&#x2F;c&#61;</UploadId>\
             <Initiator><ID>x</ID></Initiator><Initiated>2026-01-01T00:00:00Z</Initiated>\
             </Upload><Upload><Key>{KEY}.old</Key><UploadId>other</UploadId></Upload>\
             <Upload><UploadId>second</UploadId><Key>{KEY}</Key></Upload>\
             </ListMultipartUploadsResult>"
        );
        assert_eq!(uploads_of(&xml, KEY), ["a&b/c=", "second"]);
        assert!(uploads_of("<ListMultipartUploadsResult/>", KEY).is_empty());
        // Cut short: the whole uploads seen so far only.
        let cut = &xml[..xml.find("<Upload><Key>").unwrap() + 20];
        assert_eq!(uploads_of(cut, KEY), ["a&b/c="]);
    }

    #[test]
    fn unescapes_entities() {
        assert_eq!(unescape("a&lt;b&gt;&quot;&apos;&#65;&#x42;"), "a<b>\"'AB");
        assert_eq!(unescape("&bogus; & &#xZZ;"), "&bogus; & &#xZZ;");
        assert_eq!(unescape("no entities"), "no entities");
    }

    #[test]
    fn encodes_the_prefix() {
        assert_eq!(query_encode(KEY), "nar%2F0abc-0123456789abcdef.nar.zst");
        assert_eq!(query_encode("a b+é"), "a%20b%2B%C3%A9");
    }

    #[test]
    fn bucket_urls_as_object_store_builds_them() {
        let b = || AmazonS3Builder::new().with_bucket_name("c");
        let path_style = b()
            .with_endpoint("http://127.0.0.1:9000/")
            .with_virtual_hosted_style_request(false);
        assert_eq!(
            bucket_url(&path_style, "c", "us-east-1"),
            "http://127.0.0.1:9000/c"
        );
        assert_eq!(
            bucket_url(&b(), "c", "eu-west-1"),
            "https://s3.eu-west-1.amazonaws.com/c"
        );
        let hosted = b().with_virtual_hosted_style_request(true);
        assert_eq!(
            bucket_url(&hosted, "c", "eu-west-1"),
            "https://c.s3.eu-west-1.amazonaws.com"
        );
    }
}
