//! One collection interval: the report each worker sends for it, tagged with the interval's
//! index, and the coordinator's merge by that tag, so a report that comes late is never
//! counted against the wrong second. Bookkeeping only: no channels, no clock, no I/O.

use crate::clock::ClockEstimator;
use crate::stats::{Counters, Histograms};

/// One worker's measurements, sent when the coordinator asks for interval `interval`.
pub(crate) struct IntervalReport {
    pub(crate) worker: usize,
    /// The index the coordinator sent with its request (`Collect` or `StopAll`).
    pub(crate) interval: u64,
    /// Samples since the worker's previous report.
    pub(crate) histograms: Histograms,
    /// Cumulative since the worker started.
    pub(crate) counters: Counters,
    /// Cumulative since the worker started.
    pub(crate) clock: ClockEstimator,
    /// Clients of this worker joined at the time of the report.
    pub(crate) clients_joined: usize,
    pub(crate) tick_hz: Option<u32>,
}

/// A worker's newest cumulative figures.
struct Newest {
    interval: u64,
    counters: Counters,
    clock: ClockEstimator,
    clients_joined: usize,
    tick_hz: Option<u32>,
}

/// A report tagged with an interval other than the open one: it came after its interval was
/// closed. Its samples belong to that interval, so they are kept apart.
pub(crate) struct LateReport {
    pub(crate) worker: usize,
    pub(crate) interval: u64,
    pub(crate) histograms: Histograms,
}

/// What one interval added up to when it was closed.
pub(crate) struct ClosedInterval {
    pub(crate) interval: u64,
    /// Samples of the reports tagged with this interval, and only those.
    pub(crate) histograms: Histograms,
    /// Workers whose report for this interval had not come when it closed.
    pub(crate) missing_workers: Vec<usize>,
    /// Reports for earlier intervals that came while this one was open.
    pub(crate) late: Vec<LateReport>,
}

/// Merges the workers' reports one interval at a time: `open(i)`, `accept` reports until
/// `is_complete` (or the coordinator stops waiting), then `close`. Cumulative figures
/// (counters, clock, joined clients) are each worker's newest, whatever interval they came
/// with, so a late report still brings the counters up to date but never moves them back.
pub(crate) struct IntervalMerger {
    newest: Vec<Option<Newest>>,
    open: u64,
    histograms: Histograms,
    reported: Vec<bool>,
    late: Vec<LateReport>,
}

impl IntervalMerger {
    pub(crate) fn new(n_workers: usize) -> Self {
        Self {
            newest: (0..n_workers).map(|_| None).collect(),
            open: 0,
            histograms: Histograms::default(),
            reported: vec![false; n_workers],
            late: Vec::new(),
        }
    }

    /// Starts collecting interval `interval` (the index the coordinator sends to workers).
    pub(crate) fn open(&mut self, interval: u64) {
        self.open = interval;
        self.histograms.reset();
        self.reported.fill(false);
        self.late.clear();
    }

    pub(crate) fn accept(&mut self, report: IntervalReport) {
        let Some(newest) = self.newest.get_mut(report.worker) else {
            tracing::warn!(
                worker = report.worker,
                "report from an unknown worker ignored"
            );
            return;
        };
        if newest
            .as_ref()
            .is_none_or(|newest| report.interval >= newest.interval)
        {
            *newest = Some(Newest {
                interval: report.interval,
                counters: report.counters,
                clock: report.clock,
                clients_joined: report.clients_joined,
                tick_hz: report.tick_hz,
            });
        }
        if report.interval == self.open {
            self.histograms.add(&report.histograms);
            self.reported[report.worker] = true;
        } else {
            self.late.push(LateReport {
                worker: report.worker,
                interval: report.interval,
                histograms: report.histograms,
            });
        }
    }

    /// Whether every worker has reported for the open interval.
    pub(crate) fn is_complete(&self) -> bool {
        self.reported.iter().all(|&reported| reported)
    }

    /// Closes the open interval and hands over what it added up to.
    pub(crate) fn close(&mut self) -> ClosedInterval {
        ClosedInterval {
            interval: self.open,
            histograms: std::mem::take(&mut self.histograms),
            missing_workers: (0..self.reported.len())
                .filter(|&worker| !self.reported[worker])
                .collect(),
            late: std::mem::take(&mut self.late),
        }
    }

    /// The sum of the workers' newest cumulative counters.
    pub(crate) fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for newest in self.newest.iter().flatten() {
            sum.add(&newest.counters);
        }
        sum
    }

    /// The workers' clock estimators merged (each worker's newest, counted once).
    pub(crate) fn clock(&self) -> ClockEstimator {
        let mut merged = ClockEstimator::default();
        for newest in self.newest.iter().flatten() {
            merged.merge(&newest.clock);
        }
        merged
    }

    /// Clients joined, by each worker's newest report.
    pub(crate) fn clients_joined(&self) -> usize {
        self.newest
            .iter()
            .flatten()
            .map(|newest| newest.clients_joined)
            .sum()
    }

    /// The server's tick rate, once any client has been welcomed.
    pub(crate) fn tick_hz(&self) -> Option<u32> {
        self.newest
            .iter()
            .flatten()
            .find_map(|newest| newest.tick_hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Metric;

    fn report(worker: usize, interval: u64, broadcast_us: &[u64], received: u64) -> IntervalReport {
        let mut histograms = Histograms::default();
        for &micros in broadcast_us {
            histograms.record(Metric::Broadcast, micros);
        }
        let mut clock = ClockEstimator::default();
        clock.add_sample(0.0, 50.0, 100.0);
        IntervalReport {
            worker,
            interval,
            histograms,
            counters: Counters {
                snapshots_received: received,
                ..Counters::default()
            },
            clock,
            clients_joined: 10,
            tick_hz: Some(30),
        }
    }

    /// The recorded broadcast samples (exact below 2048 µs at three significant digits).
    fn broadcast_samples(histograms: &Histograms) -> Vec<u64> {
        let histogram = histograms.get(Metric::Broadcast);
        histogram
            .iter_recorded()
            .flat_map(|value| {
                std::iter::repeat_n(
                    histogram.highest_equivalent(value.value_iterated_to()),
                    value.count_at_value() as usize,
                )
            })
            .collect()
    }

    #[test]
    fn a_late_report_is_kept_out_of_the_next_interval() {
        let mut merger = IntervalMerger::new(2);
        merger.open(0);
        merger.accept(report(0, 0, &[100], 30));
        assert!(!merger.is_complete());
        // Worker 1 is slow: interval 0 closes without it.
        let first = merger.close();
        assert_eq!(first.missing_workers, [1]);
        assert_eq!(broadcast_samples(&first.histograms), [100]);

        merger.open(1);
        // Worker 1's report for interval 0 arrives now, before anybody's for interval 1.
        merger.accept(report(1, 0, &[1700], 25));
        assert!(
            !merger.is_complete(),
            "a late report does not answer interval 1"
        );
        merger.accept(report(0, 1, &[200], 60));
        merger.accept(report(1, 1, &[300], 50));
        assert!(merger.is_complete());
        let second = merger.close();
        assert_eq!(second.interval, 1);
        assert!(second.missing_workers.is_empty());
        assert_eq!(
            broadcast_samples(&second.histograms),
            [200, 300],
            "interval 1 holds exactly the samples tagged 1"
        );
        assert_eq!(second.late.len(), 1);
        let late = &second.late[0];
        assert_eq!((late.worker, late.interval), (1, 0));
        assert_eq!(broadcast_samples(&late.histograms), [1700]);
        assert_eq!(merger.counters().snapshots_received, 60 + 50);
        assert_eq!(merger.clients_joined(), 20);
    }

    #[test]
    fn an_older_report_never_moves_cumulative_figures_back() {
        let mut merger = IntervalMerger::new(1);
        merger.open(3);
        merger.accept(report(0, 3, &[], 90));
        merger.accept(report(0, 2, &[], 40));
        assert_eq!(merger.counters().snapshots_received, 90);
        assert_eq!(merger.close().late.len(), 1);
    }

    #[test]
    fn cumulative_figures_count_each_worker_once_however_many_intervals() {
        let mut merger = IntervalMerger::new(2);
        for interval in 0..5 {
            merger.open(interval);
            merger.accept(report(0, interval, &[], interval));
            merger.accept(report(1, interval, &[], interval));
            merger.close();
        }
        assert_eq!(merger.counters().snapshots_received, 4 + 4);
        assert_eq!(
            merger.clock().estimate().map(|estimate| estimate.samples),
            Some(2),
            "one sample per worker, not one per worker per interval"
        );
        assert_eq!(merger.tick_hz(), Some(30));
    }
}
