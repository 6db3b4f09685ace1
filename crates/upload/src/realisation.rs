//! Realisations of content-addressed derivations, published as
//! `realisations/<id>.doi` (what `BinaryCacheStore::registerDrvOutput`
//! writes and `queryRealisation` reads, Nix 2.4 to 2.34), and in Nix
//! 2.35's layout ([`build_trace`]).
//!
//! The JSON is the one the daemon gave us (`QueryRealisation`), with our
//! signatures added. A realisation's signature is ed25519 over its
//! fingerprint, which Nix defines as its JSON without `signatures`,
//! dumped by nlohmann::json: compact, object keys sorted
//! (`Realisation::fingerprint`), e.g.
//! `{"dependentRealisations":{},"id":"sha256:…!out","outPath":"…-name"}`.
//! We write that form ourselves (keys sorted explicitly, whatever
//! serde_json's map order is) rather than trust a generic serializer.

mod build_trace;

use std::collections::BTreeSet;

use nix_outbox_core::keys::SecretKey;
use nix_outbox_store::is_valid_drv_output_id;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::error::UploadError;
use crate::target::Target;
pub use build_trace::{BUILD_TRACE_DIR, BuildTraceEntry};

#[derive(Debug, Error)]
pub enum RealisationError {
    #[error("realisation {id} from the daemon is not what Nix writes: {detail}")]
    Malformed { id: String, detail: String },
    #[error("uploading realisation {id}: {source}")]
    Upload {
        id: String,
        #[source]
        source: Box<UploadError>,
    },
}

impl RealisationError {
    /// Whether trying again later can help (a malformed realisation stays so).
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Upload { .. })
    }

    pub fn is_transient(&self) -> bool {
        match self {
            Self::Upload { source, .. } => source.is_transient(),
            Self::Malformed { .. } => false,
        }
    }
}

/// What [`upload_realisation`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealisationOutcome {
    Uploaded,
    AlreadyPresent,
}

/// The cache key of realisation `id`.
pub fn realisation_key(id: &str) -> String {
    format!("realisations/{id}.doi")
}

/// Nix's fingerprint of the realisation `json` (without `signatures`).
pub fn realisation_fingerprint(id: &str, json: &str) -> Result<String, RealisationError> {
    let obj = parse(id, json)?;
    let mut out = String::new();
    write_canonical(&Value::Object(obj), &mut out, true);
    Ok(out)
}

/// `json` with one signature per key added (kept sorted and unique, as
/// Nix's `std::set` keeps them), in Nix's key order.
pub fn sign_realisation(
    id: &str,
    json: &str,
    keys: &[SecretKey],
) -> Result<String, RealisationError> {
    let mut obj = parse(id, json)?;
    let mut sigs: BTreeSet<String> = match obj.get("signatures") {
        None => BTreeSet::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| malformed(id, "a signature is not a string"))?,
        Some(_) => return Err(malformed(id, "`signatures` is not a list")),
    };
    let mut fingerprint = String::new();
    write_canonical(&Value::Object(obj.clone()), &mut fingerprint, true);
    for key in keys {
        sigs.insert(key.sign(fingerprint.as_bytes()).to_string());
    }
    obj.insert(
        "signatures".into(),
        Value::Array(sigs.into_iter().map(Value::String).collect()),
    );
    let mut out = String::new();
    write_canonical(&Value::Object(obj), &mut out, false);
    Ok(out)
}

/// Publishes realisation `id` (the daemon's `json`), signed with `keys`,
/// unless the cache has it already.
pub async fn upload_realisation(
    target: &dyn Target,
    id: &str,
    json: &str,
    keys: &[SecretKey],
) -> Result<RealisationOutcome, RealisationError> {
    let upload_err = |source| RealisationError::Upload {
        id: id.to_owned(),
        source: Box::new(source),
    };
    let key = realisation_key(id);
    if target.has_realisation(&key).await.map_err(upload_err)? {
        return Ok(RealisationOutcome::AlreadyPresent);
    }
    let signed = sign_realisation(id, json, keys)?;
    target
        .put_realisation(&key, signed.into_bytes())
        .await
        .map_err(upload_err)?;
    Ok(RealisationOutcome::Uploaded)
}

/// Publishes `entry` in Nix 2.35's layout, with the signatures the daemon
/// holds (`existing`) and ours, unless the cache has it already.
pub async fn upload_build_trace(
    target: &dyn Target,
    entry: &BuildTraceEntry,
    existing: &[String],
    keys: &[SecretKey],
) -> Result<RealisationOutcome, RealisationError> {
    let upload_err = |source| RealisationError::Upload {
        id: entry.label(),
        source: Box::new(source),
    };
    let key = entry.cache_key();
    if target.has_realisation(&key).await.map_err(upload_err)? {
        return Ok(RealisationOutcome::AlreadyPresent);
    }
    let signed = entry.signed_json(existing, keys)?;
    target
        .put_realisation(&key, signed.into_bytes())
        .await
        .map_err(upload_err)?;
    Ok(RealisationOutcome::Uploaded)
}

fn malformed(id: &str, detail: &str) -> RealisationError {
    RealisationError::Malformed {
        id: id.to_owned(),
        detail: detail.to_owned(),
    }
}

/// The JSON object, checked to be the realisation of `id`.
fn parse(id: &str, json: &str) -> Result<Map<String, Value>, RealisationError> {
    if !is_valid_drv_output_id(id) {
        return Err(malformed(id, "not a derivation output id"));
    }
    let v: Value = serde_json::from_str(json).map_err(|e| malformed(id, &e.to_string()))?;
    // Found by fuzzing (realisation_json): a float does not survive a
    // parse and re-print unchanged, so the fingerprint we sign would not
    // be the one a reader computes. Nix writes none in a realisation.
    if has_float(&v) {
        return Err(malformed(id, "it holds a number that is not an integer"));
    }
    let Value::Object(obj) = v else {
        return Err(malformed(id, "not a JSON object"));
    };
    if obj.get("id").and_then(Value::as_str) != Some(id) {
        return Err(malformed(id, "its `id` is another output's"));
    }
    match obj.get("outPath").and_then(Value::as_str) {
        Some(p) if !p.is_empty() && !p.contains('/') => {}
        _ => return Err(malformed(id, "`outPath` is not a store path basename")),
    }
    Ok(obj)
}

/// Whether `v` holds a number that is not an integer.
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// nlohmann::json's `dump()`: compact, object keys in byte order. With
/// `drop_signatures`, the top-level `signatures` is left out.
fn write_canonical(v: &Value, out: &mut String, drop_signatures: bool) {
    match v {
        Value::Object(m) => {
            let sorted: std::collections::BTreeMap<&String, &Value> = m
                .iter()
                .filter(|(k, _)| !(drop_signatures && k.as_str() == "signatures"))
                .collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out, false);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out, false);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:3aa6ff2dd8a22f72f6fb355512e8f2a3215ea5c8c89c482ed27025b878a1dbfd!out";

    fn json(sigs: &str) -> String {
        format!(
            r#"{{"outPath":"0c5f0m2wv8a0w2rf8yk2xkz4rpsj3xkf-ca","id":"{ID}","signatures":[{sigs}],"dependentRealisations":{{}}}}"#
        )
    }

    #[test]
    fn fingerprint_is_sorted_compact_and_unsigned() {
        let fp = realisation_fingerprint(ID, &json(r#""x:y""#)).unwrap();
        assert_eq!(
            fp,
            format!(
                r#"{{"dependentRealisations":{{}},"id":"{ID}","outPath":"0c5f0m2wv8a0w2rf8yk2xkz4rpsj3xkf-ca"}}"#
            )
        );
    }

    #[test]
    fn signing_adds_a_verifiable_signature_and_keeps_others() {
        let key = SecretKey::generate("test-cache-1").unwrap();
        let signed =
            sign_realisation(ID, &json(r#""zz:old""#), std::slice::from_ref(&key)).unwrap();
        let v: Value = serde_json::from_str(&signed).unwrap();
        let sigs: Vec<&str> = v["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(sigs.len(), 2, "{signed}");
        assert_eq!(sigs[1], "zz:old");
        let ours = nix_outbox_core::keys::Signature::parse(sigs[0]).unwrap();
        let fp = realisation_fingerprint(ID, &signed).unwrap();
        assert!(key.public_key().verify(fp.as_bytes(), &ours));
        assert!(
            signed.starts_with(r#"{"dependentRealisations":{},"id":"#),
            "{signed}"
        );
        // Signing again adds nothing.
        assert_eq!(sign_realisation(ID, &signed, &[key]).unwrap(), signed);
    }

    /// Found by the realisation_json fuzz target: a float re-printed after
    /// a parse is another number, so its fingerprint changed on signing.
    #[test]
    fn a_realisation_holding_a_float_is_refused() {
        let with_float =
            json("").replace(r#""signatures":[]"#, r#""signatures":[],"x":[4.44444e39]"#);
        assert!(with_float.contains("4.44444e39"));
        let e = sign_realisation(ID, &with_float, &[]).unwrap_err();
        assert!(e.to_string().contains("not an integer"), "{e}");
        assert!(realisation_fingerprint(ID, &with_float).is_err());
        let with_int = json("").replace(r#""signatures":[]"#, r#""signatures":[],"x":[4]"#);
        assert!(sign_realisation(ID, &with_int, &[]).is_ok());
    }

    #[test]
    fn a_realisation_of_another_output_is_refused() {
        let other = json("").replace("!out", "!dev");
        assert!(sign_realisation(ID, &other, &[]).is_err());
        assert!(sign_realisation(ID, "[]", &[]).is_err());
        assert!(sign_realisation("nope", &json(""), &[]).is_err());
    }
}
