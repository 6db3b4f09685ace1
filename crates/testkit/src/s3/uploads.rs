//! ListMultipartUploads for s3s-fs, which does not implement it (0.14.1
//! answers `501 NotImplemented`), built from the server's own bookkeeping.
//!
//! nix-outbox lists a NAR key's uploads in progress to abort those whose id
//! it lost (the answer to CreateMultipartUpload cut off). Real S3 stores
//! implement the call; to test that path against s3s-fs, the fault proxy
//! sends the listing to s3s-fs as it is (so s3s-fs checks its signature and
//! access: it reaches the 501 only after both) and replaces that 501 with
//! the listing made here. The aborts that follow are s3s-fs's own.
//!
//! s3s-fs records each upload in progress as a file
//! `.bucket-<b64 bucket>.object-<b64 key>.upload-<uuid>.metadata.json` in
//! its data directory (URL-safe base64 without padding), from the create
//! until the completion or abort.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What s3s-fs 0.14.1 says when asked to list uploads: its signature and
/// access checks passed, and only the operation is missing.
const NOT_IMPLEMENTED: &str = "ListMultipartUploads is not implemented yet";

/// The ListMultipartUploadsResult for the request `method path_and_query`
/// that s3s-fs with data directory `data_dir` answered with `upstream_body`
/// (a 501); `None` for any other request, which keeps its 501.
pub(super) fn answer(
    data_dir: &Path,
    method: &str,
    path_and_query: &str,
    upstream_body: &str,
) -> Option<String> {
    if method != "GET" || !upstream_body.contains(NOT_IMPLEMENTED) {
        return None;
    }
    let (path, query) = path_and_query.split_once('?')?;
    // Path-style only, as our S3 targets with an endpoint are addressed.
    let bucket = percent_decode(path.strip_prefix('/')?.trim_end_matches('/'))?;
    let mut pairs = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")));
    if !pairs.clone().any(|(k, _)| k == "uploads") {
        return None;
    }
    let prefix = match pairs.find(|(k, _)| *k == "prefix") {
        Some((_, v)) => percent_decode(v)?,
        None => String::new(),
    };
    let mut uploads = in_progress(data_dir, &bucket);
    uploads.retain(|(key, _)| key.starts_with(&prefix));
    uploads.sort();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
         <Prefix>{}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
        escape(&bucket),
        escape(&prefix)
    );
    for (key, id) in uploads {
        xml.push_str(&format!(
            "<Upload><Key>{}</Key><UploadId>{}</UploadId>\
             <StorageClass>STANDARD</StorageClass></Upload>",
            escape(&key),
            escape(&id)
        ));
    }
    xml.push_str("</ListMultipartUploadsResult>");
    Some(xml)
}

/// `(key, upload id)` of every upload in progress in `bucket`.
fn in_progress(data_dir: &Path, bucket: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return Vec::new();
    };
    let ours = format!(".bucket-{}.object-", URL_SAFE_NO_PAD.encode(bucket));
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&ours)?.strip_suffix(".metadata.json")?;
            let (key, id) = rest.split_once(".upload-")?;
            let key = String::from_utf8(URL_SAFE_NO_PAD.decode(key).ok()?).ok()?;
            Some((key, id.to_owned()))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_uploads_s3s_fs_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let file = |bucket: &str, key: &str, id: &str| {
            let name = format!(
                ".bucket-{}.object-{}.upload-{id}.metadata.json",
                b64(bucket),
                b64(key)
            );
            std::fs::write(dir.path().join(name), "{}").unwrap();
        };
        file("c", "nar/a&b.nar", "id-1");
        file("c", "nar/other.nar", "id-2");
        file("d", "nar/a&b.nar", "id-3");
        // A finished object's metadata, not an upload.
        let done = format!(".bucket-{}.object-{}.metadata.json", b64("c"), b64("x"));
        std::fs::write(dir.path().join(done), "{}").unwrap();
        let body =
            format!("<Error><Code>NotImplemented</Code><Message>{NOT_IMPLEMENTED}</Message>");

        let xml = answer(dir.path(), "GET", "/c?uploads&prefix=nar%2Fa%26b", &body).unwrap();
        assert!(xml.contains("<Prefix>nar/a&amp;b</Prefix>"), "{xml}");
        assert!(xml.contains("<Upload><Key>nar/a&amp;b.nar</Key><UploadId>id-1</UploadId>"));
        assert_eq!(xml.matches("<Upload>").count(), 1, "{xml}");
        let all = answer(dir.path(), "GET", "/c?uploads", &body).unwrap();
        assert_eq!(all.matches("<Upload>").count(), 2, "{all}");

        assert_eq!(answer(dir.path(), "GET", "/c?uploads", "other 501"), None);
        assert_eq!(answer(dir.path(), "PUT", "/c?uploads", &body), None);
        assert_eq!(answer(dir.path(), "GET", "/c?list-type=2", &body), None);
    }
}
