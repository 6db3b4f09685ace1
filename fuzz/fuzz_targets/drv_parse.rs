//! Untrusted input: `.drv` files named by `DRV_PATH`. Parsing must never
//! panic, and whatever parses must serialise and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::StoreDir;
use nix_outbox_core::derivation::parse_derivation;

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::default();
    if let Ok(drv) = parse_derivation(data, &sd) {
        let bytes = drv.to_aterm(&sd);
        let again = parse_derivation(&bytes, &sd).expect("serialised derivation must parse");
        assert_eq!(again, drv);
    }
});
