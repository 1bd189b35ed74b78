//! Clock offset between this machine and the server, estimated NTP-style from ping/pong.
//!
//! For a probe sent at local time t0, answered with server time ts and received at t1, the
//! offset (server minus local) is ts - (t0 + t1) / 2, with an uncertainty of (t1 - t0) / 2: the
//! server stamped its time somewhere inside the round trip. The sample with the smallest round
//! trip bounds the offset most tightly, so that is the one kept.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// This machine's wall clock, Unix microseconds (what probes against another clock use).
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct OffsetEstimate {
    /// Server clock minus local clock, microseconds.
    pub(crate) offset_us: f64,
    /// Half the round trip of the sample used: the true offset lies within ±this.
    pub(crate) uncertainty_us: f64,
    pub(crate) samples: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClockEstimator {
    best: Option<(f64, f64)>,
    samples: u64,
}

impl ClockEstimator {
    /// Adds one probe: local send `t0_us`, server time `server_us`, local receive `t1_us`.
    pub(crate) fn add_sample(&mut self, t0_us: f64, server_us: f64, t1_us: f64) {
        let rtt = (t1_us - t0_us).max(0.0);
        let offset = server_us - (t0_us + t1_us) / 2.0;
        self.samples += 1;
        if self.best.is_none_or(|(_, best_rtt)| rtt < best_rtt) {
            self.best = Some((offset, rtt));
        }
    }

    /// Keeps the tighter of two estimators' samples (to merge clients or workers).
    pub(crate) fn merge(&mut self, other: &Self) {
        self.samples += other.samples;
        if let Some((offset, rtt)) = other.best
            && self.best.is_none_or(|(_, best_rtt)| rtt < best_rtt)
        {
            self.best = Some((offset, rtt));
        }
    }

    pub(crate) fn estimate(&self) -> Option<OffsetEstimate> {
        self.best.map(|(offset, rtt)| OffsetEstimate {
            offset_us: offset,
            uncertainty_us: rtt / 2.0,
            samples: self.samples,
        })
    }

    /// The offset to add to a server timestamp to express it in local time, or 0 if unknown.
    pub(crate) fn offset_us(&self) -> f64 {
        self.best.map_or(0.0, |(offset, _)| offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_round_trip_recovers_the_offset() {
        // Server 5 ms ahead; 2 ms each way.
        let mut clock = ClockEstimator::default();
        clock.add_sample(1_000_000.0, 1_000_000.0 + 2_000.0 + 5_000.0, 1_004_000.0);
        let est = clock.estimate().unwrap();
        assert_eq!(est.offset_us, 5_000.0);
        assert_eq!(est.uncertainty_us, 2_000.0);
    }

    #[test]
    fn tightest_round_trip_wins_and_true_offset_stays_within_uncertainty() {
        let true_offset = -3_000.0;
        let mut clock = ClockEstimator::default();
        // Asymmetric delays (out, back) in µs; the estimate errs by (out - back) / 2.
        for (i, (out, back)) in [(9_000.0, 1_000.0), (400.0, 600.0), (3_000.0, 3_000.0)]
            .iter()
            .enumerate()
        {
            let t0 = 1e6 * i as f64;
            let server = t0 + out + true_offset;
            clock.add_sample(t0, server, t0 + out + back);
        }
        let est = clock.estimate().unwrap();
        assert_eq!(est.samples, 3);
        assert_eq!(est.uncertainty_us, 500.0, "the 1 ms round trip is kept");
        assert!((est.offset_us - true_offset).abs() <= est.uncertainty_us);

        let mut other = ClockEstimator::default();
        other.add_sample(0.0, 100.0 + true_offset, 200.0);
        clock.merge(&other);
        assert_eq!(clock.estimate().unwrap().uncertainty_us, 100.0);
        assert_eq!(clock.estimate().unwrap().samples, 4);
    }
}
