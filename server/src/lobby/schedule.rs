//! A lobby's tick schedule as a pure value: the grid `start + k·period`, with time passed in.
//! Given `now` it says how late the due tick is, how many grid instants were skipped, and when
//! the next tick is due. It never sleeps and never reads a clock; the actor owns the timer.
//!
//! Ticks stay on the grid (no drift). A tick more than a period late skips the missed instants
//! rather than bursting to catch up. All arithmetic saturates: no stall, however long, panics.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub(crate) struct TickSchedule {
    period: Duration,
    /// The instant the next tick is due.
    due: Instant,
}

/// What firing the schedule at `now` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fired {
    /// How long after its due instant this tick runs.
    pub(crate) lateness: Duration,
    /// Grid instants that passed without a tick (0 unless a full period late).
    pub(crate) skipped: u64,
    /// When the following tick is due: the first grid instant after `now`.
    pub(crate) next_due: Instant,
}

impl TickSchedule {
    /// A schedule whose first tick is due one period after `start`. A zero period is treated
    /// as one nanosecond (the configuration refuses it; this keeps the value total).
    pub(crate) fn new(start: Instant, period: Duration) -> Self {
        let period = period.max(Duration::from_nanos(1));
        Self {
            period,
            due: advance(start, period, 1),
        }
    }

    pub(crate) fn due(&self) -> Instant {
        self.due
    }

    /// Runs the due tick at `now` (the timer fired, possibly late) and moves to the next grid
    /// instant after `now`.
    pub(crate) fn fire(&mut self, now: Instant) -> Fired {
        let lateness = now.saturating_duration_since(self.due);
        let skipped =
            u64::try_from(lateness.as_nanos() / self.period.as_nanos()).unwrap_or(u64::MAX);
        let next_due = advance(self.due, self.period, skipped.saturating_add(1));
        // On an unrepresentable instant (a stall near the end of time) fall back to one
        // period from now, off the grid but still ahead.
        let next_due = if next_due > now {
            next_due
        } else {
            advance(now, self.period, 1)
        };
        self.due = next_due;
        Fired {
            lateness,
            skipped,
            next_due,
        }
    }
}

/// `from + period · steps`, saturating at the latest representable instant.
fn advance(from: Instant, period: Duration, steps: u64) -> Instant {
    let nanos = period.as_nanos().saturating_mul(u128::from(steps));
    let offset = u64::try_from(nanos).map_or(Duration::MAX, Duration::from_nanos);
    // `Duration::from_nanos` tops out near 584 years; beyond that the saturated offset is
    // still far ahead of any real `now`.
    from.checked_add(offset)
        .unwrap_or_else(|| latest_after(from))
}

/// The latest instant after `from` that `Instant` can represent, found by halving.
fn latest_after(from: Instant) -> Instant {
    let mut step = Duration::from_secs(u64::MAX / 4);
    let mut at = from;
    while step > Duration::ZERO {
        if let Some(later) = at.checked_add(step) {
            at = later;
        } else {
            step /= 2;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(10);

    #[test]
    fn an_on_time_tick_is_not_late_and_the_next_is_one_period_on() {
        let start = Instant::now();
        let mut schedule = TickSchedule::new(start, PERIOD);
        assert_eq!(schedule.due(), start + PERIOD);
        let fired = schedule.fire(start + PERIOD);
        assert_eq!(fired.lateness, Duration::ZERO);
        assert_eq!(fired.skipped, 0);
        assert_eq!(fired.next_due, start + 2 * PERIOD);
        assert_eq!(schedule.due(), start + 2 * PERIOD);
    }

    #[test]
    fn a_late_tick_keeps_the_grid() {
        let start = Instant::now();
        let mut schedule = TickSchedule::new(start, PERIOD);
        let fired = schedule.fire(start + PERIOD + Duration::from_millis(3));
        assert_eq!(fired.lateness, Duration::from_millis(3));
        assert_eq!(fired.skipped, 0);
        assert_eq!(fired.next_due, start + 2 * PERIOD, "no drift");
    }

    #[test]
    fn several_periods_late_skips_the_missed_instants() {
        let start = Instant::now();
        let mut schedule = TickSchedule::new(start, PERIOD);
        let fired = schedule.fire(start + PERIOD + Duration::from_millis(35));
        assert_eq!(fired.lateness, Duration::from_millis(35));
        assert_eq!(fired.skipped, 3);
        assert_eq!(fired.next_due, start + 5 * PERIOD);
        // Exactly on a later grid instant: that instant counts as skipped, the next is ahead.
        let fired = schedule.fire(start + 7 * PERIOD);
        assert_eq!(fired.skipped, 2);
        assert_eq!(fired.next_due, start + 8 * PERIOD);
    }

    #[test]
    fn a_timer_that_fires_early_is_not_late() {
        let start = Instant::now();
        let mut schedule = TickSchedule::new(start, PERIOD);
        let fired = schedule.fire(start + Duration::from_millis(9));
        assert_eq!((fired.lateness, fired.skipped), (Duration::ZERO, 0));
        assert_eq!(fired.next_due, start + 2 * PERIOD);
    }

    #[test]
    fn a_huge_stall_saturates_instead_of_panicking() {
        let start = Instant::now();
        // A nanosecond period and a stall of about 35,000 years: the skipped count overflows
        // u64 (and, in the old code, `Duration * u32` panicked).
        let mut schedule = TickSchedule::new(start, Duration::from_nanos(1));
        let stall = Duration::from_secs(1 << 40);
        let now = start + stall;
        let fired = schedule.fire(now);
        assert_eq!(fired.skipped, u64::MAX);
        assert!(fired.next_due > now, "the next tick is still ahead");
        // A stall right at the end of representable time.
        let end = latest_after(start);
        let mut schedule = TickSchedule::new(start, PERIOD);
        let fired = schedule.fire(end);
        assert!(fired.next_due >= end);
        // And a zero period is kept total.
        let mut schedule = TickSchedule::new(start, Duration::ZERO);
        assert!(schedule.fire(start + PERIOD).next_due > start + PERIOD);
    }
}
