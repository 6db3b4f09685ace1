//! Untrusted input: a file in the spool directory, which anyone who could
//! write there (or a torn disk) may have left. The daemon sets aside a
//! file that does not decode and retries one it could not read, so the
//! two must never be confused: whatever the bytes, reading a regular file
//! either decodes it exactly as the socket's decoder does, or fails with a
//! decode error, never an I/O error (which would be retried forever).
#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::StoreDir;
use nix_outbox_hook::protocol::decode;
use nix_outbox_hook::spool::{SpoolError, read_spool_file};

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::default();
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
    file.write_all(data).expect("writing the temp file");
    match (read_spool_file(file.path(), &sd), decode(data, &sd)) {
        (Ok(from_file), Ok(from_frame)) => assert_eq!(from_file, from_frame),
        (Err(SpoolError::Decode { .. }), Err(_)) => {}
        (got, frame) => panic!("spool file read {got:?}, the same frame decodes to {frame:?}"),
    }
});
