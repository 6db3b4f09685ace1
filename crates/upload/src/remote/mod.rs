//! What the object-store target and its NAR writers share: the client,
//! requests with deadlines, and turning object_store's errors into
//! [`UploadError`]s that say what to fix and whether to retry soon.

pub(crate) mod aws_credentials;
pub(crate) mod multipart_cleanup;
pub(crate) mod throttle;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};

use crate::error::{RemoteErrorKind, UploadError};
use multipart_cleanup::{MultipartCleanup, Sweep};

pub(crate) const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
pub(crate) const NARINFO_TYPE: &str = "text/x-nix-narinfo";
pub(crate) const NAR_TYPE: &str = "application/x-nix-nar";
pub(crate) const LISTING_TYPE: &str = "application/json";

/// A remote cache: the client plus what error messages need.
#[derive(Clone)]
pub(crate) struct Remote {
    pub store: Arc<dyn ObjectStore>,
    pub id: Arc<str>,
    pub is_s3: bool,
    /// Where the credentials came from (never the secret), for messages
    /// about rejected credentials.
    pub credentials: Arc<str>,
    /// Finds multipart uploads whose id was lost (S3 only).
    pub cleanup: Option<Arc<MultipartCleanup>>,
    /// `storage-class` (S3 only): sent with every object written.
    pub storage_class: Option<Arc<str>>,
}

/// Only the id: the client's own `Debug` is long and holds credentials
/// (object_store redacts the secret, but there is no need to rely on it).
impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The attributes of an object written: its type, and the storage
    /// class if one is set (on a `PUT` and on the request that starts a
    /// multipart upload, as Nix 2.35 sends it; S3 takes the class from
    /// those).
    pub(crate) fn attributes(&self, content_type: &'static str) -> Attributes {
        let mut attrs = content_type_attr(content_type);
        if let Some(c) = &self.storage_class {
            attrs.insert(Attribute::StorageClass, c.to_string().into());
        }
        attrs
    }

    /// Writes `key` in one request.
    pub(crate) async fn put(
        &self,
        key: &str,
        payload: PutPayload,
        content_type: &'static str,
    ) -> Result<(), UploadError> {
        let len = payload.content_length() as u64;
        let opts = PutOptions {
            attributes: self.attributes(content_type),
            ..Default::default()
        };
        let path = ObjectPath::from(key);
        let fut = self.store.put_opts(&path, payload, opts);
        self.deadline("write", key, len, fut).await?;
        Ok(())
    }

    /// Looks for uploads left in progress under `key` and aborts them, in
    /// the background (see [`crate::remote::multipart_cleanup`]).
    pub(crate) fn sweep_uploads(&self, key: &str, why: Sweep) {
        if let Some(c) = &self.cleanup {
            c.sweep(key, why);
        }
    }

    /// Runs one request (retries included) with a deadline that grows with
    /// the bytes it sends: object_store's own timeout is per client, and no
    /// single value suits both a narinfo and a 5 GiB part. The deadline
    /// assumes at least 128 KiB/s, so only a stalled server trips it.
    pub(crate) async fn deadline<T>(
        &self,
        op: &'static str,
        key: &str,
        bytes: u64,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T, UploadError> {
        let limit = Duration::from_secs(120 + bytes / (128 * 1024));
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| self.error(op, key, e)),
            Err(_) => Err(UploadError::Remote {
                target: self.id.to_string(),
                op,
                key: key.to_owned(),
                kind: RemoteErrorKind::Unavailable,
                detail: format!("no answer within {} s", limit.as_secs()),
            }),
        }
    }

    /// Classifies a failed request and explains it.
    pub(crate) fn error(&self, op: &'static str, key: &str, e: object_store::Error) -> UploadError {
        let text = chain_text(&e);
        let code = s3_code(&text);
        let status = status_in(&text);
        let said = match &code {
            Some(c) => format!(" (the server said {c})"),
            None => String::new(),
        };
        use object_store::Error as E;
        let (kind, why) = match &e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. }
                if !self.is_s3 || is_credential_code(code.as_deref()) =>
            {
                let kind = if self.is_s3 {
                    RemoteErrorKind::Credentials
                } else {
                    RemoteErrorKind::Denied
                };
                (kind, self.credentials_hint(&said))
            }
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
                RemoteErrorKind::Denied,
                format!(
                    "access denied{said} for {}. The keys are valid but may lack permission: \
                     allow s3:GetObject, s3:PutObject, s3:AbortMultipartUpload and s3:ListBucket \
                     on the bucket",
                    self.credentials
                ),
            ),
            E::NotFound { .. } if code.as_deref() == Some("NoSuchBucket") || op != "read" => (
                RemoteErrorKind::NotFound,
                format!(
                    "not found{said}: the {} does not exist; create it first",
                    if self.is_s3 { "bucket" } else { "base URL" }
                ),
            ),
            E::NotFound { .. } => (RemoteErrorKind::NotFound, format!("not found{said}")),
            E::Precondition { .. } | E::NotImplemented { .. } | E::NotSupported { .. } => {
                (RemoteErrorKind::Rejected, format!("refused{said}"))
            }
            _ if transport_failure(&e) => (
                RemoteErrorKind::Unavailable,
                "the server could not be reached or did not answer".to_owned(),
            ),
            // 408 (timeout), 409 (conflicting request) and 429 (throttled)
            // are the 4xx answers that change by themselves.
            _ => match status {
                Some(s) if (400..500).contains(&s) && !matches!(s, 408 | 409 | 429) => (
                    RemoteErrorKind::Rejected,
                    format!("refused with HTTP {s}{said}"),
                ),
                Some(s) => (RemoteErrorKind::Unavailable, format!("HTTP {s}{said}")),
                None => (RemoteErrorKind::Unavailable, format!("failed{said}")),
            },
        };
        UploadError::Remote {
            target: self.id.to_string(),
            op,
            key: key.to_owned(),
            kind,
            detail: format!("{why}. Details: {}", truncate(&text, 600)),
        }
    }

    fn credentials_hint(&self, said: &str) -> String {
        if self.is_s3 {
            format!(
                "the server rejected our credentials{said}: they are wrong, expired or for another \
                 server or region. We used {}",
                self.credentials
            )
        } else {
            format!(
                "the server requires authentication{said}; nix-outbox sends none to HTTP caches, \
                 so allow anonymous PUT from this host (or use an s3:// target)"
            )
        }
    }
}

pub(crate) fn content_type_attr(content_type: &'static str) -> Attributes {
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, content_type.into());
    attrs
}

/// S3 error codes that mean the credentials themselves are bad, as opposed
/// to valid credentials lacking permission (`AccessDenied`).
fn is_credential_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "SignatureDoesNotMatch"
                | "InvalidAccessKeyId"
                | "InvalidToken"
                | "ExpiredToken"
                | "TokenRefreshRequired"
                | "InvalidSecurity"
                | "AuthorizationHeaderMalformed"
        )
    ) || code.is_none()
}

/// The error and its sources, joined: object_store keeps the HTTP status
/// and the response body in types it does not export, so their text is
/// the only way to them.
fn chain_text(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cur = s.source();
    }
    text
}

/// A transport failure (connect, timeout, reset) anywhere in the chain.
fn transport_failure(e: &object_store::Error) -> bool {
    let mut cur = e.source();
    while let Some(s) = cur {
        if s.downcast_ref::<object_store::client::HttpError>()
            .is_some()
        {
            return true;
        }
        cur = s.source();
    }
    false
}

/// The `<Code>` of an S3 error body.
fn s3_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = &text[start..start + len];
    code.bytes()
        .all(|b| b.is_ascii_alphanumeric())
        .then(|| code.to_owned())
}

/// The status in object_store's "…status code: 403 Forbidden…" message.
fn status_in(text: &str) -> Option<u16> {
    let start = text.find("status code: ")? + "status code: ".len();
    text.get(start..start + 3)?.parse().ok()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_object_store_prints() {
        let text = "Generic S3 error: Error performing PUT http://h/b/k in 2ms - Server returned \
                    non-2xx status code: 400 Bad Request: <?xml version=\"1.0\"?><Error>\
                    <Code>EntityTooSmall</Code><Message>m</Message></Error>";
        assert_eq!(s3_code(text).as_deref(), Some("EntityTooSmall"));
        assert_eq!(status_in(text), Some(400));
        assert_eq!(s3_code("<Code>a b</Code>"), None);
        assert_eq!(status_in("status code: 5"), None);
        assert_eq!(truncate("héllo", 2), "h");
    }

    #[test]
    fn credential_codes() {
        assert!(is_credential_code(Some("SignatureDoesNotMatch")));
        assert!(
            is_credential_code(None),
            "a 403 without a body, e.g. to HEAD"
        );
        assert!(!is_credential_code(Some("AccessDenied")));
    }
}
