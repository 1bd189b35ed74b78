//! A distributed run's figures: what each shard publishes (`ShardMessage`: one interval per
//! second, then its final figures), and the merge of every shard's messages into one live
//! timeline and one report. Bookkeeping only: no Redis, no clock (times are passed in as
//! milliseconds since the run's common start, on the coordinating Redis's clock).
//!
//! Lossless by construction: histograms travel as HdrHistogram V2 encodings and are added,
//! never averaged; counters are added; an interval that comes after its second was closed is
//! handed back (`Late`) so the interval log still gets it, and the report is built from the
//! shards' final figures, not from the live seconds.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::clock::OffsetEstimate;
use crate::hlog;
use crate::report::{JoinRate, Report, ShardFigures, Shards, StormResult, TimelinePoint};
use crate::stats::{Counters, Histograms, Metric, NodeSamples, Summary};

/// How long a second waits for a shard that has not reported past it (a stalled or dead
/// shard) before it closes without it.
pub(crate) const SECOND_GRACE_MS: u64 = 3_000;

/// One message a shard publishes, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ShardMessage {
    Interval(Box<ShardInterval>),
    Final(Box<ShardFinal>),
}

impl ShardMessage {
    pub(crate) fn shard(&self) -> usize {
        match self {
            Self::Interval(interval) => interval.shard,
            Self::Final(last) => last.shard,
        }
    }
}

/// About a second of one shard: its samples, and its cumulative figures at the end of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShardInterval {
    pub(crate) shard: usize,
    /// Counts the shard's intervals from 0: a message pushed twice (a retry whose first
    /// push went through) is seen once.
    pub(crate) seq: u64,
    /// End of the interval, ms since the run's common start.
    pub(crate) end_ms: u64,
    pub(crate) length_ms: u64,
    pub(crate) histograms: WireHistograms,
    /// Cumulative since the shard started.
    pub(crate) counters: Counters,
    pub(crate) clients_joined: usize,
    /// The shard's share of the clients.
    pub(crate) clients: usize,
    pub(crate) measuring: bool,
}

/// A shard's figures once its run is over: what its own report holds, with the histograms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShardFinal {
    pub(crate) shard: usize,
    /// Where it ran (host name and process id), for the report.
    pub(crate) host: String,
    /// The run's parameters as this shard resolved them.
    pub(crate) parameters: serde_json::Value,
    /// The measured window's samples.
    pub(crate) measured: WireHistograms,
    /// Counters over the measured window.
    pub(crate) window: Counters,
    /// Counters over the whole run.
    pub(crate) whole_run: Counters,
    pub(crate) measured_seconds: f64,
    // u64, not the report's u128: serde's tagged enums cannot carry a u128.
    pub(crate) window_start_unix_ms: u64,
    pub(crate) window_end_unix_ms: u64,
    pub(crate) started_unix_ms: u64,
    pub(crate) tick_hz: Option<u32>,
    pub(crate) clients: usize,
    pub(crate) clients_joined_at_end: usize,
    pub(crate) clients_joined_avg: f64,
    pub(crate) snapshots_nominal: f64,
    pub(crate) clock_offset: Option<OffsetEstimate>,
    pub(crate) clock_corrected: bool,
    pub(crate) storm: Option<StormResult>,
}

impl ShardFinal {
    /// What shard `shard` publishes once its own report is built.
    pub(crate) fn of(report: &Report, shard: usize, host: String) -> Self {
        let clients = report
            .parameters
            .as_ref()
            .map_or(report.clients_joined_at_end, |plan| plan.shard_clients);
        Self {
            shard,
            host,
            parameters: report
                .parameters
                .as_ref()
                .map(crate::plan::Plan::shared_parameters)
                .unwrap_or_default(),
            measured: WireHistograms::of(&report.histograms),
            window: report.counters.clone(),
            whole_run: report.whole_run.clone(),
            measured_seconds: report.measured_seconds,
            window_start_unix_ms: report.window_start_unix_ms as u64,
            window_end_unix_ms: report.window_end_unix_ms as u64,
            started_unix_ms: report.started_unix_ms as u64,
            tick_hz: report.tick_hz,
            clients,
            clients_joined_at_end: report.clients_joined_at_end,
            clients_joined_avg: report.clients_joined_avg,
            snapshots_nominal: report.snapshots_nominal,
            clock_offset: report.clock_offset,
            clock_corrected: report.clock_corrected,
            storm: report.storm.clone(),
        }
    }
}

/// `Histograms` as they travel: each metric's histogram, and each node's broadcast
/// histogram, as base64 HdrHistogram V2 (deflate), the interval log's encoding.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WireHistograms {
    metrics: BTreeMap<String, String>,
    nodes: BTreeMap<String, WireNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireNode {
    snapshots: u64,
    broadcast: String,
}

impl WireHistograms {
    pub(crate) fn of(histograms: &Histograms) -> Self {
        let metrics = Metric::ALL
            .into_iter()
            .filter(|&metric| !histograms.get(metric).is_empty())
            .map(|metric| {
                (
                    metric.name().to_owned(),
                    hlog::encode(histograms.get(metric)),
                )
            })
            .collect();
        let nodes = histograms
            .by_node
            .iter()
            .filter(|(_, samples)| samples.snapshots > 0)
            .map(|(node, samples)| {
                let wire = WireNode {
                    snapshots: samples.snapshots,
                    broadcast: hlog::encode(&samples.broadcast),
                };
                (node.to_string(), wire)
            })
            .collect();
        Self { metrics, nodes }
    }

    /// Back to histograms; a metric this build does not know is an error (a newer shard).
    pub(crate) fn decode(&self) -> anyhow::Result<Histograms> {
        let mut histograms = Histograms::default();
        for (name, text) in &self.metrics {
            let metric =
                Metric::from_name(name).with_context(|| format!("unknown metric {name:?}"))?;
            let histogram = hlog::decode(text).with_context(|| format!("metric {name}"))?;
            histograms
                .get_mut(metric)
                .add(&histogram)
                .map_err(|err| anyhow::anyhow!("metric {name}: {err:?}"))?;
        }
        for (node, wire) in &self.nodes {
            let broadcast =
                hlog::decode(&wire.broadcast).with_context(|| format!("node {node}"))?;
            let mut one = Histograms::default();
            one.by_node.insert(
                node.as_str().into(),
                NodeSamples {
                    snapshots: wire.snapshots,
                    broadcast,
                },
            );
            histograms.add(&one);
        }
        Ok(histograms)
    }
}

/// A closed second of the merged run.
pub(crate) struct ClosedSecond {
    /// Its index: it covers [index, index + 1) s after the common start.
    pub(crate) index: u64,
    pub(crate) histograms: Histograms,
    pub(crate) point: TimelinePoint,
    /// Shards that had not reported past it when it closed.
    pub(crate) missing: Vec<usize>,
}

/// An interval that came after its second had closed: its samples, to log on their own.
pub(crate) struct Late {
    pub(crate) shard: usize,
    pub(crate) start_ms: u64,
    pub(crate) length_ms: u64,
    pub(crate) histograms: Histograms,
}

/// A shard's cumulative figures at the end of one of its intervals.
#[derive(Clone)]
struct Latest {
    end_ms: u64,
    counters: Counters,
    clients_joined: usize,
    clients: usize,
    measuring: bool,
}

impl Latest {
    fn of(interval: &ShardInterval) -> Self {
        Self {
            end_ms: interval.end_ms,
            counters: interval.counters.clone(),
            clients_joined: interval.clients_joined,
            clients: interval.clients,
            measuring: interval.measuring,
        }
    }
}

/// A second not closed yet: its samples, and each shard's figures at its last interval in it.
struct Second {
    histograms: Histograms,
    latest: Vec<Option<Latest>>,
}

/// How long a shard must have been seen gone (not live in any status) before the merge
/// stops waiting for its final figures: longer than its heartbeat's lifetime, so a shard
/// whose heartbeats were only delayed (Redis briefly away) is not written off.
pub(crate) const GONE_AFTER_MS: u64 = 10_000;

/// Merges `shards` shards' messages, by the second of the common clock each interval ends in.
pub(crate) struct ShardMerger {
    shards: usize,
    /// Seconds not closed yet, by index; every index below `next` is closed.
    open: BTreeMap<u64, Second>,
    next: u64,
    /// Each shard's newest figures, whatever second they are in.
    latest: Vec<Option<Latest>>,
    /// Each shard's figures as of the last closed second (what the timeline shows).
    closed: Vec<Option<Latest>>,
    /// Each shard's last interval taken, by sequence number.
    seen: Vec<Option<u64>>,
    finals: Vec<Option<ShardFinal>>,
    /// Since when (ms, the caller's clock) each shard has been seen not live, if it is.
    gone_since: Vec<Option<u64>>,
    /// Snapshots received by all shards as of the last closed second.
    snapshots_before: u64,
    timeline: Vec<TimelinePoint>,
}

impl ShardMerger {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards,
            open: BTreeMap::new(),
            next: 0,
            latest: vec![None; shards],
            closed: vec![None; shards],
            seen: vec![None; shards],
            finals: vec![None; shards],
            gone_since: vec![None; shards],
            snapshots_before: 0,
            timeline: Vec::new(),
        }
    }

    /// Takes one message; an interval whose second has closed comes back as `Late`, one
    /// seen before (by its sequence number) is dropped.
    pub(crate) fn accept(&mut self, message: ShardMessage) -> anyhow::Result<Option<Late>> {
        let shard = message.shard();
        anyhow::ensure!(
            shard < self.shards,
            "a message from shard {shard} in a run of {} shards",
            self.shards
        );
        let interval = match message {
            ShardMessage::Final(last) => {
                self.finals[shard] = Some(*last);
                return Ok(None);
            }
            ShardMessage::Interval(interval) => *interval,
        };
        if self.seen[shard].is_some_and(|seen| interval.seq <= seen) {
            return Ok(None);
        }
        self.seen[shard] = Some(interval.seq);
        let histograms = interval.histograms.decode()?;
        let newer =
            |slot: &Option<Latest>| slot.as_ref().is_none_or(|l| interval.end_ms >= l.end_ms);
        if newer(&self.latest[shard]) {
            self.latest[shard] = Some(Latest::of(&interval));
        }
        let second = interval.end_ms.saturating_sub(1) / 1000;
        if second < self.next {
            return Ok(Some(Late {
                shard,
                start_ms: interval.end_ms.saturating_sub(interval.length_ms),
                length_ms: interval.length_ms,
                histograms,
            }));
        }
        let shards = self.shards;
        let open = self.open.entry(second).or_insert_with(|| Second {
            histograms: Histograms::default(),
            latest: vec![None; shards],
        });
        open.histograms.add(&histograms);
        if newer(&open.latest[shard]) {
            open.latest[shard] = Some(Latest::of(&interval));
        }
        Ok(None)
    }

    /// Closes, in order, every second that all shards have reported past (or finished), or
    /// that ended more than `SECOND_GRACE_MS` before `now_ms`.
    pub(crate) fn close_ready(&mut self, now_ms: u64) -> Vec<ClosedSecond> {
        let mut closed = Vec::new();
        // Seconds past every interval received so far wait: nobody has reached them.
        let newest = self
            .latest
            .iter()
            .flatten()
            .map(|latest| latest.end_ms)
            .max();
        while newest.is_some_and(|newest| self.next * 1000 < newest) {
            let end_ms = (self.next + 1) * 1000;
            let missing = self.missing_at(end_ms);
            let waited = now_ms >= end_ms + SECOND_GRACE_MS;
            // Every shard past it (no more samples can come for it), or waited for long enough.
            if !missing.is_empty() && !waited {
                break;
            }
            closed.push(self.close_next(missing));
        }
        closed
    }

    /// Closes every second still holding samples: the run is over.
    pub(crate) fn close_all(&mut self) -> Vec<ClosedSecond> {
        let mut closed = Vec::new();
        while let Some(&last) = self.open.keys().next_back() {
            if last < self.next {
                break;
            }
            let missing = self.missing_at((self.next + 1) * 1000);
            closed.push(self.close_next(missing));
        }
        closed
    }

    fn close_next(&mut self, missing: Vec<usize>) -> ClosedSecond {
        let second = self.open.remove(&self.next);
        let histograms = match second {
            Some(second) => {
                for (closed, latest) in self.closed.iter_mut().zip(second.latest) {
                    if latest.is_some() {
                        *closed = latest;
                    }
                }
                second.histograms
            }
            None => Histograms::default(),
        };
        let point = self.point(&histograms);
        self.timeline.push(point.clone());
        let second = ClosedSecond {
            index: self.next,
            histograms,
            point,
            missing,
        };
        self.next += 1;
        second
    }

    fn missing_at(&self, end_ms: u64) -> Vec<usize> {
        (0..self.shards)
            .filter(|&shard| !self.past(shard, end_ms))
            .collect()
    }

    fn past(&self, shard: usize, end_ms: u64) -> bool {
        self.finals[shard].is_some()
            || self.latest[shard]
                .as_ref()
                .is_some_and(|latest| latest.end_ms >= end_ms)
    }

    /// The second just closed as a timeline point: its samples, and the shards' cumulative
    /// figures as of its end.
    fn point(&mut self, histograms: &Histograms) -> TimelinePoint {
        let at_end = self.closed.iter().flatten();
        let snapshots: u64 = at_end
            .clone()
            .map(|latest| latest.counters.snapshots_received)
            .sum();
        let snapshots_before = std::mem::replace(&mut self.snapshots_before, snapshots);
        let quantile = |metric, q| {
            let histogram = histograms.get(metric);
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(q))
        };
        TimelinePoint {
            seconds: (self.next + 1) as f64,
            interval_seconds: 1.0,
            clients_joined: at_end.clone().map(|latest| latest.clients_joined).sum(),
            snapshots_per_second: snapshots.saturating_sub(snapshots_before) as f64,
            broadcast_p50_us: quantile(Metric::Broadcast, 0.5),
            broadcast_p99_us: quantile(Metric::Broadcast, 0.99),
            broadcast_p999_us: quantile(Metric::Broadcast, 0.999),
            input_p99_us: quantile(Metric::InputToVisible, 0.99),
            errors: at_end
                .clone()
                .map(|latest| latest.counters.total_errors())
                .sum(),
            measuring: at_end.clone().any(|latest| latest.measuring),
        }
    }

    /// Takes one status of the run: `live` shards at `now_ms` (the caller's clock).
    pub(crate) fn observe_live(&mut self, live: &[usize], now_ms: u64) {
        for (shard, since) in self.gone_since.iter_mut().enumerate() {
            if live.contains(&shard) {
                *since = None;
            } else {
                since.get_or_insert(now_ms);
            }
        }
    }

    /// Whether the run is over at `now_ms`: every shard has sent its final figures, or has
    /// been seen gone for `GONE_AFTER_MS` (it never will).
    pub(crate) fn over(&self, now_ms: u64) -> bool {
        self.unfinished().iter().all(|&shard| {
            self.gone_since[shard].is_some_and(|since| now_ms >= since + GONE_AFTER_MS)
        })
    }

    /// Clients of every shard that has reported, and how many of those shards there are.
    pub(crate) fn clients(&self) -> (usize, usize) {
        let latest = self.latest.iter().flatten();
        (
            latest.clone().map(|latest| latest.clients).sum(),
            latest.count(),
        )
    }

    /// Shards whose final figures have not come.
    pub(crate) fn unfinished(&self) -> Vec<usize> {
        (0..self.shards)
            .filter(|&shard| self.finals[shard].is_none())
            .collect()
    }

    /// The merged report from every shard's final figures; `missing` shards (gone without
    /// them) are named in it. Fails when no shard finished.
    pub(crate) fn report(&self, run: &str) -> anyhow::Result<Report> {
        let finals: Vec<&ShardFinal> = self.finals.iter().flatten().collect();
        let first = finals
            .first()
            .context("no shard published its final figures")?;
        let mut measured = Histograms::default();
        let mut window = Counters::default();
        let mut whole_run = Counters::default();
        let mut by_shard = Vec::new();
        for last in &finals {
            let histograms = last
                .measured
                .decode()
                .with_context(|| format!("shard {}'s histograms", last.shard))?;
            measured.add(&histograms);
            window.add(&last.window);
            whole_run.add(&last.whole_run);
            by_shard.push(ShardFigures {
                shard: last.shard,
                host: last.host.clone(),
                clients: last.clients,
                clients_joined_at_end: last.clients_joined_at_end,
                snapshots: last.window.snapshots_received,
                broadcast: (!histograms.get(Metric::Broadcast).is_empty())
                    .then(|| Summary::of(histograms.get(Metric::Broadcast))),
                errors: last.whole_run.total_errors(),
                clock_offset: last.clock_offset,
            });
        }
        // Windows open and close together (a barrier), so the longest is the window.
        let seconds = finals
            .iter()
            .map(|last| last.measured_seconds)
            .fold(0.0, f64::max);
        let mut report = Report::new(None, &measured, window, seconds);
        let earliest = |at: fn(&ShardFinal) -> u64| finals.iter().map(|l| at(l)).min();
        report.started_unix_ms = earliest(|l| l.started_unix_ms).unwrap_or(0).into();
        report.window_start_unix_ms = earliest(|l| l.window_start_unix_ms).unwrap_or(0).into();
        report.window_end_unix_ms = finals
            .iter()
            .map(|l| l.window_end_unix_ms)
            .max()
            .unwrap_or(0)
            .into();
        report.tick_hz = finals.iter().find_map(|l| l.tick_hz);
        report.clients_joined_at_end = finals.iter().map(|l| l.clients_joined_at_end).sum();
        report.clients_joined_avg = finals.iter().map(|l| l.clients_joined_avg).sum();
        report.snapshots_nominal = finals.iter().map(|l| l.snapshots_nominal).sum();
        report.errors_whole_run = whole_run.errors.clone();
        report.wrong_node_followed = whole_run.wrong_node_followed;
        report.routed = whole_run.routed;
        report.matchmade = whole_run.matchmade;
        report.join_rate = whole_run.join_rate().map(|(clients, seconds)| JoinRate {
            clients,
            seconds,
            per_second: clients as f64 / seconds,
        });
        report.whole_run = whole_run;
        // Each shard's clock is its own machine's: one offset for all would mean nothing.
        report.clock_corrected = finals.iter().all(|l| l.clock_corrected);
        report.storm = merge_storms(&finals);
        report.timeline = self.timeline.clone();
        report.shards = Some(Shards {
            run: run.to_owned(),
            count: self.shards,
            missing: self.unfinished(),
            parameters: first.parameters.clone(),
            by_shard,
        });
        Ok(report)
    }
}

/// The storms of shards that stormed together, as one.
fn merge_storms(finals: &[&ShardFinal]) -> Option<StormResult> {
    let storms: Vec<&StormResult> = finals.iter().filter_map(|l| l.storm.as_ref()).collect();
    if storms.is_empty() {
        return None;
    }
    let recovery = storms
        .iter()
        .map(|storm| storm.recovery_ms)
        .try_fold(0.0f64, |slowest, ms| ms.map(|ms| slowest.max(ms)));
    Some(StormResult {
        clients: storms.iter().map(|storm| storm.clients).sum(),
        clients_back: storms.iter().map(|storm| storm.clients_back).sum(),
        recovery_ms: recovery,
        resumed: storms.iter().map(|storm| storm.resumed).sum(),
        resumes_refused: storms.iter().map(|storm| storm.resumes_refused).sum(),
        lost: storms.iter().map(|storm| storm.lost).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(shard: usize, end_ms: u64, broadcast_us: &[u64], received: u64) -> ShardMessage {
        let mut histograms = Histograms::default();
        let node: std::sync::Arc<str> = format!("ws://node-{shard}/ws").into();
        for &micros in broadcast_us {
            histograms.record_snapshot(&node, micros);
        }
        ShardMessage::Interval(Box::new(ShardInterval {
            shard,
            seq: end_ms,
            end_ms,
            length_ms: 1000,
            histograms: WireHistograms::of(&histograms),
            counters: Counters {
                snapshots_received: received,
                ..Counters::default()
            },
            clients_joined: 5,
            clients: 5,
            measuring: true,
        }))
    }

    fn last(shard: usize, broadcast_us: &[u64]) -> ShardMessage {
        let mut histograms = Histograms::default();
        for &micros in broadcast_us {
            histograms.record(Metric::Broadcast, micros);
        }
        let mut report = Report::new(None, &histograms, Counters::default(), 2.0);
        report.counters.snapshots_received = broadcast_us.len() as u64;
        report.whole_run.error("closed:1006");
        report.clients_joined_at_end = 5;
        ShardMessage::Final(Box::new(ShardFinal::of(
            &report,
            shard,
            format!("host-{shard}"),
        )))
    }

    fn broadcast_count(histograms: &Histograms) -> u64 {
        histograms.get(Metric::Broadcast).len()
    }

    #[test]
    fn histograms_survive_the_wire_exactly() {
        let mut histograms = Histograms::default();
        let node: std::sync::Arc<str> = "ws://a/ws".into();
        for micros in [1, 17, 900, 45_000, 3_000_000] {
            histograms.record_snapshot(&node, micros);
            histograms.record(Metric::Rtt, micros * 2);
        }
        let text = serde_json::to_string(&WireHistograms::of(&histograms)).unwrap();
        let back: WireHistograms = serde_json::from_str(&text).unwrap();
        let back = back.decode().unwrap();
        for metric in Metric::ALL {
            assert_eq!(back.get(metric), histograms.get(metric), "{metric:?}");
        }
        assert_eq!(back.by_node[&node].snapshots, 5);
        assert_eq!(
            back.by_node[&node].broadcast,
            histograms.by_node[&node].broadcast
        );
    }

    #[test]
    fn a_second_closes_once_every_shard_reported_past_it() {
        let mut merger = ShardMerger::new(2);
        assert!(
            merger
                .accept(interval(0, 1000, &[100], 10))
                .unwrap()
                .is_none()
        );
        assert!(
            merger.close_ready(1000).is_empty(),
            "shard 1 has not reported"
        );
        merger.accept(interval(1, 900, &[], 15)).unwrap();
        // Ends just past second 0: it counts in second 1.
        merger.accept(interval(1, 1010, &[200, 300], 20)).unwrap();
        let closed = merger.close_ready(1100);
        assert_eq!(closed.len(), 1, "second 0: both shards are past it");
        assert_eq!(closed[0].index, 0);
        assert_eq!(broadcast_count(&closed[0].histograms), 1);
        assert!(closed[0].missing.is_empty());
        assert_eq!(closed[0].point.clients_joined, 10);
        // As of second 0's end: shard 0's 10 and shard 1's 15 (its 20 came in second 1).
        assert_eq!(closed[0].point.snapshots_per_second, 25.0);
        merger.accept(interval(0, 2000, &[400], 30)).unwrap();
        // Shard 1 reports nothing more: second 1 waits for it, then closes without it.
        assert!(merger.close_ready(2005).is_empty());
        assert!(merger.close_ready(2000 + SECOND_GRACE_MS - 1).is_empty());
        let closed = merger.close_ready(2000 + SECOND_GRACE_MS);
        assert_eq!(closed.len(), 1, "and no second nobody has reached");
        assert_eq!(closed[0].missing, [1]);
        assert_eq!(broadcast_count(&closed[0].histograms), 3);
        assert!(merger.close_all().is_empty());
    }

    #[test]
    fn the_end_closes_every_second_holding_samples() {
        let mut merger = ShardMerger::new(1);
        merger.accept(interval(0, 1500, &[100], 1)).unwrap();
        merger.accept(interval(0, 3200, &[200], 2)).unwrap();
        assert_eq!(merger.close_ready(3300).len(), 3, "seconds 0 to 2");
        let rest = merger.close_all();
        assert_eq!(rest.iter().map(|s| s.index).collect::<Vec<_>>(), [3]);
        assert_eq!(broadcast_count(&rest[0].histograms), 1);
    }

    #[test]
    fn an_interval_for_a_closed_second_comes_back_late_not_lost() {
        let mut merger = ShardMerger::new(2);
        merger.accept(interval(0, 1000, &[100], 1)).unwrap();
        let closed = merger.close_ready(1000 + SECOND_GRACE_MS);
        assert_eq!(closed[0].missing, [1]);
        let late = merger
            .accept(interval(1, 990, &[700, 800], 2))
            .unwrap()
            .expect("late");
        assert_eq!((late.shard, late.start_ms, late.length_ms), (1, 0, 1000));
        assert_eq!(broadcast_count(&late.histograms), 2);
    }

    #[test]
    fn the_report_adds_every_shards_final_figures() {
        let mut merger = ShardMerger::new(3);
        merger.accept(last(0, &[100, 200])).unwrap();
        merger.accept(last(2, &[300])).unwrap();
        assert_eq!(merger.unfinished(), [1]);
        let report = merger.report("demo").unwrap();
        assert_eq!(report.latency["broadcast"].count, 3);
        assert_eq!(report.latency["broadcast"].max, 300);
        assert_eq!(report.counters.snapshots_received, 3);
        assert_eq!(report.errors_whole_run["closed:1006"], 2);
        assert_eq!(report.clients_joined_at_end, 10);
        let shards = report.shards.as_ref().unwrap();
        assert_eq!(shards.missing, [1]);
        assert_eq!(
            shards.by_shard.iter().map(|s| s.shard).collect::<Vec<_>>(),
            [0, 2]
        );
        assert_eq!(shards.by_shard[0].host, "host-0");
        assert!(ShardMerger::new(2).report("none").is_err());
    }

    #[test]
    fn an_interval_pushed_twice_counts_once() {
        let mut merger = ShardMerger::new(1);
        merger.accept(interval(0, 1000, &[100, 200], 2)).unwrap();
        merger.accept(interval(0, 1000, &[100, 200], 2)).unwrap();
        merger.accept(interval(0, 2000, &[300], 3)).unwrap();
        let closed = merger.close_all();
        assert_eq!(broadcast_count(&closed[0].histograms), 2);
        assert_eq!(broadcast_count(&closed[1].histograms), 1);
    }

    #[test]
    fn each_second_shows_the_figures_as_of_its_end_even_read_all_at_once() {
        // A `watch` started after the run reads every interval before closing any second.
        let mut merger = ShardMerger::new(2);
        for second in 1..=3u64 {
            for shard in 0..2 {
                merger
                    .accept(interval(shard, second * 1000, &[100], second * 30))
                    .unwrap();
            }
        }
        let closed = merger.close_ready(u64::MAX / 2);
        let rates: Vec<f64> = closed
            .iter()
            .map(|second| second.point.snapshots_per_second)
            .collect();
        assert_eq!(rates, [60.0, 60.0, 60.0], "not all in the first second");
    }

    #[test]
    fn the_run_is_over_when_every_shard_finished_or_stayed_gone() {
        let mut merger = ShardMerger::new(2);
        merger.observe_live(&[0, 1], 0);
        assert!(!merger.over(0));
        merger.accept(last(0, &[100])).unwrap();
        // Shard 1 is not seen live any more: a heartbeat late, or dead.
        merger.observe_live(&[], 1_000);
        assert!(!merger.over(1_000 + GONE_AFTER_MS - 1));
        merger.observe_live(&[1], 2_000);
        merger.observe_live(&[], 3_000);
        assert!(
            !merger.over(1_000 + GONE_AFTER_MS),
            "seen live again: the wait starts over"
        );
        assert!(merger.over(3_000 + GONE_AFTER_MS));
        merger.accept(last(1, &[100])).unwrap();
        merger.observe_live(&[0, 1], 4_000);
        assert!(merger.over(4_000), "both finished");
    }

    #[test]
    fn a_message_from_outside_the_run_is_refused() {
        let mut merger = ShardMerger::new(1);
        assert!(merger.accept(interval(1, 1000, &[], 0)).is_err());
    }
}
