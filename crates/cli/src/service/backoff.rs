//! Retry delays: exponential with full jitter, capped, so a cache outage
//! neither hammers the cache nor leaves paths waiting hours once it is back.

/// Longest wait between two attempts of one job.
pub const MAX_BACKOFF_SECS: u64 = 300;

/// Seconds to wait before attempt `attempts + 1`: uniformly random in
/// `[1, min(cap, 2^attempts)]` (full jitter), from a cheap seed (`seed` is
/// mixed with the clock so concurrent workers spread out).
pub fn backoff_secs(attempts: u32, seed: u64) -> u64 {
    let ceiling = 1u64
        .checked_shl(attempts.min(20))
        .unwrap_or(u64::MAX)
        .min(MAX_BACKOFF_SECS);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    // splitmix64: enough randomness for jitter, no RNG dependency.
    let mut z = seed ^ nanos ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    1 + z % ceiling
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped() {
        for seed in 0..200 {
            assert_eq!(backoff_secs(0, seed), 1);
            assert!((1..=2).contains(&backoff_secs(1, seed)));
            assert!((1..=16).contains(&backoff_secs(4, seed)));
            assert!((1..=MAX_BACKOFF_SECS).contains(&backoff_secs(40, seed)));
        }
        // Full jitter actually spreads values at high attempt counts.
        let distinct: std::collections::BTreeSet<u64> =
            (0..200).map(|s| backoff_secs(12, s)).collect();
        assert!(distinct.len() > 20, "{distinct:?}");
    }
}
