//! Answers for what the upstream does not implement: the fault proxy's
//! [`FaultProxy::fill_in`](super::FaultProxy::fill_in).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};

use super::{BoxError, ProxyBody, Shared, lock};

/// Given a request's method, path and query, and the body of the upstream's
/// `501 Not Implemented` answer to it: an XML body to answer `200` with
/// instead, or `None` to pass the 501 on.
pub type FillIn = Arc<dyn Fn(&str, &str, &str) -> Option<String> + Send + Sync>;

/// The upstream's 501 to `method target`, or what the fill-in answers
/// instead.
pub(super) async fn fill_in(
    resp: Response<Incoming>,
    method: &str,
    target: &str,
    shared: &Shared,
) -> Response<ProxyBody> {
    let f = lock(&shared.fill_in).clone();
    let (parts, body) = resp.into_parts();
    let Some(f) = f else {
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    };
    // A 501 cut short passes on as an empty one: f sees no reason to
    // answer it.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Some(xml) = f(method, target, &String::from_utf8_lossy(&body)) else {
        let body = Full::new(body).map_err(|e| match e {}).boxed();
        return Response::from_parts(parts, body);
    };
    shared.note(format!("  {method} {target}: upstream 501, filled in"));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/xml")
        .header("content-length", xml.len())
        .body(Full::new(Bytes::from(xml)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}
