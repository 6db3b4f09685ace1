//! Untrusted input: what `nix-outbox verify` reads from a cache that may
//! be hostile, a narinfo and the NAR file it names. Nothing may panic, and
//! the check reads at most FileSize + 1 bytes (or its fallback limit) of
//! the file, whatever the narinfo claims.
//!
//! Input: two bytes giving the narinfo's length (big-endian), the
//! narinfo, then the NAR file.
#![no_main]

use std::io::Read;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::StoreDir;
use nix_outbox_core::keys::PublicKey;
use nix_outbox_upload::verify::check::{check_nar, check_narinfo};

/// Counts what the check reads.
struct Counted<'a> {
    data: &'a [u8],
    read: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (narinfo, nar) = rest.split_at(len);
    let sd = StoreDir::default();
    let keys = [PublicKey::parse("cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap()];
    // The file name's hash: the narinfo's own when it has one, so that
    // the checks past the name are reached.
    let hash = std::str::from_utf8(narinfo)
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("StorePath: ")))
        .and_then(|p| p.strip_prefix("/nix/store/"))
        .and_then(|b| b.get(..32))
        .unwrap_or("00000000000000000000000000000000");
    let Ok((info, _problems)) = check_narinfo(&sd, &keys, "file:///cache", hash, narinfo) else {
        return;
    };
    let mut input = Counted { data: nar, read: 0 };
    let deadline = Instant::now() + Duration::from_secs(60);
    let checked = check_nar(&mut input, &info, true, deadline);
    let limit = match info.file_size {
        Some(size) => size.saturating_add(1),
        None => info.nar_size.saturating_mul(2).saturating_add(64 << 20),
    };
    assert!(input.read <= limit, "read {} of at most {limit}", input.read);
    if checked.problems.is_empty() && checked.read_error.is_none() {
        // A NAR that passes is the size the narinfo says, at least.
        assert!(checked.listing.is_some(), "a good NAR without its listing");
    }
});
