//! Untrusted input on both sides of the hook: the environment Nix (or a
//! user) gives the hook, and the bytes hook and daemon exchange over the
//! socket or leave in the spool. Nothing may panic; whatever decodes must
//! re-encode to the same bytes and decode to the same value, and whatever
//! the input parser produces must be a request the daemon accepts.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::StoreDir;
use nix_outbox_hook::input::parse_env;
use nix_outbox_hook::protocol::{Reply, decode};

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::default();

    // The first NUL splits DRV_PATH from OUT_PATHS (real env values cannot
    // hold a NUL); without one, all of it is OUT_PATHS.
    let (drv, outs) = match data.iter().position(|&b| b == 0) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let parsed = parse_env(
        drv.map(OsStr::from_bytes),
        Some(OsStr::from_bytes(outs)),
        &sd,
    );
    if !parsed.request.is_empty() {
        for req in std::iter::once(&parsed.request).chain(&parsed.more) {
            assert!(req.fits(&sd));
            let bytes = req.encode(&sd);
            assert_eq!(
                &decode(&bytes, &sd).expect("parsed input must decode"),
                req
            );
        }
    }

    if let Ok(req) = decode(data, &sd) {
        let bytes = req.encode(&sd);
        assert_eq!(bytes, data, "decode accepts only the canonical spelling");
        assert_eq!(
            decode(&bytes, &sd).expect("re-encoded request must decode"),
            req
        );
    }

    if let Ok(reply) = Reply::decode(data) {
        let bytes = reply.encode();
        assert_eq!(
            bytes, data,
            "reply decode accepts only the canonical spelling"
        );
        assert_eq!(
            Reply::decode(&bytes).expect("re-encoded reply must decode"),
            reply
        );
    }
});
