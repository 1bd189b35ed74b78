//! The result of a run (or of `merge`): latency summaries, counters, derived ratios, scenario
//! results; rendered as a human-readable table and as versioned JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::clock::OffsetEstimate;
use crate::plan::Plan;
use crate::stats::{Counters, Histograms, Metric, Summary};

/// Bumped when a field changes meaning or disappears.
pub(crate) const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RampStep {
    pub(crate) clients: usize,
    pub(crate) broadcast_p99_us: u64,
    pub(crate) errors: u64,
    pub(crate) tick_gaps: u64,
    pub(crate) snapshots_expected: u64,
    pub(crate) met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RampResult {
    pub(crate) bound_us: u64,
    pub(crate) steps: Vec<RampStep>,
    /// The largest client count whose step met the bound.
    pub(crate) knee: Option<usize>,
}

impl RampResult {
    /// The ramp's conclusion in words.
    pub(crate) fn knee_text(&self) -> String {
        match self.knee {
            Some(knee) => format!("knee: {knee} clients"),
            None => "knee: none (the first step already broke the bound)".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct JoinRate {
    pub(crate) clients: u64,
    /// From the first connect attempt to the last first `welcome`.
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StormResult {
    pub(crate) clients: usize,
    pub(crate) clients_back: usize,
    /// From dropping every connection until all were joined again (None: not all came back).
    pub(crate) recovery_ms: Option<f64>,
    /// Of the reconnections since the storm: those that took their seat back, those refused
    /// (`seat_expired`, joined afresh), and the reliable messages the resumed seats lost.
    pub(crate) resumed: u64,
    pub(crate) resumes_refused: u64,
    pub(crate) lost: u64,
}

impl StormResult {
    /// The storm's outcome in words.
    pub(crate) fn summary(&self) -> String {
        let back = match self.recovery_ms {
            Some(ms) => format!("all {} clients back after {ms:.0} ms", self.clients),
            None => format!(
                "only {}/{} clients came back",
                self.clients_back, self.clients
            ),
        };
        format!(
            "{back}; {} resumed their seat ({:.1}%), {} refused (seat_expired), {} reliable messages lost",
            self.resumed,
            100.0 * self.resumed as f64 / self.clients.max(1) as f64,
            self.resumes_refused,
            self.lost
        )
    }
}

/// What the clients connected to one node received from it over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NodeFigures {
    pub(crate) snapshots: u64,
    pub(crate) broadcast: Summary,
}

/// One collection interval (about a second) of a run, as the coordinator saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TimelinePoint {
    /// Seconds since the run started, at the end of the interval.
    pub(crate) seconds: f64,
    /// Length of the interval: about a second, shorter where the measured window opened or
    /// closed.
    pub(crate) interval_seconds: f64,
    pub(crate) clients_joined: usize,
    pub(crate) snapshots_per_second: f64,
    /// Latency percentiles over the interval (null: no samples in it).
    pub(crate) broadcast_p50_us: Option<u64>,
    pub(crate) broadcast_p99_us: Option<u64>,
    pub(crate) broadcast_p999_us: Option<u64>,
    pub(crate) input_p99_us: Option<u64>,
    /// Errors since the run started.
    pub(crate) errors: u64,
    /// Whether the interval is part of the measured window.
    pub(crate) measuring: bool,
}

/// A broken `--slo` bound: what was required and what was measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Violation {
    pub(crate) bound: String,
    /// The measured value; null when the metric had no samples (a bound on nothing is broken).
    pub(crate) actual: Option<f64>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.actual {
            Some(actual) => write!(f, "{} (measured {actual})", self.bound),
            None => write!(f, "{} (no samples)", self.bound),
        }
    }
}

/// The outcome of checking `--slo` against the report (see `slo`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SloResult {
    pub(crate) spec: String,
    pub(crate) passed: bool,
    pub(crate) violations: Vec<Violation>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) version: u32,
    pub(crate) tool: &'static str,
    /// The run's parameters (absent for `merge`).
    pub(crate) parameters: Option<Plan>,
    pub(crate) started_unix_ms: u128,
    /// Length of the measured window (after ramp-up and warm-up).
    pub(crate) measured_seconds: f64,
    /// Wall-clock bounds of the measured window (Unix ms), to line up other processes' samples.
    pub(crate) window_start_unix_ms: u128,
    pub(crate) window_end_unix_ms: u128,
    pub(crate) tick_hz: Option<u32>,
    pub(crate) clients_joined_at_end: usize,
    /// Average clients joined during the measured window.
    pub(crate) clients_joined_avg: f64,
    /// Latency summaries in microseconds, by metric name; metrics without samples are absent.
    pub(crate) latency: BTreeMap<String, Summary>,
    /// By node the clients were connected to (its WebSocket URL; several in a fleet): the
    /// snapshots received from it in the window and their broadcast latency (µs).
    pub(crate) nodes: BTreeMap<String, NodeFigures>,
    /// Counters over the measured window.
    pub(crate) counters: Counters,
    /// Errors over the whole run, ramp-up and leaving included (what `--slo errors=...` checks).
    pub(crate) errors_whole_run: BTreeMap<String, u64>,
    /// `wrong_node` answers followed over the whole run (fleet mode; joins happen in the
    /// ramp-up, outside the measured window).
    pub(crate) wrong_node_followed: u64,
    /// `GET /route` answers followed, over the whole run (`--route`).
    pub(crate) routed: u64,
    /// `POST /matchmake` answers followed, over the whole run (`--matchmake`).
    pub(crate) matchmade: u64,
    /// Ticks × members in the window, from the tick rate and the clients joined.
    pub(crate) snapshots_nominal: f64,
    pub(crate) snapshots_per_second: f64,
    pub(crate) clock_offset: Option<OffsetEstimate>,
    pub(crate) clock_corrected: bool,
    pub(crate) ramp: Option<RampResult>,
    pub(crate) storm: Option<StormResult>,
    /// Clients' first joins over the ramp-up: how many, in how long, how many per second.
    pub(crate) join_rate: Option<JoinRate>,
    pub(crate) slo: Option<SloResult>,
    /// One point per collection interval of the whole run, ramp-up included (empty for
    /// `merge`: interval logs keep only histograms).
    pub(crate) timeline: Vec<TimelinePoint>,
    /// A distributed run (`--coordinate`): its shards and each one's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shards: Option<Shards>,
    /// The histograms behind `latency`, for plots (not in the JSON: `--hlog` carries them).
    #[serde(skip)]
    pub(crate) histograms: Histograms,
    /// Counters over the whole run (`errors_whole_run` and the others above come from it).
    #[serde(skip)]
    pub(crate) whole_run: Counters,
}

impl Report {
    pub(crate) fn new(
        parameters: Option<Plan>,
        histograms: &Histograms,
        counters: Counters,
        measured_seconds: f64,
    ) -> Self {
        let latency = Metric::ALL
            .iter()
            .filter(|m| !histograms.get(**m).is_empty())
            .map(|m| (m.name().to_owned(), Summary::of(histograms.get(*m))))
            .collect();
        let nodes = histograms
            .by_node
            .iter()
            .filter(|(_, samples)| samples.snapshots > 0)
            .map(|(node, samples)| {
                let figures = NodeFigures {
                    snapshots: samples.snapshots,
                    broadcast: Summary::of(&samples.broadcast),
                };
                (node.to_string(), figures)
            })
            .collect();
        Self {
            version: REPORT_VERSION,
            tool: "tickrelay-loadgen",
            parameters,
            started_unix_ms: 0,
            measured_seconds,
            window_start_unix_ms: 0,
            window_end_unix_ms: 0,
            tick_hz: None,
            clients_joined_at_end: 0,
            clients_joined_avg: 0.0,
            latency,
            nodes,
            snapshots_per_second: if measured_seconds > 0.0 {
                counters.snapshots_received as f64 / measured_seconds
            } else {
                0.0
            },
            errors_whole_run: counters.errors.clone(),
            wrong_node_followed: counters.wrong_node_followed,
            routed: counters.routed,
            matchmade: counters.matchmade,
            counters,
            snapshots_nominal: 0.0,
            clock_offset: None,
            clock_corrected: false,
            ramp: None,
            storm: None,
            join_rate: None,
            slo: None,
            timeline: Vec::new(),
            shards: None,
            histograms: histograms.clone(),
            whole_run: Counters::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn empty_for_tests() -> Self {
        Self::new(None, &Histograms::default(), Counters::default(), 1.0)
    }

    /// Received / expected snapshots. Clients that joined and saw no snapshot at all give 0
    /// (the server delivered nothing), not 1; with no client joined there is nothing to judge
    /// (None).
    pub(crate) fn delivery_ratio(&self) -> Option<f64> {
        match self.counters.snapshots_expected {
            0 if self.clients_joined_at_end > 0 || self.clients_joined_avg > 0.0 => Some(0.0),
            0 => None,
            expected => Some(self.counters.snapshots_received as f64 / expected as f64),
        }
    }

    /// Fraction of scheduled sends the generator made late or skipped (None: none scheduled).
    pub(crate) fn late_fraction(&self) -> Option<f64> {
        let c = &self.counters;
        let scheduled = c.states_sent + c.sends_skipped;
        (scheduled > 0).then(|| (c.sends_late + c.sends_skipped) as f64 / scheduled as f64)
    }

    pub(crate) fn total_errors(&self) -> u64 {
        self.errors_whole_run.values().sum()
    }

    /// Latency summaries in report order (metrics without samples are absent).
    pub(crate) fn latency_rows(&self) -> impl Iterator<Item = (&'static str, &Summary)> {
        Metric::ALL
            .into_iter()
            .filter_map(|metric| Some((metric.name(), self.latency.get(metric.name())?)))
    }

    /// Each node's share: clients on average (its snapshots over ticks × window), snapshots,
    /// broadcast p50/p99.
    fn by_node(&self) -> String {
        let ticks = f64::from(self.tick_hz.unwrap_or(0)) * self.measured_seconds;
        let total: u64 = self.nodes.values().map(|node| node.snapshots).sum();
        self.nodes
            .iter()
            .map(|(url, node)| {
                let clients = if ticks > 0.0 {
                    format!("{:.0} clients, ", node.snapshots as f64 / ticks)
                } else {
                    String::new()
                };
                format!(
                    "{url}: {clients}{} snapshots ({:.0}%), broadcast p50 {:.2} ms p99 {:.2} ms",
                    node.snapshots,
                    100.0 * node.snapshots as f64 / total.max(1) as f64,
                    node.broadcast.p50 as f64 / 1000.0,
                    node.broadcast.p99 as f64 / 1000.0
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The counters and derived figures as (label, value) lines: the body of the table on
    /// stdout and of the HTML page's counters table.
    pub(crate) fn summary_rows(&self) -> Vec<(&'static str, String)> {
        let c = &self.counters;
        let mut rows = vec![("measured window", format!("{:.1} s", self.measured_seconds))];
        if let Some(hz) = self.tick_hz {
            rows.push(("server tick rate", format!("{hz} Hz")));
        }
        rows.push((
            "clients joined",
            format!(
                "{} at end, {:.0} on average",
                self.clients_joined_at_end, self.clients_joined_avg
            ),
        ));
        if let Some(shards) = &self.shards {
            rows.push(("by shard", shards.describe()));
        }
        if self.nodes.len() > 1 {
            rows.push(("by node", self.by_node()));
        }
        rows.push((
            "snapshots",
            format!(
                "{} received / {} expected by tick numbers ({}), {:.0} nominal (ticks x members), {:.0}/s",
                c.snapshots_received,
                c.snapshots_expected,
                percent_or(self.delivery_ratio(), "no client joined"),
                self.snapshots_nominal,
                self.snapshots_per_second
            ),
        ));
        rows.push(("keyframes", c.keyframes.to_string()));
        rows.push(("missed ticks (gaps)", c.tick_gaps.to_string()));
        rows.push((
            "events",
            format!("{} sent, {} received", c.events_sent, c.events_received),
        ));
        rows.push((
            "states / pings sent",
            format!("{} / {}", c.states_sent, c.pings_sent),
        ));
        rows.push((
            "bytes in / out",
            format!("{} / {}", c.bytes_in, c.bytes_out),
        ));
        rows.push((
            "generator late",
            format!(
                "{} of sends ({} late, {} skipped, worst lag {:.1} ms)",
                percent_or(self.late_fraction(), "none scheduled"),
                c.sends_late,
                c.sends_skipped,
                c.max_send_lag_us as f64 / 1000.0
            ),
        ));
        rows.push((
            "connects / reconnects",
            format!("{} / {}", c.connects, c.reconnects),
        ));
        if self.matchmade > 0 {
            rows.push((
                "matchmade",
                format!(
                    "{} (whole run: POST /matchmake answers followed)",
                    self.matchmade
                ),
            ));
        }
        if self.routed > 0 {
            rows.push((
                "routed",
                format!("{} (whole run: GET /route answers followed)", self.routed),
            ));
        }
        if self.wrong_node_followed > 0 {
            rows.push((
                "wrong_node followed",
                format!(
                    "{} (whole run: joins sent on to the node running the lobby)",
                    self.wrong_node_followed
                ),
            ));
        }
        if c.redirects > 0 {
            rows.push((
                "redirects (drains)",
                format!(
                    "{} followed; {} snapshots missed across them ({:.1} per redirect)",
                    c.redirects,
                    c.redirect_ticks_missed,
                    c.redirect_ticks_missed as f64 / c.redirects as f64
                ),
            ));
        }
        if c.events_resent + c.events_unconfirmed > 0 {
            rows.push((
                "events resent",
                format!(
                    "{} (never echoed before a resume), {} unconfirmed (connection ended without a lossless resume)",
                    c.events_resent, c.events_unconfirmed
                ),
            ));
        }
        if let Some(rate) = &self.join_rate {
            rows.push((
                "joins (ramp-up)",
                format!(
                    "{} in {:.3} s: {:.0}/s (connect, handshake and join, paced by --connect-rate)",
                    rate.clients, rate.seconds, rate.per_second
                ),
            ));
        }
        if !c.close_codes.is_empty() {
            rows.push(("close codes", format!("{:?}", c.close_codes)));
        }
        rows.push((
            "errors (whole run)",
            format!("{} {:?}", self.total_errors(), self.errors_whole_run),
        ));
        if let Some(clock) = &self.clock_offset {
            rows.push((
                "clock offset",
                format!(
                    "{:+.3} ms ± {:.3} ms ({} samples, {})",
                    clock.offset_us / 1000.0,
                    clock.uncertainty_us / 1000.0,
                    clock.samples,
                    if self.clock_corrected {
                        "applied to broadcast latency"
                    } else {
                        "not applied: loopback"
                    }
                ),
            ));
        }
        rows
    }

    /// The human-readable report.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nlatency (ms)      count       p50       p90       p99     p99.9       max"
        );
        for (name, s) in self.latency_rows() {
            let _ = writeln!(
                out,
                "{:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                s.count,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.p999),
                ms(s.max)
            );
        }
        out.push('\n');
        for (label, value) in self.summary_rows() {
            let _ = writeln!(out, "{label:<20} {value}");
        }
        if let Some(ramp) = &self.ramp {
            let _ = writeln!(
                out,
                "\nramp (bound: broadcast p99 <= {} ms)",
                ms(ramp.bound_us)
            );
            for step in &ramp.steps {
                let _ = writeln!(
                    out,
                    "  {:>7} clients  p99 {:>9} ms  errors {:>4}  gaps {:>6}  {}",
                    step.clients,
                    ms(step.broadcast_p99_us),
                    step.errors,
                    step.tick_gaps,
                    if step.met { "ok" } else { "BROKEN" }
                );
            }
            let _ = writeln!(out, "{}", ramp.knee_text());
        }
        if let Some(storm) = &self.storm {
            let _ = writeln!(out, "\nstorm: {}", storm.summary());
        }
        if let Some(slo) = &self.slo {
            let _ = writeln!(
                out,
                "\nslo {:?}: {}",
                slo.spec,
                if slo.passed { "passed" } else { "FAILED" }
            );
            for violation in &slo.violations {
                let _ = writeln!(out, "  broken: {violation}");
            }
        }
        out
    }
}

/// A distributed run in the merged report: which shards, and each one's share.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Shards {
    /// The run's name (`--run`).
    pub(crate) run: String,
    pub(crate) count: usize,
    /// Shards that never published their final figures (the report lacks their share).
    pub(crate) missing: Vec<usize>,
    /// The run's parameters, as the first shard that finished resolved them.
    pub(crate) parameters: serde_json::Value,
    pub(crate) by_shard: Vec<ShardFigures>,
}

impl Shards {
    /// One line: each shard's share, then who is missing.
    pub(crate) fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .by_shard
            .iter()
            .map(|shard| {
                let p99 = shard
                    .broadcast
                    .map_or_else(|| "-".to_owned(), |s| format!("{:.2} ms", s.p99 as f64 / 1000.0));
                format!(
                    "{}/{} on {}: {} of {} clients joined, {} snapshots, broadcast p99 {p99}, {} errors",
                    shard.shard,
                    self.count,
                    shard.host,
                    shard.clients_joined_at_end,
                    shard.clients,
                    shard.snapshots,
                    shard.errors
                )
            })
            .collect();
        if !self.missing.is_empty() {
            parts.push(format!(
                "MISSING {:?} (never sent their figures: not in this report)",
                self.missing
            ));
        }
        format!("run {:?}: {}", self.run, parts.join("; "))
    }
}

/// One shard's share of a distributed run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ShardFigures {
    pub(crate) shard: usize,
    pub(crate) host: String,
    pub(crate) clients: usize,
    pub(crate) clients_joined_at_end: usize,
    /// Snapshots received in the measured window.
    pub(crate) snapshots: u64,
    /// Broadcast latency in the measured window (µs; null: no sample).
    pub(crate) broadcast: Option<Summary>,
    /// Errors over the whole run.
    pub(crate) errors: u64,
    /// This shard's machine's clock against the server's.
    pub(crate) clock_offset: Option<OffsetEstimate>,
}

/// A ratio as a percentage with three decimals, or `absent` when there is none.
pub(crate) fn percent_or(ratio: Option<f64>, absent: &str) -> String {
    ratio.map_or_else(
        || absent.to_owned(),
        |ratio| format!("{:.3}%", ratio * 100.0),
    )
}

/// Microseconds as milliseconds with three decimals, the unit of every latency table.
pub(crate) fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_zero_when_clients_joined_but_no_snapshot_came() {
        let mut report = Report::empty_for_tests();
        assert_eq!(report.delivery_ratio(), None, "no client, nothing to judge");
        report.clients_joined_at_end = 4;
        report.clients_joined_avg = 4.0;
        assert_eq!(report.delivery_ratio(), Some(0.0));
        report.counters.snapshots_expected = 10;
        report.counters.snapshots_received = 9;
        assert_eq!(report.delivery_ratio(), Some(0.9));
    }

    #[test]
    fn late_fraction_needs_scheduled_sends() {
        let mut report = Report::empty_for_tests();
        assert_eq!(report.late_fraction(), None);
        report.counters.states_sent = 3;
        report.counters.sends_skipped = 1;
        report.counters.sends_late = 1;
        assert_eq!(report.late_fraction(), Some(0.5));
    }
}
