//! The command line: one clap struct for a run plus the `merge` and `watch` subcommands. Turned into a
//! validated [`Plan`](crate::plan::Plan) before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// tickrelay-loadgen: thousands of real WebSocket clients playing lobbies against a tickrelay
/// server, with latency histograms (HdrHistogram, microseconds).
///
/// Examples:
///   tickrelay-loadgen --self-host --clients 1000 --duration 30s
///   tickrelay-loadgen --url ws://10.0.0.5:8080/ws --clients 5000 --slo 'broadcast.p99<20ms,errors=0'
///   tickrelay-loadgen --url ws://HOST/ws --clients 40000 --shard 0/2 --hlog a.hlog   (machine 1)
///   tickrelay-loadgen merge a.hlog b.hlog
///   tickrelay-loadgen --url ws://HOST/ws --clients 40000 --coordinate redis://R:6379 --shard 1/2
///   tickrelay-loadgen watch redis://R:6379 --json merged.json --slo 'broadcast.p99<20ms'
#[derive(Debug, Parser)]
#[command(
    name = "tickrelay-loadgen",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Merge interval logs (--hlog) from several load-generator machines into one report.
    Merge(MergeArgs),
    /// Follow a distributed run (--coordinate): the shards' merged progress live, then the
    /// merged report (JSON, interval log, HTML) and the --slo verdict on the merged
    /// histograms. Start it before, during or after the run (up to an hour after).
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The Redis the shards coordinate through, e.g. redis://10.0.0.9:6379.
    #[arg(value_name = "REDIS_URL")]
    pub(crate) redis: String,
    /// The run to follow (the shards' --run).
    #[arg(long, default_value = "default")]
    pub(crate) run: String,
    /// How long to wait for the run to start.
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub(crate) wait_shards: Duration,
    /// Follow the next run of that name, not the one in Redis now (which may be over: by
    /// default a finished run is reported as it ended).
    #[arg(long)]
    pub(crate) next: bool,
    /// The merged report's outputs and bounds.
    #[command(flatten)]
    pub(crate) report: ReportArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// Interval log files written with --hlog.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Also write the merged report as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Also write the merged report as a self-contained HTML page (percentile plot, tables).
    #[arg(long)]
    pub(crate) html: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scenario {
    /// Ramp to --clients, hold for --duration, report.
    Steady,
    /// Add --ramp-step clients every --ramp-interval until broadcast p99 exceeds --ramp-bound,
    /// errors appear or --clients is reached; report the knee.
    Ramp,
    /// Hold --clients while --churn-rate clients per second leave and rejoin.
    Churn,
    /// After --storm-after, drop every connection at once; clients reconnect with exponential
    /// backoff plus jitter; report the time until all are back.
    Storm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CodecArg {
    Msgpack,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClockCorrection {
    /// Correct broadcast latency by the estimated offset unless the server is on loopback.
    Auto,
    On,
    Off,
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Server WebSocket URL, e.g. ws://127.0.0.1:8080/ws, or wss://game.example/ws (TLS; see
    /// --ca and --insecure).
    #[arg(
        long,
        env = "TICKRELAY_LOADGEN_URL",
        required_unless_present_any = ["self_host", "route"],
        conflicts_with = "self_host"
    )]
    pub(crate) url: Option<String>,

    /// Fleet mode: before each connection, ask this node (http://HOST:PORT, or https://) with
    /// `GET /route?lobby=NAME` where the client's lobby runs, and connect there: the run's
    /// lobbies spread over the fleet as its routing places them. Without --url the clients
    /// fall back to this node's ws://HOST:PORT/ws.
    #[arg(long, value_name = "URL", conflicts_with = "self_host")]
    pub(crate) route: Option<String>,

    /// With --route: each client asks the node `POST /matchmake?pool=POOL&size=LOBBY_SIZE`
    /// for a seat instead of joining its planned lobby, and keeps the lobby it is given
    /// (reconnections route to it); the pool's lobbies fill to --lobby-size.
    #[arg(long, value_name = "POOL", requires = "route")]
    pub(crate) matchmake: Option<String>,

    /// For wss:// URLs: trust the CA certificates (PEM) in this file instead of the system's
    /// roots (a private CA, or the server's own self-signed certificate).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) ca: Option<PathBuf>,

    /// For wss:// URLs: accept any server certificate (a self-signed test server). Traffic is
    /// still encrypted, but nothing proves who the server is: never against production.
    #[arg(long)]
    pub(crate) insecure: bool,

    /// Sign a join ticket for every client (HS256; `sub` is the client's name, one seat each)
    /// for servers that require tickets. With --self-host the server requires them too.
    #[arg(
        long,
        alias = "tickets",
        env = "TICKRELAY_TICKET_SECRET",
        hide_env_values = true,
        conflicts_with = "ticket_private_key"
    )]
    pub(crate) ticket_secret: Option<String>,

    /// Sign join tickets with EdDSA using this Ed25519 private key (PEM, PKCS#8), for servers
    /// started with the matching --ticket-public-key (not with --self-host).
    #[arg(long, value_name = "FILE", conflicts_with = "self_host")]
    pub(crate) ticket_private_key: Option<PathBuf>,

    /// Reconnect as new players instead of resuming seats (to compare; by default a client
    /// that lost its connection takes its seat back with the welcome's resume token).
    #[arg(long)]
    pub(crate) no_resume: bool,

    /// Start an in-process tickrelay server on loopback and run against it.
    #[arg(long)]
    pub(crate) self_host: bool,

    /// Tick rate of the self-hosted server (ignored with --url: the server decides).
    #[arg(long, default_value_t = 30)]
    pub(crate) tick_hz: u32,

    /// Simulated players in total (across all shards); the ceiling for --scenario ramp.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub(crate) clients: usize,

    /// Players per lobby.
    #[arg(long, default_value_t = 8)]
    pub(crate) lobby_size: usize,

    /// Measured time once all clients are connected (steady, churn, storm).
    #[arg(long, short = 'd', default_value = "10s", value_parser = duration)]
    pub(crate) duration: Duration,

    /// Time after ramp-up before measuring starts.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub(crate) warmup: Duration,

    /// Scenario to play.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub(crate) scenario: Scenario,

    /// New connections per second during ramp-up.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) connect_rate: f64,

    /// `state` messages per second per client (0: none).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) state_rate: f64,

    /// Bytes of player state per `state` message.
    #[arg(long, default_value_t = 32)]
    pub(crate) state_size: usize,

    /// `event` messages per second per client (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) event_rate: f64,

    /// Bytes per event payload (at least 8: the send time travels in it).
    #[arg(long, default_value_t = 32)]
    pub(crate) event_size: usize,

    /// Interval of protocol pings per client (RTT and clock offset).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub(crate) ping_interval: Duration,

    /// Wire codec.
    #[arg(long, value_enum, default_value_t = CodecArg::Msgpack)]
    pub(crate) codec: CodecArg,

    /// Ramp: clients added per step.
    #[arg(long, default_value_t = 1000)]
    pub(crate) ramp_step: usize,

    /// Ramp: time per step.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) ramp_interval: Duration,

    /// Ramp: the broadcast p99 bound a step must meet.
    #[arg(long, default_value = "20ms", value_parser = duration)]
    pub(crate) ramp_bound: Duration,

    /// Ramp: fraction of expected snapshots a step may miss (tick gaps) and still pass.
    #[arg(long, default_value_t = 0.001)]
    pub(crate) ramp_gap_tolerance: f64,

    /// Churn: clients per second that leave and rejoin.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) churn_rate: f64,

    /// Storm: time after ramp-up when all connections drop.
    #[arg(long, default_value = "3s", value_parser = duration)]
    pub(crate) storm_after: Duration,

    /// First reconnect delay (doubles per failed attempt, with full jitter).
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub(crate) backoff_base: Duration,

    /// Largest reconnect delay.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub(crate) backoff_max: Duration,

    /// TCP connect plus WebSocket handshake time limit.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub(crate) connect_timeout: Duration,

    /// Local source addresses to spread connections over (e.g. 127.0.0.1-127.0.0.16 or
    /// 127.0.0.1,127.0.0.2): each gives ~28k ephemeral ports.
    #[arg(long)]
    pub(crate) source_ips: Option<String>,

    /// This machine's slice `i/n` of the lobbies (0-based): each of n load generators runs
    /// the same command with its own i.
    #[arg(long, default_value = "0/1")]
    pub(crate) shard: String,

    /// Distributed run: coordinate this shard (--shard i/n) with the others through this
    /// Redis. The shards start together, open their measured windows together and publish
    /// their figures every second; shard 0 (or `tickrelay-loadgen watch REDIS_URL`) shows the
    /// merged progress and writes the merged report: with --coordinate, shard 0's --json,
    /// --html, --hlog and --slo are about the merged run, the other shards' about their own
    /// share (no --slo verdict on a share). Every shard must run the same command but --shard.
    #[arg(
        long,
        value_name = "REDIS_URL",
        env = "TICKRELAY_LOADGEN_COORDINATE",
        conflicts_with = "self_host"
    )]
    pub(crate) coordinate: Option<String>,

    /// Name of the distributed run (its keys in Redis; a run whose shards are all gone is
    /// replaced by the next one of the same name).
    #[arg(long, default_value = "default", requires = "coordinate")]
    pub(crate) run: String,

    /// How long a shard waits for the others: to register, and to be ready to measure.
    #[arg(long, default_value = "5m", value_parser = duration, requires = "coordinate")]
    pub(crate) wait_shards: Duration,

    /// Lobby names are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "lg")]
    pub(crate) lobby_prefix: String,

    /// Worker threads running clients (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) threads: usize,

    /// Correct broadcast latency by the estimated clock offset.
    #[arg(long, value_enum, default_value_t = ClockCorrection::Auto)]
    pub(crate) clock_correction: ClockCorrection,

    #[command(flatten)]
    pub(crate) report: ReportArgs,
}

/// What becomes of a report and what it must meet: a run's own, or (shard 0 of a distributed
/// run, and `watch`) the merged one.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReportArgs {
    /// Exit non-zero (2) when a bound is broken, e.g. 'broadcast.p99<20ms,errors=0'.
    /// Metrics: broadcast input rtt connect join event reconnect resume, with .p50 .p90 .p99 .p99.9
    /// .max .mean; counters: errors missed delivery late reconnects. `errors` counts the whole
    /// run (ramp-up and leaving included), the rest the measured window. A bound on a metric
    /// without samples is broken ("no samples"), never passed.
    #[arg(long)]
    pub(crate) slo: Option<String>,

    /// Write the full result as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,

    /// Write the report as a self-contained HTML page: percentile plot, latency and
    /// throughput over time, tables. No script, nothing fetched: open it anywhere.
    #[arg(long)]
    pub(crate) html: Option<PathBuf>,

    /// Write an HdrHistogram interval log (V2, one tagged histogram per metric per second).
    #[arg(long)]
    pub(crate) hlog: Option<PathBuf>,

    /// No progress line.
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}
