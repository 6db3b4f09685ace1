//! The daemon's notion of "now", as unix time for the queue's timestamps
//! and as a distance for its sleeps.
//!
//! Production follows the wall clock: timestamps in the queue are read by
//! `nix-outbox status` and `wait` in other processes, which use the wall
//! clock too (a monotonic clock would drift from it across a suspend).
//! Tests follow tokio's clock instead, so that with `tokio::time::pause()`
//! one virtual timeline drives both the sleeps and the timestamps, and the
//! retry schedule can be checked to the second without waiting for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of unix time. Cheap to clone.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// `None`: the wall clock. `Some`: tokio's clock, which reads
    /// `unix_at_start` at `start` and runs (or stands, when paused) with it.
    tokio: Option<(Duration, tokio::time::Instant)>,
}

impl Clock {
    /// The wall clock (`SystemTime`).
    pub fn system() -> Self {
        Self { tokio: None }
    }

    /// A clock that reads `unix_secs` now and then advances with tokio's
    /// clock, virtual time included. Needs a tokio runtime.
    pub fn following_tokio(unix_secs: u64) -> Self {
        Self {
            tokio: Some((Duration::from_secs(unix_secs), tokio::time::Instant::now())),
        }
    }

    /// Time since the unix epoch, with sub-second precision.
    pub fn unix(&self) -> Duration {
        match self.tokio {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            Some((unix_at_start, start)) => unix_at_start + start.elapsed(),
        }
    }

    /// Unix seconds, as the queue stores them (rounded down).
    pub fn now(&self) -> i64 {
        secs_i64(self.unix().as_secs())
    }

    /// The first whole unix second at least `delay` from now: the
    /// `next_attempt_at` of a retry. Rounding up means a job is never due
    /// before its delay has passed.
    pub fn after(&self, delay: Duration) -> i64 {
        let at = self.unix().saturating_add(delay);
        secs_i64(at.as_secs() + u64::from(at.subsec_nanos() > 0))
    }

    /// How long until unix second `at` (zero if it has come).
    pub fn until(&self, at: i64) -> Duration {
        let at = Duration::from_secs(u64::try_from(at).unwrap_or(0));
        at.saturating_sub(self.unix())
    }
}

/// The wall clock in unix seconds, as the queue stores time (for the CLI;
/// the daemon's loops read their [`Clock`]).
pub fn now() -> i64 {
    Clock::system().now()
}

fn secs_i64(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::following_tokio(1_000);
        assert_eq!(clock.now(), 1_000);
        assert_eq!(clock.after(Duration::ZERO), 1_000);
        assert_eq!(clock.after(Duration::from_millis(1)), 1_001);
        assert_eq!(clock.after(Duration::from_secs(5)), 1_005);
        assert_eq!(clock.until(1_010), Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), 1_002);
        assert_eq!(clock.after(Duration::from_secs(1)), 1_004);
        assert_eq!(clock.until(1_010), Duration::from_millis(7_500));
        assert_eq!(clock.until(900), Duration::ZERO);
        assert_eq!(clock.until(-5), Duration::ZERO);
    }

    #[test]
    fn system_clock_is_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let now = Clock::system().now();
        assert!((now - wall).abs() <= 1, "{now} vs {wall}");
        assert!(Clock::system().until(now + 60) <= Duration::from_secs(60));
    }
}
