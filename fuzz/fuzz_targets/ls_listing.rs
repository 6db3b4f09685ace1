//! Untrusted input: a cache's `.ls` listing, compared with the listing of
//! the NAR it describes. Nothing may panic, the comparison's parse stays
//! within its budget (libFuzzer's memory limit catches a tree built from a
//! huge listing), and our own listing of any NAR always matches itself.
//!
//! Input: two bytes giving the `.ls` length (big-endian), the `.ls`, then
//! a NAR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix_outbox_core::nar::{ListingBuilder, parse_nar_tee};
use nix_outbox_upload::verify::references::listing_problem;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (ls, nar) = rest.split_at(len);
    let mut builder = ListingBuilder::new();
    if parse_nar_tee(nar, std::io::sink(), &mut builder).is_err() {
        return;
    }
    let Some(listing) = builder.finish() else {
        return;
    };
    let _ = listing_problem(ls, &listing);
    let ours = listing.to_json();
    assert_eq!(listing_problem(ours.as_bytes(), &listing), None);
});
