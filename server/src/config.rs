//! The server's whole configuration: one clap struct, every flag with a `TICKRELAY_*`
//! environment fallback. Passed explicitly; there are no globals.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use ipnet::IpNet;
use tickrelay_protocol::ticket::TicketVerifier;

/// tickrelay: a tick-based game-state relay over WebSockets.
///
/// Clients open `ws://HOST:PORT/ws`, join a lobby and send their state; every tick the server
/// broadcasts one snapshot of the lobby to all its members. Also serves /healthz, /lobbies and
/// /metrics (Prometheus). Durations take units (`500ms`, `10s`), sizes are bytes.
#[derive(Debug, Clone, Parser)]
#[command(name = "tickrelay-server", version, about, long_about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TICKRELAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve the admin endpoints (/metrics, /stats, /lobbies, /monitor) on this address
    /// instead of the public one, which then serves only /ws, /healthz and the demo. Without
    /// it everything is on --listen (fine on loopback; warned about on a public address).
    #[arg(long, env = "TICKRELAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Snapshot ticks per second in every lobby.
    #[arg(long, env = "TICKRELAY_TICK_HZ", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tick_hz: u32,

    /// Largest WebSocket message accepted from a client, in bytes (larger: close 1009).
    #[arg(long, env = "TICKRELAY_MAX_MESSAGE_SIZE", default_value_t = 16 * 1024)]
    pub max_message_size: usize,

    /// Largest `state` data accepted, in bytes (larger: `error` state_too_large, dropped). A
    /// state is in every keyframe of its lobby: this bounds what one player makes everyone
    /// download.
    #[arg(long, env = "TICKRELAY_MAX_STATE_SIZE", default_value_t = 4096)]
    pub max_state_size: usize,

    /// Largest `event` data accepted, in bytes (larger: `error` event_too_large, dropped).
    /// Every member of the lobby receives each event.
    #[arg(long, env = "TICKRELAY_MAX_EVENT_SIZE", default_value_t = 4096)]
    pub max_event_size: usize,

    /// Most bytes of player states one lobby's keyframe carries (the sum of its players' latest
    /// states): a state that would push it past this is refused with `error` state_too_large.
    /// Every member downloads every keyframe: this bounds what a lobby costs to send.
    #[arg(long, env = "TICKRELAY_MAX_SNAPSHOT_SIZE", default_value_t = 256 * 1024)]
    pub max_snapshot_size: usize,

    /// Event bytes per second one lobby relays, shared equally by its players (each share
    /// with one second of burst): over its share a player's event is dropped with `error`
    /// overloaded and `retry_after_ms`. Each event goes to every member.
    #[arg(long, env = "TICKRELAY_MAX_LOBBY_EVENT_BYTES", default_value_t = 256 * 1024)]
    pub max_lobby_event_bytes: usize,

    /// Most members one lobby holds (more: `error` lobby_full).
    #[arg(long, env = "TICKRELAY_MAX_LOBBY_SIZE", default_value_t = 256)]
    pub max_lobby_size: usize,

    /// Most lobbies the server runs at once (more: `error` too_many_lobbies).
    #[arg(long, env = "TICKRELAY_MAX_LOBBIES", default_value_t = 10_000)]
    pub max_lobbies: usize,

    /// Most concurrent WebSocket connections (more: close 1013). The process's open-file limit
    /// also applies; the server raises its soft limit to the hard limit at start.
    #[arg(long, env = "TICKRELAY_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// Most `state` messages per second per connection, with one second of burst (more: close 4001).
    #[arg(long, env = "TICKRELAY_MAX_STATE_RATE", default_value_t = 120)]
    pub max_state_rate: u32,

    /// Most `event`, `ping`, `join` and unknown messages and WebSocket ping and pong frames per
    /// second per connection, with one second of burst (more: close 4001).
    #[arg(long, env = "TICKRELAY_MAX_EVENT_RATE", default_value_t = 60)]
    pub max_event_rate: u32,

    /// Reliable messages (events, joins, leaves, pongs) queued for one client before it counts
    /// as too slow and is closed with 4002. Snapshots never queue: the newest replaces the older.
    #[arg(long, env = "TICKRELAY_MAX_QUEUED_MESSAGES", default_value_t = 512)]
    pub max_queued_messages: usize,

    /// Bytes of reliable messages queued for one client before it counts as too slow and is
    /// closed with 4002 (the message bound alone would let large events pile up).
    #[arg(long, env = "TICKRELAY_MAX_QUEUED_BYTES", default_value_t = 1 << 20)]
    pub max_queued_bytes: usize,

    /// Time allowed for the HTTP upgrade request to arrive, and then for the `join` message
    /// (too slow: connection dropped, or close 4004 after the upgrade).
    #[arg(long, env = "TICKRELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Close a connection from which nothing (not even a pong) arrived for this long (close 4003).
    #[arg(long, env = "TICKRELAY_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose socket took no byte at all for this long while the server had
    /// something to write (the client stopped reading; close 4002, counted as write_stalled).
    /// Progress resets it: a slow but moving reader is never cut.
    #[arg(long, env = "TICKRELAY_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Most TCP connections that have not become WebSocket connections yet (HTTP requests,
    /// upgrades in progress). At the limit the server stops accepting until one finishes, so
    /// half-open or slow handshakes can never use up the process's file descriptors.
    #[arg(
        long,
        env = "TICKRELAY_MAX_PENDING_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_pending_connections: usize,

    /// How often the server pings each connection so that live but quiet clients stay open.
    #[arg(long, env = "TICKRELAY_PING_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long graceful shutdown (SIGINT/SIGTERM) waits for connections to close after
    /// sending them close 1001.
    #[arg(long, env = "TICKRELAY_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Fleet mode: share one lobby directory with other nodes through this Redis (e.g.
    /// `redis://127.0.0.1:6379`). Each lobby then runs on exactly one node, the holder of its
    /// lease; `GET /route?lobby=NAME` tells clients which, and a join on another node is
    /// answered `wrong_node` with the owner's URL. Without it the server is one node on its
    /// own and needs no Redis.
    #[arg(long, env = "TICKRELAY_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// This node's id in the fleet (1 to 64 letters, digits, `-`, `_`); default: random at
    /// each start.
    #[arg(long, env = "TICKRELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// The WebSocket URL the fleet sends clients to for this node's lobbies; default `ws://`
    /// (`wss://` with --tls-cert) + --listen + `/ws`. Set it when clients reach the node by
    /// another address (a public name, a port mapping).
    #[arg(long, env = "TICKRELAY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How long a fleet lobby lease lasts unrenewed (the heartbeat renews every lease about
    /// once a second). A dead node's lobbies can be taken over within it; a node that cannot
    /// reach Redis keeps its lobbies until four fifths of it have passed since its last
    /// renewal, then stops them (close 4007), so a longer lease rides out longer Redis outages.
    #[arg(long, env = "TICKRELAY_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// Fleet mode: on SIGTERM (or SIGINT), first move every live lobby to other nodes, for at
    /// most this long, then shut down; members follow a `redirect` and keep their seats (0 =
    /// no drain: close 1001 at once; a second signal exits at once). `POST /drain` on the
    /// admin surface drains without stopping.
    #[arg(long, env = "TICKRELAY_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// `POST /matchmake`: how long a seat promised to a placed player stays counted while
    /// the player is on the way (a player who never comes frees it after this).
    #[arg(long, env = "TICKRELAY_MATCHMAKE_PROMISE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub matchmake_promise: Duration,

    /// Worker threads for the async runtime (0 = one per core).
    #[arg(long, env = "TICKRELAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Require a signed join ticket (a JWT in `join.ticket`) from every client; `ticket` prints
    /// one for testing. Without a key every join is accepted (the default).
    #[command(flatten)]
    pub ticket_secret: TicketSecret,

    /// Verify EdDSA (Ed25519) tickets with this public key (PEM, `BEGIN PUBLIC KEY`), so relay
    /// nodes never hold the signing key. Instead of --ticket-secret.
    #[arg(
        long,
        env = "TICKRELAY_TICKET_PUBLIC_KEY",
        value_name = "FILE",
        conflicts_with_all = ["ticket_secret", "ticket_secret_file"]
    )]
    pub ticket_public_key: Option<PathBuf>,

    /// Clock skew allowed when checking tickets' `exp` and `nbf`.
    #[arg(long, env = "TICKRELAY_TICKET_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ticket_leeway: Duration,

    /// Most spectators per lobby, besides its --max-lobby-size players (more: `error`
    /// lobby_full). 0 refuses spectators.
    #[arg(long, env = "TICKRELAY_MAX_SPECTATORS", default_value_t = 64)]
    pub max_spectators: usize,

    /// How long the seat of a connection that dropped without `leave` waits for the client to
    /// resume it (same player id, missed reliable messages replayed); the others see
    /// `member_away`, then `member_back` or `member_left`. 0 turns resume off.
    #[arg(long, env = "TICKRELAY_RESUME_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub resume_grace: Duration,

    /// Reliable messages (events, member changes) each lobby keeps to replay to resuming
    /// members; what falls out is reported to them as `lost`.
    /// A replay is queued at once, so at most half of --max-queued-messages (and of
    /// --max-queued-bytes) of it is sent; older messages count as `lost`.
    #[arg(long, env = "TICKRELAY_RESUME_HISTORY", default_value_t = 256)]
    pub resume_history: usize,

    /// Bytes of reliable messages each lobby keeps to replay (with --resume-history).
    #[arg(long, env = "TICKRELAY_RESUME_HISTORY_BYTES", default_value_t = 256 * 1024)]
    pub resume_history_bytes: usize,

    /// Secret that signs resume tokens. Nodes sharing it accept each other's tokens; default:
    /// random at each start (a restarted server refuses older tokens with seat_expired).
    #[arg(long, env = "TICKRELAY_RESUME_SECRET", hide_env_values = true)]
    pub resume_secret: Option<Secret>,

    /// Browser origins allowed to open WebSockets, comma-separated (e.g.
    /// `https://game.example,https://www.game.example`); others get HTTP 403 before the upgrade.
    /// Requests without `Origin` (not from a browser) are not affected. Default: any origin.
    #[arg(long, env = "TICKRELAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Most WebSocket connections from one client IP (more: HTTP 503 with Retry-After); 0: no limit.
    #[arg(long, env = "TICKRELAY_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Most WebSocket handshakes per second from one client IP, with one second of burst (more:
    /// HTTP 503 with Retry-After); 0: no limit.
    #[arg(long, env = "TICKRELAY_MAX_HANDSHAKES_PER_IP", default_value_t = 20)]
    pub max_handshakes_per_ip: u32,

    /// Most WebSocket handshakes per second in all, with one second of burst (more: HTTP 503
    /// with Retry-After), so a reconnect storm is spread out instead of starving the lobbies
    /// already running; 0: no limit.
    #[arg(
        long,
        env = "TICKRELAY_MAX_HANDSHAKES_PER_SECOND",
        default_value_t = 5000
    )]
    pub max_handshakes_per_second: u32,

    /// Proxies (addresses or CIDR networks, comma-separated) whose `X-Forwarded-For` names the
    /// client. From anyone else the header is ignored: a client could write any address there.
    #[arg(long, env = "TICKRELAY_TRUSTED_PROXIES", default_value = "", value_parser = parse_networks)]
    pub trusted_proxies: Networks,

    /// Client addresses the per-IP limits do not apply to (comma-separated networks; "" for
    /// none). Loopback by default: a local load test or a proxy on the same host without
    /// --trusted-proxies would otherwise share one IP's limits.
    #[arg(
        long,
        env = "TICKRELAY_IP_LIMIT_EXEMPT",
        default_value = "127.0.0.0/8,::1",
        value_parser = parse_networks
    )]
    pub ip_limit_exempt: Networks,

    /// Serve HTTPS and `wss://` on --listen with this certificate chain (PEM, the server's
    /// certificate first, then intermediates). With --tls-key. The files are read again on
    /// SIGHUP and when they change (--tls-reload-check); a reload that fails keeps the current
    /// certificate and logs why. The admin listener stays plain (keep it private).
    #[arg(long, env = "TICKRELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8 `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC
    /// PRIVATE KEY`; RSA, ECDSA P-256/P-384 or Ed25519).
    #[arg(long, env = "TICKRELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Time allowed for the TLS handshake, before the HTTP upgrade's own --handshake-timeout
    /// starts (too slow: the connection is dropped, counted in
    /// `tickrelay_tls_handshakes_total{result="timeout"}`).
    #[arg(long, env = "TICKRELAY_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// How often the server checks whether --tls-cert or --tls-key changed on disk (size or
    /// modification time), to reload them; `0s`: only on SIGHUP.
    #[arg(long, env = "TICKRELAY_TLS_RELOAD_CHECK", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_check: Duration,

    /// Serve `/echo`, a WebSocket endpoint that sends every message back as it came (text as
    /// text, binary as binary) through the same frame reader, reassembly, limits and writer
    /// as `/ws`: for conformance suites (Autobahn). Off by default. Each message is charged to
    /// --max-event-rate.
    #[arg(long, env = "TICKRELAY_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// pipelines. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "TICKRELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A secret from the command line or the environment: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// The HS256 ticket secret, shared by the server and the `ticket` subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct TicketSecret {
    /// The HS256 secret join tickets are signed with (at least 32 bytes): the server then
    /// requires a ticket from every join, and `ticket` signs with it. Prefer the environment
    /// or --ticket-secret-file: other users of the machine can read command lines.
    #[arg(
        long,
        env = "TICKRELAY_TICKET_SECRET",
        hide_env_values = true,
        conflicts_with = "ticket_secret_file"
    )]
    pub ticket_secret: Option<Secret>,

    /// Read the HS256 ticket secret from this file (one trailing newline is ignored).
    #[arg(long, env = "TICKRELAY_TICKET_SECRET_FILE", value_name = "FILE")]
    pub ticket_secret_file: Option<PathBuf>,
}

impl TicketSecret {
    /// The secret, from the flag or the file; `None` when neither is given.
    pub fn load(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(secret) = &self.ticket_secret {
            return Ok(Some(secret.expose().as_bytes().to_vec()));
        }
        let Some(path) = &self.ticket_secret_file else {
            return Ok(None);
        };
        let mut secret = read_file("ticket-secret-file", path)?;
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        Ok(Some(secret))
    }

    /// The flag a problem with the secret is reported under.
    pub fn flag(&self) -> &'static str {
        if self.ticket_secret.is_some() {
            "ticket-secret"
        } else {
            "ticket-secret-file"
        }
    }
}

/// Reads a file a flag names, or says which flag and why not.
pub(crate) fn read_file(
    flag: &'static str,
    path: &std::path::Path,
) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|err| ConfigError {
        flag,
        problem: format!("{}: {err}", path.display()),
    })
}

/// A list of IP networks; a bare address is a network of one.
pub type Networks = Vec<IpNet>;

fn parse_networks(list: &str) -> Result<Networks, String> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not an IP address or network (e.g. 10.0.0.0/8)"))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A configuration value the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: --{flag} {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

impl ConfigError {
    /// The error for a key `flag` names that cannot be used (for `map_err`).
    pub(crate) fn key(
        flag: &'static str,
    ) -> impl FnOnce(tickrelay_protocol::ticket::KeyError) -> Self {
        move |err| Self {
            flag,
            problem: err.to_string(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are the clap defaults; parsing no arguments yields them.
        Self::parse_from(["tickrelay-server"])
    }
}

impl Config {
    /// Longest lobby name accepted in `join`, in bytes.
    pub const MAX_LOBBY_NAME: usize = 64;
    /// Longest player name accepted in `join`, in bytes.
    pub const MAX_PLAYER_NAME: usize = 64;

    /// Largest accepted `--max-message-size`: buffers are reserved from frame headers up to
    /// this size, so it must stay far from `usize::MAX`.
    pub const MAX_MESSAGE_SIZE_LIMIT: usize = 64 << 20;
    /// Largest accepted `--max-lobby-size`, `--max-queued-messages` and the like: beyond this
    /// a value is a typo, and some are used to size allocations.
    pub const COUNT_LIMIT: usize = 10_000_000;

    /// Checks every value once at start, so a bad one is a clear error rather than a spin or a
    /// panic later (a zero ping interval, a zero queue, a size near `usize::MAX`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |flag, problem: &str| {
            Err(ConfigError {
                flag,
                problem: problem.to_owned(),
            })
        };
        if !(1..=1000).contains(&self.tick_hz) {
            return fail("tick-hz", "must be 1 to 1000");
        }
        if !(126..=Self::MAX_MESSAGE_SIZE_LIMIT).contains(&self.max_message_size) {
            return fail(
                "max-message-size",
                &format!("must be 126 to {} bytes", Self::MAX_MESSAGE_SIZE_LIMIT),
            );
        }
        let counts = [
            ("max-lobby-size", self.max_lobby_size),
            ("max-lobbies", self.max_lobbies),
            ("max-connections", self.max_connections),
            ("max-queued-messages", self.max_queued_messages),
            ("max-pending-connections", self.max_pending_connections),
        ];
        for (flag, value) in counts {
            if !(1..=Self::COUNT_LIMIT).contains(&value) {
                return fail(flag, &format!("must be 1 to {}", Self::COUNT_LIMIT));
            }
        }
        for (flag, value) in [
            ("max-state-size", self.max_state_size),
            ("max-event-size", self.max_event_size),
        ] {
            // Above --max-message-size it has no effect (the message limit comes first).
            if !(1..=Self::MAX_MESSAGE_SIZE_LIMIT).contains(&value) {
                return fail(
                    flag,
                    &format!("must be 1 to {} bytes", Self::MAX_MESSAGE_SIZE_LIMIT),
                );
            }
        }
        if !(1..=Self::MAX_MESSAGE_SIZE_LIMIT * 16).contains(&self.max_queued_bytes) {
            return fail(
                "max-queued-bytes",
                &format!("must be 1 to {} bytes", Self::MAX_MESSAGE_SIZE_LIMIT * 16),
            );
        }
        if self.max_state_rate == 0 {
            return fail("max-state-rate", "must be at least 1 per second");
        }
        if self.max_event_rate == 0 {
            return fail("max-event-rate", "must be at least 1 per second");
        }
        // A day is far beyond any sensible value, and keeps deadline arithmetic in range.
        let day = Duration::from_secs(86_400);
        let durations = [
            ("handshake-timeout", self.handshake_timeout),
            ("tls-handshake-timeout", self.tls_handshake_timeout),
            ("idle-timeout", self.idle_timeout),
            ("write-timeout", self.write_timeout),
            ("ping-interval", self.ping_interval),
        ];
        for (flag, value) in durations {
            if value < Duration::from_millis(1) || value > day {
                return fail(flag, "must be between 1ms and 24h");
            }
        }
        if self.ping_interval >= self.idle_timeout {
            // The server's pings are what keeps a quiet but live client from going idle.
            return fail(
                "ping-interval",
                "must be shorter than --idle-timeout, or quiet live clients are closed as idle",
            );
        }
        if self.shutdown_timeout > day {
            return fail("shutdown-timeout", "must be at most 24h");
        }
        if self.tls_reload_check > day {
            return fail(
                "tls-reload-check",
                "must be at most 24h (0s: only on SIGHUP)",
            );
        }
        if self.worker_threads > 1024 {
            return fail("worker-threads", "must be 0 (one per core) to 1024");
        }
        if self.max_snapshot_size < self.max_state_size {
            return fail(
                "max-snapshot-size",
                "must be at least --max-state-size, or no state of the largest size ever fits",
            );
        }
        if self.max_lobby_event_bytes == 0 {
            return fail(
                "max-lobby-event-bytes",
                "must be at least 1 byte per second",
            );
        }
        if self.max_spectators > Self::COUNT_LIMIT {
            return fail(
                "max-spectators",
                &format!("must be 0 to {}", Self::COUNT_LIMIT),
            );
        }
        if self.resume_grace > Duration::from_secs(3600) {
            return fail("resume-grace", "must be at most 1h (0 turns resume off)");
        }
        for (flag, value) in [
            ("resume-history", self.resume_history),
            ("resume-history-bytes", self.resume_history_bytes),
        ] {
            if value > Self::COUNT_LIMIT * 16 {
                return fail(flag, &format!("must be at most {}", Self::COUNT_LIMIT * 16));
            }
        }
        if self.ticket_leeway > Duration::from_secs(3600) {
            return fail("ticket-leeway", "must be at most 1h");
        }
        if !(Duration::from_millis(300)..=Duration::from_secs(60)).contains(&self.lease) {
            return fail("lease", "must be 300ms to 60s");
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return fail("drain-timeout", "must be at most 1h");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600))
            .contains(&self.matchmake_promise)
        {
            return fail("matchmake-promise", "must be 100ms to 10m");
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return fail("node-id", "must be 1 to 64 letters, digits, '-' or '_'");
        }
        Ok(())
    }

    /// The URL the fleet sends clients to for this node's lobbies (`--public-url`).
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let scheme = if self.tls_cert.is_some() { "wss" } else { "ws" };
                format!("{scheme}://{}/ws", self.listen)
            }
        }
    }

    /// The ticket verifier for the configured key (reading its file), or `None` when joins
    /// need no ticket.
    pub fn ticket_verifier(&self) -> Result<Option<TicketVerifier>, ConfigError> {
        if let Some(path) = &self.ticket_public_key {
            let pem = read_file("ticket-public-key", path)?;
            return TicketVerifier::ed25519_pem(&pem, self.ticket_leeway)
                .map(Some)
                .map_err(ConfigError::key("ticket-public-key"));
        }
        match self.ticket_secret.load()? {
            None => Ok(None),
            Some(secret) => TicketVerifier::hs256(&secret, self.ticket_leeway)
                .map(Some)
                .map_err(ConfigError::key(self.ticket_secret.flag())),
        }
    }

    /// Time between two ticks.
    pub fn tick_period(&self) -> Duration {
        Duration::from_secs(1) / self.tick_hz.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("tickrelay-server").chain(args.iter().copied()))
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn values_that_would_spin_or_panic_later_are_refused_at_start() {
        let huge = usize::MAX.to_string();
        let cases: [(&[&str], &str); 13] = [
            (&["--ticket-leeway", "2h"], "ticket-leeway"),
            (&["--idle-timeout", "5s"], "ping-interval"),
            (&["--ping-interval", "0s"], "ping-interval"),
            (&["--idle-timeout", "0s"], "idle-timeout"),
            (&["--write-timeout", "0ms"], "write-timeout"),
            (&["--max-queued-messages", "0"], "max-queued-messages"),
            (&["--max-lobby-size", "0"], "max-lobby-size"),
            (
                &["--max-pending-connections", "0"],
                "max-pending-connections",
            ),
            (&["--max-message-size", &huge], "max-message-size"),
            (&["--max-lobby-size", &huge], "max-lobby-size"),
            (&["--max-state-rate", "0"], "max-state-rate"),
            (&["--max-state-size", "0"], "max-state-size"),
            (&["--max-queued-bytes", "0"], "max-queued-bytes"),
        ];
        for (args, flag) in cases {
            let err = parse(args).validate().expect_err("refused");
            assert_eq!(err.flag, flag, "{args:?}");
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid configuration: --{flag} "))
            );
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = parse(&[
            "--ticket-secret",
            "hunter2-hunter2",
            "--resume-secret",
            "swordfish",
        ]);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
    }

    #[test]
    fn ticket_keys_are_loaded_and_checked_at_start() {
        assert!(Config::default().ticket_verifier().unwrap().is_none());
        let short = parse(&["--ticket-secret", "short"]).ticket_verifier();
        assert_eq!(short.unwrap_err().flag, "ticket-secret");
        let missing = parse(&["--ticket-public-key", "/nonexistent/key.pem"]).ticket_verifier();
        assert_eq!(missing.unwrap_err().flag, "ticket-public-key");

        let dir = std::env::temp_dir().join(format!("tickrelay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{}\n", "s".repeat(32))).unwrap();
        let from_file = parse(&["--ticket-secret-file", file.to_str().unwrap()]);
        assert_eq!(
            from_file.ticket_secret.load().unwrap(),
            Some(vec![b's'; 32])
        );
        assert_eq!(
            from_file.ticket_verifier().unwrap().unwrap().algorithm(),
            "HS256"
        );
        let public = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../protocol/tests/keys/ed25519-test.pub.pem"
        );
        let eddsa = parse(&["--ticket-public-key", public]).ticket_verifier();
        assert_eq!(eddsa.unwrap().unwrap().algorithm(), "EdDSA");
        // One key only: clap refuses two.
        assert!(
            Config::try_parse_from([
                "tickrelay-server",
                "--ticket-secret",
                "x",
                "--ticket-public-key",
                public
            ])
            .is_err()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
