//! What the load generator measures: latency histograms (microseconds) and counters.
//!
//! Each worker thread owns one `Recorder` shared by its clients (no locks, no channel message per
//! sample); once per interval it hands the coordinator its interval histograms and a copy of its
//! cumulative counters, and the coordinator merges them with `add`.

use std::collections::BTreeMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded: 60 s in microseconds (larger values saturate at this).
const MAX_MICROS: u64 = 60_000_000;

/// The latency metrics, in report order. Their names are the hlog tags and JSON keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Metric {
    /// Client receive time minus the snapshot's `server_time_us`.
    Broadcast,
    /// From the intended send time of `state` seq s to first seeing seq s in a snapshot.
    InputToVisible,
    /// `ping` to `pong`.
    Rtt,
    /// TCP connect plus WebSocket handshake.
    Connect,
    /// `join` sent to `welcome` received.
    Join,
    /// Sender's send time (carried in the event payload) to receipt, for events.
    Event,
    /// Storm: from the connection drop to being joined again.
    Reconnect,
    /// Of those, the reconnections that took their seat back (`welcome.resumed`).
    Resume,
}

impl Metric {
    pub(crate) const ALL: [Self; 8] = [
        Self::Broadcast,
        Self::InputToVisible,
        Self::Rtt,
        Self::Connect,
        Self::Join,
        Self::Event,
        Self::Reconnect,
        Self::Resume,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast",
            Self::InputToVisible => "input",
            Self::Rtt => "rtt",
            Self::Connect => "connect",
            Self::Join => "join",
            Self::Event => "event",
            Self::Reconnect => "reconnect",
            Self::Resume => "resume",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// One histogram per metric, and the snapshots of each node the clients were connected to
/// (their URL: several in a fleet).
#[derive(Clone)]
pub(crate) struct Histograms {
    by_metric: Vec<Histogram<u64>>,
    pub(crate) by_node: BTreeMap<Arc<str>, NodeSamples>,
}

/// What the clients connected to one node received from it.
#[derive(Clone)]
pub(crate) struct NodeSamples {
    pub(crate) snapshots: u64,
    pub(crate) broadcast: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            by_metric: Metric::ALL.iter().map(|_| new_histogram()).collect(),
            by_node: BTreeMap::new(),
        }
    }
}

/// Sample counts only: the buckets would drown any `{:?}` of a report.
impl std::fmt::Debug for Histograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for metric in Metric::ALL {
            map.entry(&metric.name(), &self.get(metric).len());
        }
        map.finish()
    }
}

impl Histograms {
    pub(crate) fn record(&mut self, metric: Metric, micros: u64) {
        self.by_metric[metric as usize].saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub(crate) fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.by_metric[metric as usize]
    }

    pub(crate) fn get_mut(&mut self, metric: Metric) -> &mut Histogram<u64> {
        &mut self.by_metric[metric as usize]
    }

    /// A snapshot from `node` that took `micros` to arrive (recorded under `Broadcast` too).
    pub(crate) fn record_snapshot(&mut self, node: &Arc<str>, micros: u64) {
        self.record(Metric::Broadcast, micros);
        let samples = match self.by_node.get_mut(&**node) {
            Some(samples) => samples,
            None => self
                .by_node
                .entry(node.clone())
                .or_insert_with(|| NodeSamples {
                    snapshots: 0,
                    broadcast: new_histogram(),
                }),
        };
        samples.snapshots += 1;
        samples
            .broadcast
            .saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub(crate) fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.by_metric.iter_mut().zip(&other.by_metric) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = mine.add(theirs);
        }
        for (node, theirs) in &other.by_node {
            let mine = self
                .by_node
                .entry(node.clone())
                .or_insert_with(|| NodeSamples {
                    snapshots: 0,
                    broadcast: new_histogram(),
                });
            mine.snapshots += theirs.snapshots;
            let _ = mine.broadcast.add(&theirs.broadcast);
        }
    }

    pub(crate) fn reset(&mut self) {
        self.by_metric.iter_mut().for_each(Histogram::reset);
        for samples in self.by_node.values_mut() {
            samples.snapshots = 0;
            samples.broadcast.reset();
        }
    }
}

/// Monotonic counters. Workers keep cumulative values; reports use differences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Counters {
    pub(crate) snapshots_received: u64,
    /// Snapshots a client should have received judging by tick numbers (received + gaps).
    pub(crate) snapshots_expected: u64,
    pub(crate) keyframes: u64,
    /// Ticks skipped between two consecutive snapshots of one client (coalesced or missed).
    pub(crate) tick_gaps: u64,
    pub(crate) events_received: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) states_sent: u64,
    pub(crate) events_sent: u64,
    pub(crate) pings_sent: u64,
    /// Sends that happened more than 5 ms after their scheduled instant (generator overload).
    pub(crate) sends_late: u64,
    /// Scheduled sends skipped because the client was more than one period behind.
    pub(crate) sends_skipped: u64,
    /// Largest lateness of a scheduled send, in microseconds.
    pub(crate) max_send_lag_us: u64,
    pub(crate) connects: u64,
    pub(crate) reconnects: u64,
    /// Reconnections that took their seat back (`welcome.resumed`).
    pub(crate) resumes: u64,
    /// Resumes refused with `seat_expired` (the client then joined afresh).
    pub(crate) resumes_refused: u64,
    /// Reliable messages resumed seats reported as `lost` (0 while the history holds them).
    pub(crate) resume_lost: u64,
    /// `wrong_node` answers followed to the node they named (fleet mode).
    pub(crate) wrong_node_followed: u64,
    /// `GET /route` answers followed (`--route`).
    pub(crate) routed: u64,
    /// `POST /matchmake` answers followed (`--matchmake`).
    pub(crate) matchmade: u64,
    /// `redirect`s followed: a drain moved the client's lobby to another node (fleet mode).
    pub(crate) redirects: u64,
    /// Snapshots missed across those moves: ticks between the last snapshot before a
    /// `redirect` and the first after it (the moved lobby's tick count goes on).
    pub(crate) redirect_ticks_missed: u64,
    /// Own events sent again after a resume because the replay did not echo them (they never
    /// reached the lobby: written to a node while its lobby was frozen for a move, say).
    pub(crate) events_resent: u64,
    /// Own events written but never echoed when a connection ended in a fresh join or a
    /// lossy resume: whether the lobby got them cannot be known.
    pub(crate) events_unconfirmed: u64,
    /// Clients' first joins (not reconnections), and the span they took: from the first
    /// connect attempt to the last first `welcome` (Unix µs; 0 when none), for the join rate.
    pub(crate) first_joins: u64,
    pub(crate) first_connect_at_us: u64,
    pub(crate) last_first_join_at_us: u64,
    /// Errors by kind (`connect_refused`, `join_refused:lobby_full`, `closed:4002`, ...).
    pub(crate) errors: BTreeMap<String, u64>,
    /// Close codes received from the server, by code.
    pub(crate) close_codes: BTreeMap<u16, u64>,
}

impl Counters {
    pub(crate) fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }

    pub(crate) fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other` (another worker's counters) into `self`.
    pub(crate) fn add(&mut self, other: &Self) {
        self.apply(other, |a, b| a + b);
        self.max_send_lag_us = self.max_send_lag_us.max(other.max_send_lag_us);
        self.first_connect_at_us = match (self.first_connect_at_us, other.first_connect_at_us) {
            (0, theirs) => theirs,
            (mine, 0) => mine,
            (mine, theirs) => mine.min(theirs),
        };
        self.last_first_join_at_us = self.last_first_join_at_us.max(other.last_first_join_at_us);
    }

    /// First joins per second over the ramp-up, when there were any.
    pub(crate) fn join_rate(&self) -> Option<(u64, f64)> {
        let span = self
            .last_first_join_at_us
            .checked_sub(self.first_connect_at_us)
            .filter(|_| self.first_connect_at_us > 0 && self.first_joins > 0)?;
        Some((self.first_joins, span.max(1) as f64 / 1e6))
    }

    /// `self - earlier`: what happened since `earlier` was taken.
    pub(crate) fn since(&self, earlier: &Self) -> Self {
        let mut delta = self.clone();
        delta.apply(earlier, u64::saturating_sub);
        delta.errors.retain(|_, n| *n > 0);
        delta.close_codes.retain(|_, n| *n > 0);
        delta.max_send_lag_us = self.max_send_lag_us;
        // Instants, not counts.
        delta.first_connect_at_us = self.first_connect_at_us;
        delta.last_first_join_at_us = self.last_first_join_at_us;
        delta
    }

    fn apply(&mut self, other: &Self, op: impl Fn(u64, u64) -> u64) {
        let pairs = [
            (&mut self.snapshots_received, other.snapshots_received),
            (&mut self.snapshots_expected, other.snapshots_expected),
            (&mut self.keyframes, other.keyframes),
            (&mut self.tick_gaps, other.tick_gaps),
            (&mut self.events_received, other.events_received),
            (&mut self.bytes_in, other.bytes_in),
            (&mut self.bytes_out, other.bytes_out),
            (&mut self.states_sent, other.states_sent),
            (&mut self.events_sent, other.events_sent),
            (&mut self.pings_sent, other.pings_sent),
            (&mut self.sends_late, other.sends_late),
            (&mut self.sends_skipped, other.sends_skipped),
            (&mut self.connects, other.connects),
            (&mut self.reconnects, other.reconnects),
            (&mut self.resumes, other.resumes),
            (&mut self.resumes_refused, other.resumes_refused),
            (&mut self.resume_lost, other.resume_lost),
            (&mut self.wrong_node_followed, other.wrong_node_followed),
            (&mut self.routed, other.routed),
            (&mut self.matchmade, other.matchmade),
            (&mut self.redirects, other.redirects),
            (&mut self.redirect_ticks_missed, other.redirect_ticks_missed),
            (&mut self.events_resent, other.events_resent),
            (&mut self.events_unconfirmed, other.events_unconfirmed),
            (&mut self.first_joins, other.first_joins),
        ];
        for (mine, theirs) in pairs {
            *mine = op(*mine, theirs);
        }
        for (kind, n) in &other.errors {
            let mine = self.errors.entry(kind.clone()).or_default();
            *mine = op(*mine, *n);
        }
        for (code, n) in &other.close_codes {
            let mine = self.close_codes.entry(*code).or_default();
            *mine = op(*mine, *n);
        }
    }
}

/// Percentile summary of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) min: u64,
    pub(crate) mean: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Summary {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            min: histogram.min(),
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }

    /// A named statistic (`p50`, `p90`, `p99`, `p99.9`, `max`, `min`, `mean`), for SLOs.
    pub(crate) fn stat(&self, name: &str) -> Option<f64> {
        Some(match name {
            "p50" => self.p50 as f64,
            "p90" => self.p90 as f64,
            "p99" => self.p99 as f64,
            "p99.9" | "p999" => self.p999 as f64,
            "max" => self.max as f64,
            "min" => self.min as f64,
            "mean" => self.mean,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_difference() {
        let mut a = Counters {
            snapshots_received: 10,
            ..Counters::default()
        };
        a.error("connect_refused");
        let mut b = a.clone();
        b.snapshots_received = 25;
        b.error("connect_refused");
        b.error("closed:4002");
        let delta = b.since(&a);
        assert_eq!(delta.snapshots_received, 15);
        assert_eq!(delta.errors.get("connect_refused"), Some(&1));
        assert_eq!(delta.total_errors(), 2);
        let mut sum = a.clone();
        sum.add(&b);
        assert_eq!(sum.snapshots_received, 35);
        assert_eq!(sum.errors["connect_refused"], 3);
    }

    #[test]
    fn histograms_merge_and_saturate() {
        let mut a = Histograms::default();
        let mut b = Histograms::default();
        a.record(Metric::Broadcast, 100);
        b.record(Metric::Broadcast, 300);
        b.record(Metric::Rtt, u64::MAX);
        a.add(&b);
        assert_eq!(a.get(Metric::Broadcast).len(), 2);
        assert_eq!(Summary::of(a.get(Metric::Broadcast)).min, 100);
        assert!(a.get(Metric::Rtt).max() >= 59_000_000);
    }
}
