//! Realisations of content-addressed derivations (experimental
//! `ca-derivations`): which store path an output of a derivation was built
//! to. A binary cache serves them as `realisations/<id>.doi`, where `<id>`
//! is `sha256:<hex hash modulo of the derivation>!<output name>` and the
//! file is the realisation's JSON, exactly as the daemon hands it to us:
//! `{"dependentRealisations":{…},"id":…,"outPath":"<basename>","signatures":[…]}`
//! (`BinaryCacheStore::registerDrvOutput`, Nix 2.4 to 2.34).
//!
//! Nix 2.35 keys them by the derivation's store path and output name
//! instead ("build traces"), and its daemon answers QueryRealisation only
//! in that form, under the `realisation-with-path-not-hash` feature:
//! [`Connection::query_build_trace`].

use std::collections::{HashMap, VecDeque};
use std::io;

use nix_outbox_core::derivation::hash_modulo::{self, HashModuloError};
use nix_outbox_core::derivation::{self, Derivation, MAX_DRV_SIZE};
use nix_outbox_core::nar::{self, NarVisitor};
use nix_outbox_core::{StoreDir, StorePath};

use crate::error::{ProtocolError, StoreError};
use crate::pool::StorePool;
use crate::protocol::{Connection, FEATURE_REALISATION_WITH_PATH};
use crate::wire::{self, Request};

pub const OP_QUERY_REALISATION: u64 = 43;

/// Whether `name` can be a derivation output's name (the characters of a
/// store path name, not starting with a dot), so that it needs no escaping
/// in JSON or in a cache key.
pub fn is_valid_output_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// What Nix 2.35's daemon knows of a derivation output it built or
/// substituted: the output path and the signatures it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildTrace {
    pub out_path: StorePath,
    /// `<key name>:<base64>`, as on the wire.
    pub signatures: Vec<String>,
}

/// Checks a `DrvOutput` id (`<algo>:<digest>!<output>`) and so that it
/// needs no escaping in JSON or in a cache key.
pub fn is_valid_drv_output_id(id: &str) -> bool {
    let Some((hash, output)) = id.split_once('!') else {
        return false;
    };
    let Some((algo, digest)) = hash.split_once(':') else {
        return false;
    };
    let name_ok = is_valid_output_name(output);
    !algo.is_empty()
        && algo.bytes().all(|b| b.is_ascii_alphanumeric())
        && !digest.is_empty()
        && digest.bytes().all(|b| b.is_ascii_alphanumeric())
        && name_ok
}

impl Connection {
    /// Whether the daemon answers realisation queries by derivation path
    /// ([`Connection::query_build_trace`]) rather than by hash
    /// ([`Connection::query_realisation`]). Nix 2.35 answers only so.
    pub fn keys_realisations_by_path(&self) -> bool {
        self.has_feature(FEATURE_REALISATION_WITH_PATH)
    }

    /// The build trace of output `output` of `drv` (Nix 2.35: the daemon
    /// must have named `realisation-with-path-not-hash`), or `None` when
    /// the store knows none.
    pub async fn query_build_trace(
        &mut self,
        sd: &StoreDir,
        drv: &StorePath,
        output: &str,
    ) -> Result<Option<BuildTrace>, StoreError> {
        if !self.keys_realisations_by_path() {
            return Err(StoreError::Internal(
                "the daemon did not name the realisation-with-path-not-hash feature".into(),
            ));
        }
        if !is_valid_output_name(output) {
            return Err(StoreError::Internal(format!(
                "{output:?} is not a derivation output name"
            )));
        }
        let mut req = Request::new(OP_QUERY_REALISATION);
        req.bytes(sd.display(drv).as_bytes())
            .bytes(output.as_bytes());
        self.send(req).await?;
        self.process_stderr().await?;
        let res = read_build_trace(self.reader(), sd).await;
        self.broken = res.is_err();
        Ok(res?)
    }

    /// The realisation of the derivation output `id` as JSON, or `None`
    /// when the store knows none (not built, not content-addressed, or a
    /// daemon older than protocol 1.27, which has no realisations).
    pub async fn query_realisation(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        if !is_valid_drv_output_id(id) {
            return Err(StoreError::Internal(format!(
                "{id:?} is not a derivation output id (<algo>:<hash>!<output>)"
            )));
        }
        if self.minor < 27 {
            return Ok(None);
        }
        let mut req = Request::new(OP_QUERY_REALISATION);
        req.bytes(id.as_bytes());
        self.send(req).await?;
        self.process_stderr().await?;
        let res = wire::read_string_list(self.reader(), "QueryRealisation reply").await;
        self.broken = res.is_err();
        let mut items = res?;
        if items.len() > 1 {
            self.broken = true;
            return Err(ProtocolError::Malformed {
                what: "QueryRealisation reply",
                detail: format!("{} realisations for one output", items.len()),
            }
            .into());
        }
        let Some(item) = items.pop() else {
            return Ok(None);
        };
        if self.minor >= 31 {
            return Ok(Some(item));
        }
        // Before 1.31 the reply is the output path alone; what a cache
        // needs is the JSON, which has nothing more to say then.
        let base = item.rsplit('/').next().unwrap_or(&item).to_owned();
        if base.is_empty() || base.contains('"') || base.contains('\\') {
            return Err(ProtocolError::Malformed {
                what: "QueryRealisation reply",
                detail: format!("{item:?} is not a store path"),
            }
            .into());
        }
        Ok(Some(format!(
            "{{\"dependentRealisations\":{{}},\"id\":\"{id}\",\"outPath\":\"{base}\",\"signatures\":[]}}"
        )))
    }
}

/// `std::optional<UnkeyedRealisation>` of protocol 1.38 with the
/// `realisation-with-path-not-hash` feature: a 0/1 tag, then the output's
/// full store path and a set of `<key>:<base64>` signatures.
pub(crate) async fn read_build_trace<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    sd: &StoreDir,
) -> Result<Option<BuildTrace>, ProtocolError> {
    const WHAT: &str = "QueryRealisation reply";
    if !wire::read_bool(r, WHAT).await? {
        return Ok(None);
    }
    let path = wire::read_string(r, WHAT).await?;
    let out_path = sd.parse_path(&path).map_err(|e| ProtocolError::Malformed {
        what: WHAT,
        detail: format!("{path:?} is not a store path: {e}"),
    })?;
    let signatures = wire::read_string_list(r, WHAT).await?;
    Ok(Some(BuildTrace {
        out_path,
        signatures,
    }))
}

/// A single-file NAR's contents, refusing anything else and anything
/// larger than a `.drv` may be.
#[derive(Default)]
struct FileContents {
    data: Vec<u8>,
    regular: bool,
}

impl NarVisitor for FileContents {
    fn regular(&mut self, _executable: bool, size: u64, _offset: u64) -> io::Result<()> {
        if size > MAX_DRV_SIZE as u64 {
            return Err(io::Error::other(format!(
                "{size} bytes, over the {MAX_DRV_SIZE}-byte limit for a .drv"
            )));
        }
        self.regular = true;
        Ok(())
    }
    fn data(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(chunk);
        Ok(())
    }
    fn symlink(&mut self, _target: &[u8]) -> io::Result<()> {
        Err(io::Error::other("a symlink, not a .drv file"))
    }
    fn directory_start(&mut self) -> io::Result<()> {
        Err(io::Error::other("a directory, not a .drv file"))
    }
}

/// Reads and parses `drv` through the daemon (NarFromPath), never from
/// the filesystem: the store may be remote, or not readable by us.
pub async fn read_derivation(pool: &StorePool, drv: &StorePath) -> Result<Derivation, StoreError> {
    let sd = pool.store_dir();
    let shown = sd.display(drv);
    let bad = |detail: String| StoreError::Derivation {
        path: shown.clone(),
        detail,
    };
    // The daemon's NAR is validated on the way in; the cap keeps a huge
    // path named like a .drv from being buffered.
    let sink = CappedSink(Vec::new());
    let (CappedSink(nar_bytes), _) = pool.get().await?.nar_from_path(sd, drv, sink).await?;
    let mut file = FileContents::default();
    nar::parse_nar(nar_bytes.as_slice(), &mut file).map_err(|e| bad(e.to_string()))?;
    if !file.regular {
        return Err(bad("not a regular file".into()));
    }
    derivation::parse_derivation(&file.data, sd).map_err(|e| bad(e.to_string()))
}

/// Collects a NAR, failing once it is larger than a `.drv` can be.
struct CappedSink(Vec<u8>);

impl io::Write for CappedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // NAR framing adds a few hundred bytes around the contents.
        if self.0.len() + buf.len() > MAX_DRV_SIZE + 4096 {
            return Err(io::Error::other("NAR too large for a .drv"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `d` has an output whose path is known only once built
/// (floating content-addressed).
fn is_floating(d: &Derivation) -> bool {
    !floating_outputs(d).is_empty()
}

/// The names of `d`'s floating content-addressed outputs (what Nix 2.35's
/// build traces are keyed by, with the `.drv`'s path); empty for any other
/// derivation.
pub fn floating_outputs(d: &Derivation) -> Vec<String> {
    d.outputs
        .iter()
        .filter(|o| o.path.is_none() && !o.hash_algo.is_empty() && o.hash.is_empty())
        .map(|o| o.name.clone())
        .collect()
}

/// The realisation ids (`(output, id)`) of `drv`'s floating
/// content-addressed outputs, the only ones a cache needs `.doi` files
/// for; empty for any other derivation. Reads `drv` and every input
/// `.drv` it depends on through the daemon.
pub async fn ca_realisation_ids(
    pool: &StorePool,
    drv: &StorePath,
) -> Result<Vec<(String, String)>, StoreError> {
    let top = read_derivation(pool, drv).await?;
    ca_realisation_ids_of(pool, drv, &top).await
}

/// [`ca_realisation_ids`] of `drv` already read as `top`.
pub async fn ca_realisation_ids_of(
    pool: &StorePool,
    drv: &StorePath,
    top: &Derivation,
) -> Result<Vec<(String, String)>, StoreError> {
    let sd = pool.store_dir();
    if !is_floating(top) {
        return Ok(Vec::new());
    }
    // Load the input graph first (async), then hash it (pure, sync).
    let mut loaded: HashMap<StorePath, Derivation> = HashMap::new();
    let mut todo: VecDeque<StorePath> = top.input_drvs.iter().map(|i| i.path.clone()).collect();
    while let Some(p) = todo.pop_front() {
        if loaded.contains_key(&p) {
            continue;
        }
        let d = read_derivation(pool, &p).await?;
        todo.extend(d.input_drvs.iter().map(|i| i.path.clone()));
        loaded.insert(p, d);
    }
    let hashes = hash_modulo::hash_derivation_modulo(top, &sd.display(drv), sd, true, |p| {
        loaded
            .get(p)
            .cloned()
            .ok_or_else(|| "not among the inputs read".to_owned())
    })
    .map_err(|e: HashModuloError| StoreError::Derivation {
        path: sd.display(drv),
        detail: e.to_string(),
    })?;
    let ids = hash_modulo::drv_output_ids(&hashes);
    Ok(ids
        .into_iter()
        .filter(|(o, _)| top.output(o).is_some_and(|o| o.path.is_none()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drv_output_ids() {
        for ok in [
            "sha256:3aa6ff2dd8a22f72f6fb355512e8f2a3215ea5c8c89c482ed27025b878a1dbfd!out",
            "sha256:0c5f0m2wv8a0w2rf8yk2xk!dev",
        ] {
            assert!(is_valid_drv_output_id(ok), "{ok}");
        }
        for bad in [
            "",
            "sha256:abc",
            "abc!out",
            "sha256:!out",
            "sha256:abc!",
            "sha256:abc!.hidden",
            "sha256:abc!o\"ut",
            "sha256:a/b!out",
            "sha256:abc!out/x",
        ] {
            assert!(!is_valid_drv_output_id(bad), "{bad}");
        }
    }
}
