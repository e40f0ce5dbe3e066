//! When the next beat goes out: the interval with ±jitter after a success,
//! exponential backoff with jitter after failures, capped.

use std::time::Duration;

use rand::Rng;

/// Timing of the heartbeat loop.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Normal interval (the configured one, or the hub's override).
    pub interval: Duration,
    /// Fraction: a normal delay is `interval × U[1 − jitter, 1 + jitter]`.
    pub jitter: f64,
    /// Cap of the backoff; never below `interval`.
    pub backoff_max: Duration,
}

/// The wait after `failures` (≥ 1) failed calls to the hub in a row:
/// `min(cap, base × 2^(failures−1))` times `U[0.5, 1]` ("equal jitter"),
/// so a fleet that lost its hub at once comes back spread out instead of
/// in one burst. The cap is never below `base`. The one backoff of every
/// call to the hub (heartbeats, cron deliveries).
pub fn backoff(base: Duration, cap: Duration, failures: u32, rng: &mut impl Rng) -> Duration {
    let cap = cap.max(base);
    let doubling = 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let raw = base.mul_f64(doubling).min(cap);
    raw.mul_f64(rng.random_range(0.5..=1.0))
}

/// Shortest interval the hub may impose (a configured interval below it
/// still applies, for tests).
pub const MIN_OVERRIDE: Duration = Duration::from_secs(1);
/// Longest interval the hub may impose.
pub const MAX_OVERRIDE: Duration = Duration::from_secs(3600);

impl Schedule {
    /// Delay before the next beat after `failures` failed beats in a row.
    ///
    /// After a failure the delay is `min(cap, interval × 2^(failures−1))`
    /// times `U[0.5, 1]` ("equal jitter"): a fleet that lost its hub at once
    /// comes back spread over half the cap instead of in one burst.
    pub fn next_delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        if failures == 0 {
            let j = self.jitter.clamp(0.0, 0.5);
            let factor = if j > 0.0 {
                rng.random_range((1.0 - j)..=(1.0 + j))
            } else {
                1.0
            };
            return self.interval.mul_f64(factor);
        }
        backoff(self.interval, self.backoff_max, failures, rng)
    }

    /// The interval the hub asked for, bounded: at least [`MIN_OVERRIDE`]
    /// (or the configured interval when that is shorter), at most
    /// [`MAX_OVERRIDE`].
    pub fn bounded_override(configured: Duration, asked_s: f64) -> Option<Duration> {
        if !asked_s.is_finite() || asked_s <= 0.0 {
            return None;
        }
        let floor = MIN_OVERRIDE.min(configured);
        let asked = Duration::try_from_secs_f64(asked_s).ok()?;
        Some(asked.clamp(floor, MAX_OVERRIDE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(interval_ms: u64, jitter: f64, cap_ms: u64) -> Schedule {
        Schedule {
            interval: Duration::from_millis(interval_ms),
            jitter,
            backoff_max: Duration::from_millis(cap_ms),
        }
    }

    #[test]
    fn normal_delay_stays_within_jitter_and_varies() {
        let mut rng = rand::rng();
        let sched = s(30_000, 0.1, 300_000);
        let delays: Vec<Duration> = (0..1000).map(|_| sched.next_delay(0, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(27_000)));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(33_000)));
        let min = delays.iter().min().copied().unwrap_or_default();
        let max = delays.iter().max().copied().unwrap_or_default();
        assert!(max - min > Duration::from_secs(4), "{min:?}..{max:?}");
        assert_eq!(
            s(30_000, 0.0, 1).next_delay(0, &mut rng),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let mut rng = rand::rng();
        let sched = s(30_000, 0.1, 300_000);
        for (failures, max_s) in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (40, 300)] {
            for _ in 0..200 {
                let d = sched.next_delay(failures, &mut rng);
                assert!(d <= Duration::from_secs(max_s), "{failures}: {d:?}");
                assert!(d >= Duration::from_secs(max_s) / 2, "{failures}: {d:?}");
            }
        }
        // A cap below the interval never makes failures beat faster.
        let d = s(30_000, 0.1, 1_000).next_delay(3, &mut rng);
        assert!(d >= Duration::from_secs(15));
    }

    #[test]
    fn overrides_are_bounded() {
        let c = Duration::from_secs(30);
        assert_eq!(Schedule::bounded_override(c, 0.01), Some(MIN_OVERRIDE));
        assert_eq!(Schedule::bounded_override(c, 1e9), Some(MAX_OVERRIDE));
        assert_eq!(
            Schedule::bounded_override(c, 45.0),
            Some(Duration::from_secs(45))
        );
        assert_eq!(Schedule::bounded_override(c, -1.0), None);
        assert_eq!(Schedule::bounded_override(c, f64::NAN), None);
        assert_eq!(
            Schedule::bounded_override(Duration::from_millis(200), 0.5),
            Some(Duration::from_millis(500))
        );
    }
}
