//! Restart pacing: exponential backoff with jitter, and the crash-loop
//! window that turns too many restarts into `failed`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// `base * 2^step`, capped, minus up to 20 % jitter (so the cap is a true
/// upper bound and restarts of many VMs do not line up).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    step: u32,
}

/// Share of a delay that jitter may take off.
const JITTER: f64 = 0.2;

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, step: 0 }
    }

    /// The next delay, with a random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// The next delay with jitter drawn as `u` in `[0, 1)`.
    pub fn next_with(&mut self, u: f64) -> Duration {
        let full = self
            .base
            .saturating_mul(2u32.saturating_pow(self.step.min(30)))
            .min(self.cap);
        self.step = self.step.saturating_add(1);
        full.mul_f64(1.0 - JITTER * u.clamp(0.0, 1.0))
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// Restart times within a sliding window, bounded to `limit + 1` entries.
#[derive(Debug, Clone)]
pub struct CrashWindow {
    window: Duration,
    limit: u32,
    times: VecDeque<Instant>,
}

impl CrashWindow {
    pub fn new(window: Duration, limit: u32) -> CrashWindow {
        CrashWindow {
            window,
            limit,
            times: VecDeque::new(),
        }
    }

    /// Record a restart at `now`; `true` when that is more than `limit`
    /// restarts within the window (a crash loop).
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        while self.times.len() > self.limit as usize + 1 {
            self.times.pop_front();
        }
        self.times.len() > self.limit as usize
    }

    pub fn clear(&mut self) {
        self.times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_jitter_only_shortens() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let got: Vec<u64> = (0..12).map(|_| b.next_with(0.0).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        b.reset();
        assert_eq!(
            b.next_with(0.999),
            Duration::from_secs(1).mul_f64(1.0 - 0.2 * 0.999)
        );
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(300));
        }
    }

    #[test]
    fn crash_window_trips_after_limit_and_forgets_old_crashes() {
        let mut w = CrashWindow::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        assert!(!w.record(t0));
        assert!(!w.record(t0 + Duration::from_secs(1)));
        assert!(!w.record(t0 + Duration::from_secs(2)));
        assert!(w.record(t0 + Duration::from_secs(3)));
        // Long after: the old ones slid out of the window.
        assert!(!w.record(t0 + Duration::from_secs(200)));
    }
}
