//! Untrusted input: a realisation's JSON as Nix's daemon returns it, which
//! we sign and upload. Nothing may panic; what signs must then carry a
//! signature that verifies against the fingerprint, and signing must not
//! change the fingerprint (it excludes `signatures`), nor depend on
//! signing twice.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::keys::{SecretKey, Signature};
use nix_outbox_upload::{realisation_fingerprint, sign_realisation};

fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::generate("fuzz-1").expect("a key"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the realisation's id, the rest its JSON.
    let (id, json) = text.split_once('\n').unwrap_or(("", text));
    let fingerprint = realisation_fingerprint(id, json);
    let Ok(signed) = sign_realisation(id, json, std::slice::from_ref(key())) else {
        return;
    };
    let fingerprint = fingerprint.expect("what signs has a fingerprint");
    assert_eq!(
        realisation_fingerprint(id, &signed).expect("signed JSON parses"),
        fingerprint,
        "signing changed the fingerprint"
    );
    let value: serde_json::Value = serde_json::from_str(&signed).expect("signed JSON is JSON");
    let ours = value["signatures"]
        .as_array()
        .expect("a signature list")
        .iter()
        .filter_map(|s| Signature::parse(s.as_str()?).ok())
        .filter(|s| key().public_key().verify(fingerprint.as_bytes(), s))
        .count();
    assert_eq!(ours, 1, "exactly one valid signature of ours in {signed}");
    assert_eq!(
        sign_realisation(id, &signed, std::slice::from_ref(key())).expect("signs again"),
        signed,
        "signing twice adds nothing"
    );
});
