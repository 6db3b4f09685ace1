//! Records one request header as requests pass: what a client really
//! sent, for servers that do not show it (s3s-fs keeps no storage class).

use std::sync::Mutex;

use hyper::Request;

/// One request as the watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The watched header's value, if the request had it.
    pub value: Option<String>,
}

#[derive(Default)]
pub(super) struct Watch {
    header: Option<String>,
    seen: Vec<Seen>,
}

impl Watch {
    pub(super) fn set(&mut self, header: &str) {
        self.header = Some(header.to_ascii_lowercase());
        self.seen.clear();
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.seen.clone()
    }
}

pub(super) fn record<B>(watch: &Mutex<Watch>, req: &Request<B>) {
    let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
    let Some(name) = w.header.clone() else {
        return;
    };
    let value = req
        .headers()
        .get(name.as_str())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    w.seen.push(Seen {
        method: req.method().as_str().to_owned(),
        target,
        value,
    });
}
