//! Per-connection message rate limits: a token bucket refilled continuously, with one
//! second's worth of burst so ordinary jitter never trips it. The rate is passed in on each
//! use rather than stored: it is the configuration's, and every byte of a bucket is in every
//! connection's task.

use std::time::Instant;

pub(crate) struct RateLimit {
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket for `per_second`.
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(per_second.max(1)),
            last: now,
        }
    }

    /// Takes one token at the rate `per_second` (the one the bucket was made with); false when
    /// the bucket is empty (the caller is over its rate).
    pub(crate) fn allow(&mut self, now: Instant, per_second: u32) -> bool {
        let per_second = f64::from(per_second.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * per_second).min(per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allows_a_burst_of_one_second_then_the_steady_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, start);
        assert_eq!((0..10).filter(|_| limit.allow(start, 10)).count(), 10);
        assert!(!limit.allow(start, 10));
        // 100 ms later exactly one more token has accrued.
        let later = start + Duration::from_millis(100);
        assert!(limit.allow(later, 10));
        assert!(!limit.allow(later, 10));
        // A long pause refills only up to the burst size.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| limit.allow(much_later, 10)).count(), 10);
    }
}
