//! Server metrics: the counters every part of the server updates, and their Prometheus text
//! rendering for `GET /metrics`. Hot paths add per batch or per tick, not per byte.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of one `reason`/`code` label with a static value.
pub(crate) type Labels = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_opened: Counter,
    pub(crate) lobbies: Gauge,
    pub(crate) messages_in: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) messages_out: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) ticks: Counter,
    pub(crate) ticks_missed: Counter,
    pub(crate) tick_duration: Histogram,
    pub(crate) tick_lateness: Histogram,
    pub(crate) snapshots_sent: Counter,
    pub(crate) snapshots_written_direct: Counter,
    pub(crate) snapshots_coalesced: Counter,
    pub(crate) keyframes_sent: Counter,
    pub(crate) connections_pending: Gauge,
    pub(crate) accept_errors: Counter,
    pub(crate) disconnects: Family<Labels, Counter>,
    pub(crate) errors_sent: Family<Labels, Counter>,
    pub(crate) upgrades_refused: Family<Labels, Counter>,
    pub(crate) tickets_accepted: Counter,
    pub(crate) tickets_refused: Family<Labels, Counter>,
    pub(crate) seats_replaced: Counter,
    pub(crate) resumes: Family<Labels, Counter>,
    pub(crate) seats_expired: Counter,
    pub(crate) tls_handshakes: Family<Labels, Counter>,
    pub(crate) tls_reloads: Family<Labels, Counter>,
    pub(crate) fleet_leases: Family<Labels, Counter>,
    pub(crate) matchmakes: Family<Labels, Counter>,
    pub(crate) routing_refused: Family<Labels, Counter>,
    pub(crate) fleet_lease_renewals: Counter,
    pub(crate) fleet_redis_errors: Counter,
    pub(crate) fleet_events_dropped_moving: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tickrelay");
        // 10 µs .. ~330 ms in factor-2 steps: tick work is micro- to milliseconds.
        let seconds_buckets = || exponential_buckets(0.000_01, 2.0, 16);
        let metrics = Self {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            lobbies: Gauge::default(),
            messages_in: Counter::default(),
            bytes_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_out: Counter::default(),
            ticks: Counter::default(),
            ticks_missed: Counter::default(),
            tick_duration: Histogram::new(seconds_buckets()),
            tick_lateness: Histogram::new(seconds_buckets()),
            snapshots_sent: Counter::default(),
            snapshots_written_direct: Counter::default(),
            snapshots_coalesced: Counter::default(),
            keyframes_sent: Counter::default(),
            connections_pending: Gauge::default(),
            accept_errors: Counter::default(),
            disconnects: Family::default(),
            errors_sent: Family::default(),
            upgrades_refused: Family::default(),
            tickets_accepted: Counter::default(),
            tickets_refused: Family::default(),
            seats_replaced: Counter::default(),
            resumes: Family::default(),
            seats_expired: Counter::default(),
            tls_handshakes: Family::default(),
            tls_reloads: Family::default(),
            fleet_leases: Family::default(),
            matchmakes: Family::default(),
            routing_refused: Family::default(),
            fleet_lease_renewals: Counter::default(),
            fleet_redis_errors: Counter::default(),
            fleet_events_dropped_moving: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket connections",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            metrics.connections_opened.clone(),
        );
        registry.register("lobbies", "Lobbies running", metrics.lobbies.clone());
        registry.register(
            "messages_in",
            "WebSocket messages received",
            metrics.messages_in.clone(),
        );
        registry.register(
            "bytes_in",
            "Payload bytes of messages received",
            metrics.bytes_in.clone(),
        );
        registry.register(
            "messages_out",
            "WebSocket messages written to sockets",
            metrics.messages_out.clone(),
        );
        registry.register(
            "bytes_out",
            "Payload bytes of messages written to sockets",
            metrics.bytes_out.clone(),
        );
        registry.register("ticks", "Lobby ticks run", metrics.ticks.clone());
        registry.register(
            "ticks_missed",
            "Lobby ticks skipped because the lobby ran a full period late",
            metrics.ticks_missed.clone(),
        );
        registry.register(
            "tick_duration_seconds",
            "Wall time to build, encode and hand out one lobby tick",
            metrics.tick_duration.clone(),
        );
        registry.register(
            "tick_lateness_seconds",
            "How long after its scheduled instant a tick started",
            metrics.tick_lateness.clone(),
        );
        registry.register(
            "snapshots_sent",
            "Snapshots handed to members' connections: written into the socket by the tick, or queued",
            metrics.snapshots_sent.clone(),
        );
        registry.register(
            "snapshots_written_direct",
            "Of snapshots_sent, those the tick wrote straight into an idle socket",
            metrics.snapshots_written_direct.clone(),
        );
        registry.register(
            "snapshots_coalesced",
            "Unsent snapshots replaced by a newer one (slow readers)",
            metrics.snapshots_coalesced.clone(),
        );
        registry.register(
            "keyframes_sent",
            "Keyframe snapshots handed to members' connections (joins and catch-ups)",
            metrics.keyframes_sent.clone(),
        );
        registry.register(
            "accept_errors",
            "accept(2) failures, e.g. EMFILE at the open-file limit (the server backs off 50 ms)",
            metrics.accept_errors.clone(),
        );
        registry.register(
            "connections_pending",
            "TCP connections accepted that are not WebSocket connections (yet)",
            metrics.connections_pending.clone(),
        );
        registry.register(
            "disconnects",
            "Closed WebSocket connections by reason",
            metrics.disconnects.clone(),
        );
        registry.register(
            "errors_sent",
            "error messages sent to clients by code",
            metrics.errors_sent.clone(),
        );
        registry.register(
            "upgrades_refused",
            "WebSocket upgrade requests refused by reason",
            metrics.upgrades_refused.clone(),
        );
        registry.register(
            "tickets_accepted",
            "Join tickets that verified",
            metrics.tickets_accepted.clone(),
        );
        registry.register(
            "tickets_refused",
            "Joins refused for their ticket, by reason (missing, expired, bad_signature, ...)",
            metrics.tickets_refused.clone(),
        );
        registry.register(
            "seats_replaced",
            "Seats taken over by a newer connection of the same identity (the older one closed 4006)",
            metrics.seats_replaced.clone(),
        );
        registry.register(
            "resumes",
            "Resume attempts by result: resumed, resumed_lossy (some reliable messages could not be replayed), expired",
            metrics.resumes.clone(),
        );
        registry.register(
            "seats_expired",
            "Away seats nobody resumed within --resume-grace (they left)",
            metrics.seats_expired.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the public listener by result: ok, failed (not TLS, no common cipher or version, a bad record), timeout (--tls-handshake-timeout)",
            metrics.tls_handshakes.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads (SIGHUP, or the files changed) by result: ok, failed (the previous certificate stays)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "fleet_leases",
            "Fleet lobby leases by event: acquired, released, lost (Redis names another owner), expired (not renewed in time: the lobby stopped here), moved (handed to another node by a drain), adopted (a moved lobby taken over here), recovered (a lobby whose node died rebuilt here)",
            metrics.fleet_leases.clone(),
        );
        registry.register(
            "matchmakes",
            "POST /matchmake answers by outcome: placed (in a lobby with room), opened (a new lobby), refused (no room for another lobby, or the fleet's directory unavailable)",
            metrics.matchmakes.clone(),
        );
        registry.register(
            "routing_refused",
            "/route and /matchmake questions refused, by reason: bad_request (400), ticket (401/403), other_size (409: the pool's lobbies have another size), unavailable (503: the directory, the node's limits, or the address's question rate)",
            metrics.routing_refused.clone(),
        );
        registry.register(
            "fleet_lease_renewals",
            "Fleet lease renewals sent to Redis (one batch per heartbeat)",
            metrics.fleet_lease_renewals.clone(),
        );
        registry.register(
            "fleet_redis_errors",
            "Fleet heartbeats that failed to reach Redis",
            metrics.fleet_redis_errors.clone(),
        );
        registry.register(
            "fleet_events_dropped_moving",
            "Events that reached a lobby after a drain froze it for its move (between the handoff and the members' redirect); their senders were redirected",
            metrics.fleet_events_dropped_moving.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub(crate) fn disconnect(&self, reason: &'static str) {
        self.disconnects.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn error_sent(&self, code: &'static str) {
        self.errors_sent.get_or_create(&[("code", code)]).inc();
    }

    pub(crate) fn fleet_lease(&self, event: &'static str) {
        self.fleet_leases.get_or_create(&[("event", event)]).inc();
    }

    pub(crate) fn matchmake(&self, outcome: &'static str) {
        self.matchmakes.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub(crate) fn routing_refused(&self, reason: &'static str) {
        self.routing_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub(crate) fn resume(&self, result: &'static str) {
        self.resumes.get_or_create(&[("result", result)]).inc();
    }

    pub(crate) fn ticket_refused(&self, reason: &'static str) {
        self.tickets_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub(crate) fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&[("result", result)])
            .inc();
    }

    pub(crate) fn tls_reload(&self, result: &'static str) {
        self.tls_reloads.get_or_create(&[("result", result)]).inc();
    }

    pub(crate) fn upgrade_refused(&self, reason: &'static str) {
        self.upgrades_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Every sample of the exposition, parsed back. prometheus-client exposes neither the
    /// buckets of a histogram nor the members of a family, so readers other than Prometheus
    /// (`GET /stats`) read the same text that `/metrics` serves: one source of truth.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        parse_exposition(&self.render())
    }
}

/// One sample line of the text exposition, e.g. `tickrelay_disconnects_total{reason="leave"} 3`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find_map(|(key, value)| (key == name).then_some(value.as_str()))
    }
}

/// Parses the sample lines of a text exposition; comments and unparsable lines are skipped.
/// Label values here are static identifiers and numbers, so escapes need no handling.
fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                number => number.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .strip_suffix('}')?
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .filter_map(|pair| {
                            let (key, value) = pair.split_once('=')?;
                            Some((key.to_owned(), value.trim_matches('"').to_owned()))
                        })
                        .collect();
                    (name, labels)
                }
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_back_counters_families_and_histogram_buckets() {
        let metrics = Metrics::new();
        metrics.connections.set(3);
        metrics.disconnect("leave");
        metrics.disconnect("leave");
        metrics.tick_duration.observe(0.000_015);
        let samples = metrics.samples();
        let find = |name: &str, label: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|s| s.name == name && label.is_none_or(|(k, v)| s.label(k) == Some(v)))
                .map(|s| s.value)
        };
        assert_eq!(find("tickrelay_connections", None), Some(3.0));
        assert_eq!(
            find("tickrelay_disconnects_total", Some(("reason", "leave"))),
            Some(2.0)
        );
        assert_eq!(
            find("tickrelay_tick_duration_seconds_count", None),
            Some(1.0)
        );
        let bucket = |le| find("tickrelay_tick_duration_seconds_bucket", Some(("le", le)));
        assert_eq!(bucket("0.00001"), Some(0.0));
        assert_eq!(bucket("0.00002"), Some(1.0));
        assert_eq!(bucket("+Inf"), Some(1.0));
    }
}
