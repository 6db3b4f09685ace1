//! Realisations of content-addressed derivations (experimental
//! `ca-derivations`): which store path an output of a derivation was built
//! to. A binary cache serves them as `realisations/<id>.doi`, where `<id>`
//! is `sha256:<hex hash modulo of the derivation>!<output name>` and the
//! file is the realisation's JSON, exactly as the daemon hands it to us:
//! `{"dependentRealisations":{…},"id":…,"outPath":"<basename>","signatures":[…]}`
//! (`BinaryCacheStore::registerDrvOutput`, Nix 2.4 to 2.34).

use crate::error::{ProtocolError, StoreError};
use crate::protocol::Connection;
use crate::wire::{self, Request};

pub const OP_QUERY_REALISATION: u64 = 43;

/// Checks a `DrvOutput` id (`<algo>:<digest>!<output>`) and so that it
/// needs no escaping in JSON or in a cache key.
pub fn is_valid_drv_output_id(id: &str) -> bool {
    let Some((hash, output)) = id.split_once('!') else {
        return false;
    };
    let Some((algo, digest)) = hash.split_once(':') else {
        return false;
    };
    let name_ok = !output.is_empty()
        && output.len() <= 211
        && !output.starts_with('.')
        && output
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
    !algo.is_empty()
        && algo.bytes().all(|b| b.is_ascii_alphanumeric())
        && !digest.is_empty()
        && digest.bytes().all(|b| b.is_ascii_alphanumeric())
        && name_ok
}

impl Connection {
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
