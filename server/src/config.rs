//! The server's whole configuration: one clap struct, every flag with a `TICKRELAY_*`
//! environment fallback. Passed explicitly; there are no globals.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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

    /// Snapshot ticks per second in every lobby.
    #[arg(long, env = "TICKRELAY_TICK_HZ", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tick_hz: u32,

    /// Largest WebSocket message accepted from a client, in bytes (larger: close 1009).
    #[arg(long, env = "TICKRELAY_MAX_MESSAGE_SIZE", default_value_t = 16 * 1024)]
    pub max_message_size: usize,

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

    /// Most `event`, `ping` and WebSocket ping frames per second per connection, with one
    /// second of burst (more: close 4001).
    #[arg(long, env = "TICKRELAY_MAX_EVENT_RATE", default_value_t = 60)]
    pub max_event_rate: u32,

    /// Reliable messages (events, joins, leaves, pongs) queued for one client before it counts
    /// as too slow and is closed with 4002. Snapshots never queue: the newest replaces the older.
    #[arg(long, env = "TICKRELAY_MAX_QUEUED_MESSAGES", default_value_t = 512)]
    pub max_queued_messages: usize,

    /// Time allowed for the HTTP upgrade request to arrive, and then for the `join` message
    /// (too slow: connection dropped, or close 4004 after the upgrade).
    #[arg(long, env = "TICKRELAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// Close a connection from which nothing (not even a pong) arrived for this long (close 4003).
    #[arg(long, env = "TICKRELAY_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How often the server pings each connection so that live but quiet clients stay open.
    #[arg(long, env = "TICKRELAY_PING_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long graceful shutdown (SIGINT/SIGTERM) waits for connections to close after
    /// sending them close 1001.
    #[arg(long, env = "TICKRELAY_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Worker threads for the async runtime (0 = one per core).
    #[arg(long, env = "TICKRELAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
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

    /// Time between two ticks.
    pub fn tick_period(&self) -> Duration {
        Duration::from_secs(1) / self.tick_hz
    }
}
