//! The worker-protocol operations nix-outbox uses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use nix_outbox_core::nar;
use nix_outbox_core::{Sha256Hash, StoreDir, StorePath};
use tokio_util::io::SyncIoBridge;

use crate::error::{ProtocolError, StoreError};
use crate::protocol::Connection;
use crate::wire::{self, Request};

pub const OP_IS_VALID_PATH: u64 = 1;
pub const OP_QUERY_PATH_INFO: u64 = 26;
pub const OP_QUERY_VALID_PATHS: u64 = 31;
pub const OP_ADD_SIGNATURES: u64 = 37;
pub const OP_NAR_FROM_PATH: u64 = 38;
pub const OP_QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;

/// A store path's record in the Nix database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub nar_hash: Sha256Hash,
    pub references: BTreeSet<StorePath>,
    pub registration_time: u64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: BTreeSet<String>,
    pub ca: Option<String>,
}

fn parse_path(sd: &StoreDir, what: &'static str, s: String) -> Result<StorePath, StoreError> {
    sd.parse_path(&s).map_err(|source| StoreError::BadPath {
        what,
        path: s,
        source,
    })
}

impl Connection {
    pub async fn is_valid_path(
        &mut self,
        sd: &StoreDir,
        path: &StorePath,
    ) -> Result<bool, StoreError> {
        let mut req = Request::new(OP_IS_VALID_PATH);
        req.bytes(sd.display(path).as_bytes());
        self.send(req).await?;
        self.process_stderr().await?;
        let res = wire::read_bool(self.reader(), "IsValidPath reply").await;
        Ok(self.mark(res)?)
    }

    /// The subset of `paths` that is valid, in one round trip.
    pub async fn query_valid_paths(
        &mut self,
        sd: &StoreDir,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut req = Request::new(OP_QUERY_VALID_PATHS);
        let full: Vec<String> = paths.iter().map(|p| sd.display(p)).collect();
        req.string_list(&full);
        if self.minor >= 27 {
            req.u64(0); // don't substitute
        }
        self.send(req).await?;
        self.process_stderr().await?;
        let res = wire::read_string_list(self.reader(), "QueryValidPaths reply").await;
        let list = self.mark(res)?;
        list.into_iter()
            .map(|s| parse_path(sd, "QueryValidPaths reply", s))
            .collect()
    }

    /// The record of `path`, or `None` when it is not valid (never built,
    /// or garbage-collected).
    pub async fn query_path_info(
        &mut self,
        sd: &StoreDir,
        path: &StorePath,
    ) -> Result<Option<PathInfo>, StoreError> {
        let mut req = Request::new(OP_QUERY_PATH_INFO);
        req.bytes(sd.display(path).as_bytes());
        self.send(req).await?;
        match self.process_stderr().await {
            Ok(()) => {}
            // Before 1.17 the daemon reported an invalid path as an error.
            Err(ProtocolError::Remote(msg)) if self.minor < 17 && msg.contains("is not valid") => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        let minor = self.minor;
        let res = read_path_info(self.reader(), minor).await;
        let raw = self.mark(res)?;
        let Some(raw) = raw else { return Ok(None) };
        let full = sd.display(path);
        Ok(Some(PathInfo {
            deriver: (!raw.deriver.is_empty())
                .then(|| parse_path(sd, "deriver", raw.deriver))
                .transpose()?,
            nar_hash: Sha256Hash::parse(&raw.nar_hash).map_err(|source| StoreError::BadHash {
                path: full.clone(),
                hash: raw.nar_hash.clone(),
                source,
            })?,
            references: raw
                .references
                .into_iter()
                .map(|s| parse_path(sd, "references", s))
                .collect::<Result<_, _>>()?,
            registration_time: raw.registration_time,
            nar_size: raw.nar_size,
            ultimate: raw.ultimate,
            sigs: raw.sigs.into_iter().collect(),
            ca: (!raw.ca.is_empty()).then_some(raw.ca),
            path: path.clone(),
        }))
    }

    /// Output name → path for a derivation (op 41). Outputs whose path is
    /// not yet known (floating content-addressed, unbuilt) map to `None`.
    pub async fn query_derivation_output_map(
        &mut self,
        sd: &StoreDir,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreError> {
        let mut req = Request::new(OP_QUERY_DERIVATION_OUTPUT_MAP);
        req.bytes(sd.display(drv).as_bytes());
        self.send(req).await?;
        self.process_stderr().await?;
        let res = read_output_map(self.reader()).await;
        let pairs = self.mark(res)?;
        pairs
            .into_iter()
            .map(|(name, p)| {
                Ok((
                    name,
                    (!p.is_empty())
                        .then(|| parse_path(sd, "output map", p))
                        .transpose()?,
                ))
            })
            .collect()
    }

    /// Adds signatures to a path's record (trusted clients only; the daemon
    /// does not check them).
    pub async fn add_signatures(
        &mut self,
        sd: &StoreDir,
        path: &StorePath,
        sigs: &[String],
    ) -> Result<(), StoreError> {
        let mut req = Request::new(OP_ADD_SIGNATURES);
        req.bytes(sd.display(path).as_bytes()).string_list(sigs);
        self.send(req).await?;
        self.process_stderr().await?;
        let res = wire::read_u64(self.reader(), "AddSignatures reply").await;
        self.mark(res)?;
        Ok(())
    }

    /// Streams the NAR of `path` into `sink`, validating it on the way
    /// (the daemon sends it unframed, so parsing is how we find its end).
    /// Runs the synchronous NAR parser on a blocking thread; returns the
    /// sink and the NAR's size. Never buffers the whole NAR.
    pub async fn nar_from_path<W: Write + Send + 'static>(
        &mut self,
        sd: &StoreDir,
        path: &StorePath,
        sink: W,
    ) -> Result<(W, u64), StoreError> {
        // For a path that is not valid, Nix (2.8 at least) sends the end of
        // the log and then fails inside the dump, leaving an error frame where
        // the NAR should be and the connection unusable. Asking first costs
        // one round trip and keeps both the error and the connection clean.
        if !self.is_valid_path(sd, path).await? {
            return Err(StoreError::NotValid {
                path: sd.display(path),
            });
        }
        let mut req = Request::new(OP_NAR_FROM_PATH);
        req.bytes(sd.display(path).as_bytes());
        self.send(req).await?;
        self.process_stderr().await?;
        let reader = self.reader.take().expect("reader present");
        let bridge = SyncIoBridge::new(reader);
        let joined = tokio::task::spawn_blocking(move || {
            let mut bridge = bridge;
            let mut sink = sink;
            let res = nar::copy_nar(&mut bridge, &mut sink);
            (bridge.into_inner(), sink, res)
        })
        .await;
        let (reader, sink, res) = match joined {
            Ok(t) => t,
            Err(e) => {
                self.broken = true;
                return Err(StoreError::Internal(format!(
                    "NAR streaming task failed: {e}"
                )));
            }
        };
        self.reader = Some(reader);
        match res {
            Ok(n) => {
                self.broken = false;
                Ok((sink, n))
            }
            Err(source) => {
                // We stopped mid-NAR: the rest of it is still in the stream.
                self.broken = true;
                Err(StoreError::Nar {
                    path: sd.display(path),
                    source,
                })
            }
        }
    }

    /// Ends an operation: a fully read reply puts the connection back in
    /// sync; a half-read one leaves it broken.
    fn mark<T>(&mut self, res: Result<T, ProtocolError>) -> Result<T, ProtocolError> {
        self.broken = res.is_err();
        res
    }
}

async fn read_output_map<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Vec<(String, String)>, ProtocolError> {
    let n = wire::read_u64(r, "output map").await?;
    if n > 4096 {
        return Err(ProtocolError::Malformed {
            what: "output map",
            detail: format!("{n} outputs"),
        });
    }
    let mut v = Vec::new();
    for _ in 0..n {
        v.push((
            wire::read_string(r, "output name").await?,
            wire::read_string(r, "output path").await?,
        ));
    }
    Ok(v)
}

/// QueryPathInfo's reply as sent, before validation.
#[derive(Debug, Default)]
pub struct RawPathInfo {
    pub deriver: String,
    pub nar_hash: String,
    pub references: Vec<String>,
    pub registration_time: u64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: Vec<String>,
    pub ca: String,
}

/// Decodes QueryPathInfo's reply; public so the fuzz target can drive it.
pub async fn read_path_info<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    minor: u64,
) -> Result<Option<RawPathInfo>, ProtocolError> {
    if minor >= 17 && !wire::read_bool(r, "QueryPathInfo valid flag").await? {
        return Ok(None);
    }
    let mut info = RawPathInfo {
        deriver: wire::read_string(r, "deriver").await?,
        nar_hash: wire::read_string(r, "narHash").await?,
        references: wire::read_string_list(r, "references").await?,
        registration_time: wire::read_u64(r, "registrationTime").await?,
        nar_size: wire::read_u64(r, "narSize").await?,
        ..Default::default()
    };
    if minor >= 16 {
        info.ultimate = wire::read_bool(r, "ultimate").await?;
        info.sigs = wire::read_string_list(r, "sigs").await?;
        info.ca = wire::read_string(r, "ca").await?;
    }
    Ok(Some(info))
}
