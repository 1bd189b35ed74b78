//! `tickrelay-server`: parses the command line, sets up logging and the runtime, and runs
//! the server until SIGINT or SIGTERM.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tickrelay_server::{Config, LogFormat, TicketCommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// mimalloc rather than glibc's malloc: after a burst (a connection ramp, sockets backing up)
/// glibc keeps the freed memory between live connection state, mimalloc returns it. Measured
/// with `e2e --preset scale`: 5.1 -> 3.4 KiB of RSS per connection at 19,200 (RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(err) = real_main() {
        eprintln!("tickrelay-server: {err:#}");
        std::process::exit(1);
    }
}

/// tickrelay: a tick-based game-state relay over WebSockets.
///
/// Clients open `ws://HOST:PORT/ws`, join a lobby and send their state; every tick the server
/// broadcasts one snapshot of the lobby to all its members. Also serves /healthz, /lobbies,
/// /stats, /monitor and /metrics (Prometheus). Durations take units (`500ms`, `10s`), sizes
/// are bytes. Every flag has a TICKRELAY_* environment fallback.
#[derive(Debug, Parser)]
#[command(
    name = "tickrelay-server",
    version,
    long_about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    Ticket(TicketCommand),
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Ticket(ticket)) = cli.command {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the system clock is before 1970")?;
        println!("{}", ticket.sign(now.as_secs())?);
        return Ok(());
    }
    let config = cli.config;
    config.validate()?;
    // Held for the whole run: dropping it flushes the log lines still queued.
    let _log_flush = init_logging(config.log_format);
    match tickrelay_server::raise_open_file_limit() {
        Ok(limit) => info!(limit, "open-file limit"),
        Err(err) => warn!(%err, "could not raise the open-file limit"),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tickrelay_server::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        let now = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone(), now.clone()));
        tokio::select! {
            served = tickrelay_server::run(listener, config, shutdown) => {
                served.context("server failed")
            }
            () = now.cancelled() => {
                anyhow::bail!("second signal: exited at once, without finishing the drain or the shutdown")
            }
        }
    })
}

/// Lines the log writer's queue holds before it drops new ones. The queue is allocated whole
/// at start (32 bytes a line), so the default of 128,000 would cost 4 MiB of resident memory;
/// 16,384 lines absorb any burst the server logs (a line per connection opened or closed).
const LOG_QUEUE_LINES: usize = 16_384;

/// Logs to stderr through a non-blocking writer: a log line is handed to a dedicated thread,
/// so a slow or stuck log pipe can never stall a runtime worker (and with it lobbies' ticks).
/// Lines that would overflow its queue are dropped rather than waited for. Colours only when
/// stderr is a terminal.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("tickrelay-log")
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// The first SIGTERM or SIGINT cancels `shutdown` (in a fleet: drain, then shut down); a
/// second one cancels `now`.
async fn cancel_on_signal(shutdown: CancellationToken, now: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
    shutdown.cancel();
    // In a fleet the first signal drains (up to --drain-timeout); a second one means now.
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    now.cancel();
}
