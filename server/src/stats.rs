//! The server's JSON views: `GET /lobbies` (lobbies with their members and traffic, a page
//! at a time) and
//! `GET /stats` (counters, tick timing, disconnects and errors, the busiest lobbies), which
//! feeds the live monitor page. Both are read-only snapshots built on request from the
//! metrics and the lobby directory; `/stats` is cheap enough to poll every second.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tickrelay_protocol::Member;

use crate::context::ServerContext;
use crate::lobby::{LobbyInfo, TrafficCounts};
use crate::metrics::Sample;

/// Lobbies listed by `/stats` (the most populated first); `lobby_count` is always exact.
const STATS_MAX_LOBBIES: usize = 200;
/// Member names listed per lobby by `/stats`; `member_count` is always exact.
const STATS_MAX_MEMBERS: usize = 32;

#[derive(Serialize)]
pub(crate) struct LobbyView {
    name: String,
    members: Vec<Member>,
    member_count: usize,
    tick_hz: u32,
    age_seconds: f64,
    created_unix_ms: u128,
    /// Traffic since the lobby was created (updated once per tick).
    traffic: TrafficCounts,
}

impl LobbyView {
    fn new(info: &LobbyInfo, max_members: usize) -> Self {
        let mut members = info.roster();
        let member_count = members.len();
        members.truncate(max_members);
        Self {
            name: info.name.clone(),
            members,
            member_count,
            tick_hz: info.tick_hz,
            age_seconds: info.created.elapsed().as_secs_f64(),
            created_unix_ms: info
                .created_unix
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            traffic: info.traffic.get(),
        }
    }
}

/// Lobbies per `/lobbies` page unless the request asks for fewer (`limit`).
const LOBBIES_PAGE_DEFAULT: usize = 100;
/// The most lobbies one `/lobbies` page lists, whatever the request asks.
pub(crate) const LOBBIES_PAGE_MAX: usize = 1000;

/// One page of `GET /lobbies`.
#[derive(Serialize)]
pub(crate) struct LobbyPage {
    /// Lobbies running now, in all.
    total: usize,
    /// The page size used (the request's `limit`, capped at `LOBBIES_PAGE_MAX`).
    limit: usize,
    /// Lobbies after the request's `after`, sorted by name, each with its whole roster.
    lobbies: Vec<LobbyView>,
    /// The `after` of the next page, or `null` on the last one. A name cursor, so lobbies
    /// coming and going between requests never shift a page.
    next: Option<String>,
}

/// `GET /lobbies?after=NAME&limit=N`: one page of lobbies, sorted by name.
pub(crate) fn lobbies(ctx: &ServerContext, query: Option<&str>) -> Result<LobbyPage, String> {
    let mut after = None;
    let mut limit = LOBBIES_PAGE_DEFAULT;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "after" => after = Some(value.into_owned()),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("limit must be a positive number, not {value:?}"))?
                    .min(LOBBIES_PAGE_MAX);
            }
            other => return Err(format!("unknown parameter {other:?}: use after and limit")),
        }
    }
    let listed = ctx.directory.list();
    let total = listed.len();
    let start = after.map_or(0, |after| listed.partition_point(|info| info.name <= after));
    let page: Vec<_> = listed[start..].iter().take(limit).collect();
    let next = (start + page.len() < total)
        .then(|| page.last().map(|info| info.name.clone()))
        .flatten();
    Ok(LobbyPage {
        total,
        limit,
        lobbies: page
            .into_iter()
            .map(|info| LobbyView::new(info, usize::MAX))
            .collect(),
        next,
    })
}

/// `GET /stats`, version 1. Counters are totals since the server started (the monitor
/// derives rates from successive polls); histograms carry their cumulative buckets so that a
/// reader can compute quantiles over any interval.
#[derive(Serialize)]
pub(crate) struct Stats {
    version: u32,
    server_time_unix_ms: u128,
    uptime_seconds: f64,
    tick_hz: u32,
    connections: i64,
    connections_opened: u64,
    lobby_count: i64,
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
    ticks: u64,
    ticks_missed: u64,
    snapshots_sent: u64,
    snapshots_written_direct: u64,
    snapshots_coalesced: u64,
    keyframes_sent: u64,
    connections_pending: i64,
    tick_duration: HistogramView,
    tick_lateness: HistogramView,
    disconnects: BTreeMap<String, u64>,
    errors_sent: BTreeMap<String, u64>,
    upgrades_refused: BTreeMap<String, u64>,
    /// At most `STATS_MAX_LOBBIES`, the most populated first.
    lobbies: Vec<LobbyView>,
    lobbies_truncated: bool,
}

/// A histogram of seconds: totals, estimated quantiles, and the cumulative buckets.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct HistogramView {
    count: u64,
    sum_seconds: f64,
    mean_ms: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// `[upper bound in seconds, observations <= bound]` for each finite bound, ascending.
    buckets: Vec<(f64, u64)>,
}

pub(crate) fn stats(ctx: &ServerContext) -> Stats {
    let metrics = &ctx.metrics;
    let samples = metrics.samples();
    // The most populated lobbies first (ties by name: `list` sorts by name, the sort is
    // stable), counted without cloning every roster.
    let mut listed = ctx.directory.list();
    listed.sort_by_cached_key(|info| std::cmp::Reverse(info.member_count()));
    let lobbies_truncated = listed.len() > STATS_MAX_LOBBIES;
    listed.truncate(STATS_MAX_LOBBIES);
    let lobbies = listed
        .iter()
        .map(|info| LobbyView::new(info, STATS_MAX_MEMBERS))
        .collect();
    Stats {
        version: 1,
        server_time_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        uptime_seconds: ctx.started.elapsed().as_secs_f64(),
        tick_hz: ctx.config.tick_hz,
        connections: metrics.connections.get(),
        connections_opened: metrics.connections_opened.get(),
        lobby_count: metrics.lobbies.get(),
        messages_in: metrics.messages_in.get(),
        bytes_in: metrics.bytes_in.get(),
        messages_out: metrics.messages_out.get(),
        bytes_out: metrics.bytes_out.get(),
        ticks: metrics.ticks.get(),
        ticks_missed: metrics.ticks_missed.get(),
        snapshots_sent: metrics.snapshots_sent.get(),
        snapshots_written_direct: metrics.snapshots_written_direct.get(),
        snapshots_coalesced: metrics.snapshots_coalesced.get(),
        keyframes_sent: metrics.keyframes_sent.get(),
        connections_pending: metrics.connections_pending.get(),
        tick_duration: histogram(&samples, "tickrelay_tick_duration_seconds"),
        tick_lateness: histogram(&samples, "tickrelay_tick_lateness_seconds"),
        disconnects: family(&samples, "tickrelay_disconnects_total", "reason"),
        errors_sent: family(&samples, "tickrelay_errors_sent_total", "code"),
        upgrades_refused: family(&samples, "tickrelay_upgrades_refused_total", "reason"),
        lobbies,
        lobbies_truncated,
    }
}

/// A labelled counter family as `label value -> count`.
fn family(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, u64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| Some((s.label(label)?.to_owned(), s.value as u64)))
        .collect()
}

fn histogram(samples: &[Sample], name: &str) -> HistogramView {
    let value = |suffix: &str| {
        samples
            .iter()
            .find(|s| s.name.strip_prefix(name) == Some(suffix))
            .map_or(0.0, |s| s.value)
    };
    let count = value("_count") as u64;
    let sum_seconds = value("_sum");
    let bucket_name = format!("{name}_bucket");
    let mut buckets: Vec<(f64, u64)> = samples
        .iter()
        .filter(|s| s.name == bucket_name)
        .filter_map(|s| Some((s.label("le")?.parse::<f64>().ok()?, s.value as u64)))
        .filter(|(bound, _)| bound.is_finite())
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ms = |seconds: Option<f64>| seconds.map(|s| s * 1000.0);
    HistogramView {
        count,
        sum_seconds,
        mean_ms: (count > 0).then(|| sum_seconds / count as f64 * 1000.0),
        p50_ms: ms(quantile(&buckets, count, 0.5)),
        p90_ms: ms(quantile(&buckets, count, 0.9)),
        p99_ms: ms(quantile(&buckets, count, 0.99)),
        buckets,
    }
}

/// The `q`-quantile estimated from cumulative buckets as Prometheus' `histogram_quantile`
/// does: linear interpolation inside the bucket holding the rank. Beyond the last finite
/// bound the estimate is that bound (a lower bound of the truth).
fn quantile(buckets: &[(f64, u64)], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let (mut lower, mut below) = (0.0, 0);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let in_bucket = cumulative.saturating_sub(below);
            if in_bucket == 0 {
                return Some(bound);
            }
            let fraction = (rank - below as f64) / in_bucket as f64;
            return Some(lower + (bound - lower) * fraction);
        }
        (lower, below) = (bound, cumulative);
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_inside_the_bucket_holding_the_rank() {
        // 10 observations <= 1 ms, 10 more in (1 ms, 2 ms].
        let buckets = [(0.001, 10), (0.002, 20), (0.004, 20)];
        assert_eq!(quantile(&buckets, 20, 0.5), Some(0.001));
        let p75 = quantile(&buckets, 20, 0.75).unwrap();
        assert!((p75 - 0.0015).abs() < 1e-12, "{p75}");
        assert_eq!(quantile(&buckets, 0, 0.5), None);
        // Everything above the last finite bound: that bound is the best estimate.
        assert_eq!(quantile(&[(0.001, 0)], 5, 0.99), Some(0.001));
    }
}
