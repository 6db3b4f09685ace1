//! Untrusted input: NAR streams from the daemon and from caches. The parser
//! must never panic, and `copy_nar` must copy exactly the bytes it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::nar::{copy_nar, parse_complete};

fuzz_target!(|data: &[u8]| {
    let whole = parse_complete(data);
    let mut out = Vec::new();
    if let Ok(n) = copy_nar(data, &mut out) {
        assert_eq!(out, &data[..n as usize]);
        // A NAR that parses completely is exactly what copy_nar consumed.
        if whole.is_ok() {
            assert_eq!(n as usize, data.len());
        }
    } else {
        assert!(whole.is_err());
    }
});
