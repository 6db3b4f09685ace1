//! Untrusted input: bytes from a nix-daemon (or whatever answers on its
//! socket). The log-message loop and the QueryPathInfo decoder must never
//! panic or allocate from an unchecked length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_outbox_store::protocol::read_stderr;
use nix_outbox_store::read_path_info;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // The first byte picks the negotiated minor version, as old and new
        // daemons frame errors and path infos differently.
        let (minor, rest) = match data.split_first() {
            Some((m, rest)) => (u64::from(*m % 40), rest),
            None => (34, data),
        };
        let mut r = rest;
        if read_stderr(&mut r, minor).await.is_ok() {
            let _ = read_path_info(&mut r, minor).await;
        }
    });
});
