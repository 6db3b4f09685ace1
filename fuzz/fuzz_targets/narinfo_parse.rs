//! Untrusted input: narinfo files fetched from any cache. Parsing must never
//! panic, and whatever parses must render and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::StoreDir;
use nix_outbox_core::narinfo::NarInfo;

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::default();
    if let Ok(ni) = NarInfo::parse(&sd, data) {
        let text = ni.render(&sd);
        let again = NarInfo::parse(&sd, text.as_bytes()).expect("rendered narinfo must parse");
        assert_eq!(again, ni);
    }
});
