//! Untrusted input: a cache's `Retry-After` header. Nothing may panic;
//! delay-seconds always give a delay (saturating, never an overflow), a
//! date gives at most its distance from now, and the value's surrounding
//! whitespace does not matter.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use nix_outbox_upload::parse_retry_after;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let got = parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs = trimmed.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(got, Some(Duration::from_secs(secs)));
    }
    assert_eq!(got, parse_retry_after(&format!(" {value}\t"), now));
    if let Some(wait) = got
        && !trimmed.bytes().all(|b| b.is_ascii_digit())
    {
        // An HTTP date: never later than the latest date it can spell.
        let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert!(now + wait <= latest, "{value:?} gave {wait:?}");
    }
});
