//! Streaming a NAR into an S3 multipart upload while it is compressed, with
//! memory bounded by a few parts whatever the NAR's size.
//!
//! The compressor writes synchronously on a blocking thread; an async task
//! uploads. Between them, full parts travel over a bounded channel:
//!
//! ```text
//! compressor ─ write ─▶ [part being filled] ─ blocking_send ─▶ channel (1)
//!     ─▶ upload task ─▶ ≤ IN_FLIGHT parts being sent
//! ```
//!
//! so at most `2 + IN_FLIGHT` parts are in memory (4 × 8 MiB by default),
//! and a slow server slows the compressor down instead of filling memory.
//!
//! A NAR no larger than `multipart-threshold` (by default one part) is
//! sent with a single `PUT` instead: the task holds the parts until the
//! NAR ends or passes the threshold, so a threshold above one part costs
//! up to that much memory per NAR (at most 96 MiB, so that with the parts
//! in flight a NAR stays within the 130 MiB the scheduler charges a large
//! one). Nothing
//! is visible until [`finish`](NarWriter::finish) completes the upload;
//! abandoning the writer (abort, drop, or any error) aborts the multipart
//! upload so no orphaned parts are left to pay for. Uploads we cannot
//! abort ourselves (the answer to starting one lost with its id, an abort
//! that failed) are looked for under the key and aborted afterwards, in
//! the background (see [`crate::remote::multipart_cleanup`]).
//!
//! The object's name has to be fixed when the upload starts, before the
//! compressed bytes (and so their hash) exist. It is the NarHash the store
//! already recorded plus a random suffix: `nar/<nix32 NarHash>-<16 hex>.nar.zst`.
//! The narinfo's URL is free-form, so Nix follows it like any other. The
//! suffix makes every upload's name its own: without it, two uploads of the
//! same NAR (the same path uploaded twice at once, or two paths with equal
//! contents) with different compression output (another level, another
//! machine's thread count) would replace each other's bytes under a narinfo
//! whose FileHash describes the other.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nix_outbox_core::nixbase32;
use object_store::path::Path as ObjectPath;
use object_store::{PutMultipartOptions, PutPayload};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::compress::Compression;
use crate::error::{NarDigest, RemoteErrorKind, UploadError};
use crate::remote::multipart_cleanup::Sweep;
use crate::remote::{self, Remote};
use crate::target::{BoxFuture, NarWriter};
use crate::url::TargetConfig;

/// Parts uploaded concurrently: two hide one request's latency behind the
/// other's transfer.
const IN_FLIGHT: usize = 2;

enum Msg {
    /// A full part, and there is more to come.
    Part(Vec<u8>),
    /// The rest (possibly all) of the NAR: complete the upload.
    Last(Vec<u8>),
}

pub(crate) struct MultipartNarWriter {
    remote: Remote,
    cfg: TargetConfig,
    /// The runtime the upload task runs on: `prepare` is synchronous.
    runtime: tokio::runtime::Handle,
    /// Set by `prepare`.
    name: Option<String>,
    part_size: usize,
    buf: Vec<u8>,
    /// Dropping it without sending `Last` tells the task to abort.
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<()>>,
    /// The task's error, for whichever side asks first: a `write` blocked
    /// on the channel, or `finish`.
    failure: Arc<Mutex<Option<UploadError>>>,
}

impl MultipartNarWriter {
    /// A writer for the target `cfg` describes; nothing happens until
    /// `prepare`. Must be called inside the tokio runtime.
    pub(crate) fn new(remote: Remote, cfg: TargetConfig) -> Self {
        Self {
            remote,
            cfg,
            runtime: tokio::runtime::Handle::current(),
            name: None,
            part_size: 0,
            buf: Vec::new(),
            tx: None,
            task: None,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    fn take_failure(&self) -> Option<UploadError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Why the upload task cannot take more: its error, if it has one.
    fn stopped(&self) -> UploadError {
        self.take_failure().unwrap_or_else(|| {
            UploadError::Internal(format!(
                "{}: the NAR upload is not running (was the writer prepared?)",
                self.remote.id
            ))
        })
    }
}

impl Write for MultipartNarWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            // A full part is sent only once more data arrives, so the last
            // part always goes with `finish` and a one-part NAR is one PUT.
            if self.buf.len() == self.part_size {
                let part = std::mem::take(&mut self.buf);
                let sent = match &self.tx {
                    Some(tx) => tx.blocking_send(Msg::Part(part)).is_ok(),
                    None => false,
                };
                if !sent {
                    return Err(self.stopped().into_io());
                }
            }
            let n = rest.len().min(self.part_size - self.buf.len());
            // Grow towards the part size, but no further: a small NAR costs
            // little, and a full part is never over-allocated.
            if self.buf.capacity() - self.buf.len() < n {
                let want = (self.buf.len() + n)
                    .max(self.buf.capacity() * 2)
                    .max(64 * 1024)
                    .min(self.part_size);
                self.buf.reserve_exact(want - self.buf.len());
            }
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    /// Nothing to do: parts leave when full, the rest with `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NarWriter for MultipartNarWriter {
    /// Names the NAR after its NarHash, sizes the parts for its NarSize,
    /// and starts the upload task (which sends nothing until the first part
    /// is full or the NAR ends).
    fn prepare(
        &mut self,
        expected: &NarDigest,
        compression: Compression,
    ) -> Result<(), UploadError> {
        if self.name.is_some() {
            return Err(UploadError::Internal("NAR writer prepared twice".into()));
        }
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| UploadError::Internal(format!("no randomness for a NAR name: {e}")))?;
        let name = format!(
            "{}-{:016x}.nar{}",
            nixbase32::encode(&expected.hash.0),
            u64::from_le_bytes(suffix),
            compression.extension()
        );
        let part_size = self.cfg.part_size(expected.size);
        self.part_size = usize::try_from(part_size)
            .map_err(|_| UploadError::Internal(format!("part size {part_size} too large")))?;
        // At least one part: parts are what the writer holds anyway.
        let threshold = self.cfg.multipart_threshold.unwrap_or(0).max(part_size) as usize;
        let (tx, rx) = mpsc::channel(1);
        let (remote, key, slot) = (
            self.remote.clone(),
            format!("nar/{name}"),
            self.failure.clone(),
        );
        self.task = Some(self.runtime.spawn(async move {
            let mut rx = rx;
            if let Err(e) = upload(&remote, &key, threshold, &mut rx, &slot).await {
                report(&slot, e);
            }
            // Only now, with the error in place, may a writer blocked on
            // the channel wake up to look for it.
            drop(rx);
        }));
        self.tx = Some(tx);
        self.name = Some(name);
        Ok(())
    }

    /// Completes the upload under the name chosen in `prepare`; the
    /// conventional `file_name` cannot be used, since parts went up before
    /// it was known.
    fn finish(
        mut self: Box<Self>,
        _file_name: String,
    ) -> BoxFuture<'static, Result<String, UploadError>> {
        Box::pin(async move {
            let last = std::mem::take(&mut self.buf);
            if let Some(tx) = self.tx.take() {
                // A failed send means the task has stopped; its error is
                // in the slot.
                let _ = tx.send(Msg::Last(last)).await;
            }
            let Some(task) = self.task.take() else {
                return Err(self.stopped());
            };
            task.await.map_err(|e| {
                UploadError::Internal(format!("{}: NAR upload task failed: {e}", self.remote.id))
            })?;
            match (self.take_failure(), self.name.take()) {
                (Some(e), _) => Err(e),
                (None, Some(name)) => Ok(name),
                (None, None) => Err(self.stopped()),
            }
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            self.tx = None;
            if let Some(task) = self.task.take() {
                let _ = task.await;
            }
        })
    }
}

/// The upload task: one `PUT` for a NAR of at most `threshold` bytes
/// (`multipart-threshold`; the parts up to it are held until the NAR
/// ends or passes it), or a multipart upload that is completed on `Last`
/// and aborted on any error or when the writer goes away.
async fn upload(
    remote: &Remote,
    key: &str,
    threshold: usize,
    rx: &mut mpsc::Receiver<Msg>,
    failure: &Mutex<Option<UploadError>>,
) -> Result<(), UploadError> {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut held_len = 0;
    // The part that ends the NAR, when it came before the upload started.
    let mut last = None;
    // A `Part` comes only when more data follows: once the held parts reach
    // the threshold, the NAR is known to be larger.
    while held_len < threshold {
        match rx.recv().await {
            Some(Msg::Part(p)) => {
                held_len += p.len();
                held.push(p);
            }
            Some(Msg::Last(p)) if held_len + p.len() <= threshold => {
                held.push(p);
                let all: PutPayload = held.into_iter().map(Bytes::from).collect();
                return remote.put(key, all, remote::NAR_TYPE).await;
            }
            Some(Msg::Last(p)) => {
                last = Some(p);
                break;
            }
            // Abandoned before anything was sent: nothing to clean up.
            None => return Ok(()),
        }
    }
    let path = ObjectPath::from(key);
    let opts = PutMultipartOptions {
        attributes: remote.attributes(remote::NAR_TYPE),
        ..Default::default()
    };
    let start = remote.store.put_multipart_opts(&path, opts);
    let mut upload = match remote.deadline("start uploading", key, 0, start).await {
        Ok(u) => u,
        Err(e) => {
            // Unless the server clearly refused, it may have created the
            // upload and lost only its answer, with the id we would need to
            // abort it.
            if !is_refusal(&e) {
                remote.sweep_uploads(
                    key,
                    Sweep::Suspect("starting the upload failed without a clear refusal"),
                );
            }
            return Err(e);
        }
    };
    let mut parts = JoinSet::new();
    let mut send = |parts: &mut JoinSet<_>, data: Vec<u8>| {
        let len = data.len() as u64;
        let fut = upload.put_part(data.into());
        let (remote, key) = (remote.clone(), key.to_owned());
        parts.spawn(async move { remote.deadline("upload a part of", &key, len, fut).await });
    };
    let sent: Result<bool, UploadError> = async {
        for p in held {
            while parts.len() >= IN_FLIGHT {
                join_one(&mut parts).await?;
            }
            send(&mut parts, p);
        }
        if let Some(p) = last {
            if !p.is_empty() {
                send(&mut parts, p);
            }
            while !parts.is_empty() {
                join_one(&mut parts).await?;
            }
            return Ok(true);
        }
        loop {
            while parts.len() >= IN_FLIGHT {
                join_one(&mut parts).await?;
            }
            match rx.recv().await {
                Some(Msg::Part(p)) => send(&mut parts, p),
                Some(Msg::Last(p)) => {
                    if !p.is_empty() {
                        send(&mut parts, p);
                    }
                    while !parts.is_empty() {
                        join_one(&mut parts).await?;
                    }
                    return Ok(true);
                }
                None => return Ok(false),
            }
        }
    }
    .await;
    match sent {
        Ok(true) => match remote.deadline("complete", key, 0, upload.complete()).await {
            Ok(_) => {
                // object_store retries a create whose answer was lost, so
                // even now a twin of this upload may be waiting.
                remote.sweep_uploads(key, Sweep::Finished);
                return Ok(());
            }
            Err(e) => report(failure, e),
        },
        Ok(false) => {}
        Err(e) => report(failure, e),
    }
    // Closing the channel (after the error is in place) makes a writer
    // blocked in `blocking_send` fail at once, not after the abort.
    rx.close();
    parts.shutdown().await;
    match remote.deadline("abort", key, 0, upload.abort()).await {
        Ok(()) => remote.sweep_uploads(key, Sweep::Finished),
        Err(e) => {
            // The NAR itself never became visible; its parts stay until the
            // sweep (or a lifecycle rule) removes them.
            tracing::warn!("{e}");
            remote.sweep_uploads(key, Sweep::Suspect("aborting the upload failed"));
        }
    }
    Ok(())
}

/// An answer saying the server did not act on the request (bad
/// credentials, no permission, no bucket, a refusal), as opposed to no
/// answer or one that says nothing about what was done.
fn is_refusal(e: &UploadError) -> bool {
    matches!(
        e,
        UploadError::Remote {
            kind: RemoteErrorKind::Credentials
                | RemoteErrorKind::Denied
                | RemoteErrorKind::NotFound
                | RemoteErrorKind::Rejected,
            ..
        }
    )
}

/// Records the upload's error for the writer (the first one wins).
fn report(slot: &Mutex<Option<UploadError>>, e: UploadError) {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(e);
}

async fn join_one(parts: &mut JoinSet<Result<(), UploadError>>) -> Result<(), UploadError> {
    match parts.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(UploadError::Internal(format!(
            "part upload task failed: {e}"
        ))),
        None => Ok(()),
    }
}
