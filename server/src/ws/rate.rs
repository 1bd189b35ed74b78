//! Per-connection message rate limits: a token bucket refilled continuously, with one
//! second's worth of burst so ordinary jitter never trips it.

use std::time::Instant;

pub(crate) struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty (the caller is over its rate).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
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
        assert_eq!((0..10).filter(|_| limit.allow(start)).count(), 10);
        assert!(!limit.allow(start));
        // 100 ms later exactly one more token has accrued.
        let later = start + Duration::from_millis(100);
        assert!(limit.allow(later));
        assert!(!limit.allow(later));
        // A long pause refills only up to the burst size.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| limit.allow(much_later)).count(), 10);
    }
}
