//! Nix 2.35's form of a realisation, a "build trace" entry: the cache key
//! names the derivation and output, `build-trace-v2/<drv>/<output>.doi`,
//! and the file holds only the value, `{"outPath":…,"signatures":[…]}`,
//! with each signature an object `{"keyName":…,"sig":<base64>}`
//! (`BinaryCacheStore::registerDrvOutput`, `UnkeyedRealisation`'s JSON).
//!
//! Its fingerprint is the keyed entry without the signatures, as
//! nlohmann::json dumps it (compact, keys sorted):
//! `{"key":{"drvPath":"<drv>","outputName":"<out>"},"value":{"outPath":"<out path>"}}`
//! (`UnkeyedRealisation::fingerprint`). Every part is a store path base
//! name or an output name, checked to need no JSON escaping, so the
//! strings are written as they are.
//!
//! Nix 2.35 reads only this layout and Nix ≤ 2.34 only `realisations/`:
//! a cache that serves both publishes both.

use std::collections::BTreeSet;

use nix_outbox_core::StorePath;
use nix_outbox_core::keys::{SecretKey, Signature};

use super::RealisationError;

/// The directory of build traces in a cache. Nix 2.35 calls it "v2" and
/// says it will move on when the format changes.
pub const BUILD_TRACE_DIR: &str = "build-trace-v2";

/// One build trace entry: output `output` of `drv` is `out_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildTraceEntry {
    pub drv: StorePath,
    pub output: String,
    pub out_path: StorePath,
}

impl BuildTraceEntry {
    /// Checks that `drv` is a derivation and `output` an output name.
    pub fn new(
        drv: StorePath,
        output: &str,
        out_path: StorePath,
    ) -> Result<Self, RealisationError> {
        let entry = Self {
            drv,
            output: output.to_owned(),
            out_path,
        };
        if !entry.drv.is_derivation() {
            return Err(entry.malformed("the derivation path does not end in .drv"));
        }
        if !nix_outbox_store::is_valid_output_name(output) {
            return Err(entry.malformed("not an output name"));
        }
        Ok(entry)
    }

    /// `<drv>^<output>` (Nix's own spelling of a derivation output), for
    /// messages.
    pub fn label(&self) -> String {
        format!("{}^{}", self.drv.as_str(), self.output)
    }

    /// The cache key, `build-trace-v2/<drv>/<output>.doi`.
    pub fn cache_key(&self) -> String {
        format!(
            "{BUILD_TRACE_DIR}/{}/{}.doi",
            self.drv.as_str(),
            self.output
        )
    }

    /// What Nix signs and checks.
    pub fn fingerprint(&self) -> String {
        format!(
            r#"{{"key":{{"drvPath":"{}","outputName":"{}"}},"value":{{"outPath":"{}"}}}}"#,
            self.drv.as_str(),
            self.output,
            self.out_path.as_str()
        )
    }

    /// The file's contents: the value, signed with `keys` besides the
    /// signatures it has already (`<name>:<base64>`, from the daemon),
    /// each once, in Nix's order (key name, then the signature's bytes).
    pub fn signed_json(
        &self,
        existing: &[String],
        keys: &[SecretKey],
    ) -> Result<String, RealisationError> {
        let mut sigs = BTreeSet::new();
        for s in existing {
            let sig = Signature::parse(s)
                .map_err(|e| self.malformed(&format!("signature {s:?}: {e}")))?;
            if !is_plain(sig.name()) {
                return Err(self.malformed("a signature's key name needs escaping"));
            }
            sigs.insert(sig);
        }
        let fingerprint = self.fingerprint();
        for key in keys {
            sigs.insert(key.sign(fingerprint.as_bytes()));
        }
        let sigs: Vec<String> = sigs
            .iter()
            .map(|s| {
                let text = s.to_string();
                let b64 = &text[s.name().len() + 1..];
                format!(r#"{{"keyName":"{}","sig":"{b64}"}}"#, s.name())
            })
            .collect();
        Ok(format!(
            r#"{{"outPath":"{}","signatures":[{}]}}"#,
            self.out_path.as_str(),
            sigs.join(",")
        ))
    }

    fn malformed(&self, detail: &str) -> RealisationError {
        RealisationError::Malformed {
            id: self.label(),
            detail: detail.to_owned(),
        }
    }
}

/// A key name that JSON carries unescaped (Nix's are host-like names).
fn is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> BuildTraceEntry {
        BuildTraceEntry::new(
            StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv").unwrap(),
            "foo",
            StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap(),
        )
        .unwrap()
    }

    /// Nix 2.35's own test vector (libstore-tests, realisation
    /// `simple-fingerprint.txt` and `simple-sig.json`): the same
    /// fingerprint, and with its test key the same signature, byte for
    /// byte (ed25519 is deterministic).
    #[test]
    fn fingerprint_and_signature_match_nix() {
        let e = entry();
        assert_eq!(
            e.fingerprint(),
            r#"{"key":{"drvPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv","outputName":"foo"},"value":{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo"}}"#
        );
        let key = SecretKey::parse(
            "test-key:tU7tTvLcScf8pmz/eTV0BEtLmRsPpZfKaRcd0nCN+pysBZPHSeg61/u2oc7mIOewfuAY1V1BiX32homTaDJ2Jw==",
        )
        .unwrap();
        assert_eq!(
            e.signed_json(&[], &[key]).unwrap(),
            r#"{"outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo","signatures":[{"keyName":"test-key","sig":"WsjxK4/EI74COtzMDI+VCjQU9O4FydK0+YeY1CE5hUevogd+T+CPvNXza7oog3GTMS+ZlBwsC2S3ppwusKnJDg=="}]}"#
        );
        assert_eq!(
            e.cache_key(),
            "build-trace-v2/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv/foo.doi"
        );
    }

    #[test]
    fn signatures_are_kept_sorted_and_unique() {
        let e = entry();
        let a = SecretKey::generate("a-cache-1").unwrap();
        let z = SecretKey::generate("z-cache-1").unwrap();
        let theirs = z.sign(e.fingerprint().as_bytes()).to_string();
        let json = e
            .signed_json(&[theirs.clone(), theirs], &[a.clone(), z.clone()])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let sigs = v["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 2, "{json}");
        assert_eq!(sigs[0]["keyName"], "a-cache-1");
        assert_eq!(sigs[1]["keyName"], "z-cache-1");
        let ours =
            Signature::parse(&format!("a-cache-1:{}", sigs[0]["sig"].as_str().unwrap())).unwrap();
        assert!(a.public_key().verify(e.fingerprint().as_bytes(), &ours));
    }

    #[test]
    fn bad_parts_are_refused() {
        let out = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo").unwrap();
        assert!(BuildTraceEntry::new(out.clone(), "out", out.clone()).is_err());
        let drv = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv").unwrap();
        for name in ["", ".hidden", "a\"b", "a/b"] {
            assert!(
                BuildTraceEntry::new(drv.clone(), name, out.clone()).is_err(),
                "{name}"
            );
        }
        let e = entry();
        assert!(e.signed_json(&["garbage".into()], &[]).is_err());
    }
}
