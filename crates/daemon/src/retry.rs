//! How long a failed job waits before its next attempt.
//!
//! Nothing is ever dropped: every failure ends in a delay, never in giving
//! up. What varies is the pace:
//!
//! - **transient** failures (I/O errors, 5xx, 429/503 SlowDown, resets,
//!   timeouts, truncated bodies: [`UploadError::is_transient`]) back off
//!   exponentially with full jitter, `[base, min(cap, base·2^attempts)]`,
//!   so a cache outage is not hammered by every worker in step, and paths
//!   move again within `cap` of the cache coming back;
//! - **permanent** failures (403, NoSuchBucket, bad credentials, a corrupt
//!   store path) need a person, so they reach the cap within three attempts
//!   and stay near it (jitter in the upper half only), still retried so the
//!   path goes out as soon as the cause is fixed;
//! - a server's `Retry-After` is honoured (never retried earlier), up to
//!   `max_retry_after`, with up to 10% added so that the workers it told
//!   the same thing do not all come back in the same second.
//!
//! The policy is a pure function of its inputs, randomness included, so it
//! is tested exactly; [`Jitter`] supplies the randomness in the daemon.
//!
//! [`UploadError::is_transient`]: nix_outbox_upload::UploadError::is_transient

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Whether a failure may pass by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Transient,
    Permanent,
}

impl Failure {
    /// The pace for an error, from its `is_transient()`.
    pub fn from_transient(transient: bool) -> Self {
        if transient {
            Self::Transient
        } else {
            Self::Permanent
        }
    }

    /// The `class` label of the failure metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// The constants of the retry pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The shortest wait, and the unit the exponential growth starts from.
    pub base: Duration,
    /// The longest wait the policy chooses by itself: once a cache is
    /// back, every waiting path moves within this.
    pub cap: Duration,
    /// The first wait after a permanent failure (the cause is sometimes
    /// fixed at once: a bucket created, a permission granted). It grows
    /// fourfold per attempt up to `cap`.
    pub permanent_first: Duration,
    /// The longest `Retry-After` honoured; a server asking for more is
    /// asked again after this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            permanent_first: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after a failed attempt. `attempts` counts the attempts made
    /// so far, the failed one included (the queue's `attempts` after the
    /// claim; 0 is taken as 1); `retry_after` is the server's request, if it
    /// made one; `random` is any uniformly random value.
    pub fn delay(
        &self,
        attempts: u32,
        failure: Failure,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Duration {
        let attempts = attempts.max(1);
        let cap = millis(self.cap);
        let backoff = match failure {
            Failure::Transient => {
                let ceiling = grow(millis(self.base), 1, attempts).min(cap);
                uniform(millis(self.base).min(ceiling), ceiling, random)
            }
            Failure::Permanent => {
                let ceiling = grow(millis(self.permanent_first), 2, attempts - 1).min(cap);
                uniform(ceiling / 2, ceiling, random)
            }
        };
        let delay = match retry_after {
            None => backoff,
            Some(asked) => {
                let limit = millis(self.max_retry_after);
                let asked = millis(asked).min(limit);
                // Other bits than the backoff's draw, so the two are not
                // tied to each other.
                let spread = uniform(0, asked / 10, random.rotate_left(32));
                backoff.max((asked + spread).min(limit))
            }
        };
        Duration::from_millis(delay)
    }
}

/// `start · 2^(shift · steps)` in milliseconds, saturating.
fn grow(start: u64, shift: u32, steps: u32) -> u64 {
    let factor = 1u128 << shift.saturating_mul(steps).min(100);
    u64::try_from(u128::from(start) * factor).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Maps `random` onto `[lo, hi]` evenly (multiply-shift rather than modulo,
/// which would favour low values): 0 gives `lo`, `u64::MAX` gives `hi`.
fn uniform(lo: u64, hi: u64, random: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    let span = u128::from(hi - lo) + 1;
    lo + ((u128::from(random) * span) >> 64) as u64
}

/// The randomness behind the jitter: a splitmix64 sequence. Statistical
/// spread is all jitter needs (nothing here must be unpredictable), and a
/// seed makes a test's sequence known in advance.
#[derive(Debug)]
pub struct Jitter(AtomicU64);

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Jitter {
    /// The sequence starting at `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A sequence differing between processes and starts, so daemons on
    /// several machines retrying against one cache do not move in step.
    pub fn unpredictable() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::seeded(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// The next value; safe to call from several tasks at once.
    pub fn next(&self) -> u64 {
        let state = self
            .0
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn p() -> RetryPolicy {
        RetryPolicy::default()
    }

    /// The smallest and largest delay over the whole range of `random`.
    fn bounds(attempts: u32, failure: Failure, retry_after: Option<Duration>) -> (u64, u64) {
        let lo = p().delay(attempts, failure, retry_after, 0);
        let hi = p().delay(attempts, failure, retry_after, u64::MAX);
        (lo.as_secs(), hi.as_secs())
    }

    #[test]
    fn transient_grows_exponentially_from_the_base_to_the_cap() {
        use Failure::Transient as T;
        assert_eq!(bounds(0, T, None), (1, 2), "0 counts as the first attempt");
        assert_eq!(bounds(1, T, None), (1, 2));
        assert_eq!(bounds(2, T, None), (1, 4));
        assert_eq!(bounds(5, T, None), (1, 32));
        assert_eq!(bounds(8, T, None), (1, 256));
        assert_eq!(bounds(9, T, None), (1, 300));
        assert_eq!(bounds(u32::MAX, T, None), (1, 300));
        // Every value stays in its bounds.
        let jitter = Jitter::seeded(7);
        for attempts in 0..200 {
            let d = p().delay(attempts, T, None, jitter.next());
            assert!(d >= SEC && d <= p().cap, "attempt {attempts}: {d:?}");
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let jitter = Jitter::seeded(42);
        let delays: Vec<u64> = (0..2000)
            .map(|_| {
                let d = p().delay(20, Failure::Transient, None, jitter.next());
                d.as_millis() as u64
            })
            .collect();
        // Ten equal buckets over [1 s, 300 s]: each gets about 200.
        let mut buckets = [0u32; 10];
        for d in &delays {
            buckets[((d - 1000) * 10 / 299_001) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (120..=280).contains(&n)),
            "{buckets:?}"
        );
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 1900, "millisecond resolution");
    }

    #[test]
    fn permanent_reaches_the_cap_quickly_and_stays_near_it() {
        use Failure::Permanent as P;
        assert_eq!(bounds(1, P, None), (15, 30));
        assert_eq!(bounds(2, P, None), (60, 120));
        assert_eq!(bounds(3, P, None), (150, 300));
        assert_eq!(bounds(4, P, None), (150, 300));
        assert_eq!(bounds(u32::MAX, P, None), (150, 300));
        // Slower than transient from the first attempt on.
        for attempts in 1..12 {
            assert!(bounds(attempts, P, None).0 >= bounds(attempts, Failure::Transient, None).0);
        }
    }

    #[test]
    fn retry_after_is_honoured_spread_and_capped() {
        use Failure::Transient as T;
        let ask = |secs| Some(Duration::from_secs(secs));
        // Never earlier than asked, at most 10% later.
        assert_eq!(bounds(1, T, ask(30)), (30, 33));
        // A longer backoff wins over a shorter request.
        let d = p().delay(12, T, ask(2), u64::MAX);
        assert_eq!(d, p().cap);
        // Beyond the cap, up to an hour.
        assert_eq!(bounds(1, T, ask(1200)), (1200, 1320));
        assert_eq!(bounds(1, T, ask(3500)), (3500, 3600));
        assert_eq!(bounds(1, T, ask(86_400)), (3600, 3600));
        assert_eq!(bounds(1, Failure::Permanent, ask(7_200)), (3600, 3600));
        // Zero means "now": the backoff applies.
        assert_eq!(bounds(1, T, ask(0)), (1, 2));
        let jitter = Jitter::seeded(1);
        for _ in 0..1000 {
            let asked = Duration::from_millis(jitter.next() % 10_000_000);
            let d = p().delay(3, T, Some(asked), jitter.next());
            assert!(d >= asked.min(p().max_retry_after), "{d:?} < {asked:?}");
            assert!(d <= p().max_retry_after, "{d:?}");
        }
    }

    #[test]
    fn the_policy_is_a_function_of_its_inputs() {
        for random in [0, 1, 12345, u64::MAX / 3, u64::MAX] {
            let a = p().delay(4, Failure::Transient, None, random);
            assert_eq!(a, p().delay(4, Failure::Transient, None, random));
        }
        let (a, b) = (Jitter::seeded(9), Jitter::seeded(9));
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert_ne!(Jitter::seeded(10).next(), xs[0]);
    }

    #[test]
    fn uniform_maps_the_extremes_to_the_bounds() {
        assert_eq!(uniform(5, 9, 0), 5);
        assert_eq!(uniform(5, 9, u64::MAX), 9);
        assert_eq!(uniform(5, 5, 123), 5);
        assert_eq!(uniform(9, 5, 123), 9);
        assert_eq!(uniform(0, u64::MAX, u64::MAX), u64::MAX);
    }
}
