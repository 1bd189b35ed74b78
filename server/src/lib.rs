//! tickrelay server: accepts HTTP connections, upgrades `/ws` to WebSocket sessions, and runs
//! one actor per lobby that broadcasts a snapshot every tick.
//!
//! `run` is the whole server; the binary, the tests, the benchmarks and the load generator's
//! `--self-host` all call it with their own listener, config and shutdown token.

mod assets;
pub mod config;
pub mod frames;
mod http;
mod lobby;
pub mod metrics;
mod outbox;
mod stats;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use crate::config::Config;
#[doc(hidden)]
pub use crate::lobby::bench_tick;
pub use crate::metrics::Metrics;

/// Connections the kernel queues before `accept` (somaxconn on this machine kind is 4096).
const LISTEN_BACKLOG: u32 = 4096;

/// Everything the server's tasks share. Built once by [`run`].
pub(crate) struct ServerContext {
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) directory: lobby::Directory,
    /// Cancelled to shut down: see [`run`].
    pub(crate) shutdown: CancellationToken,
    /// Every task the server spawns, so shutdown can wait for all of them.
    pub(crate) tracker: TaskTracker,
    pub(crate) ws_connections: AtomicUsize,
    /// When `run` started, for `/stats`' uptime.
    pub(crate) started: Instant,
}

/// Binds a listener with a deep accept backlog, for connection storms.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_open_file_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Runs the server on `listener` until `shutdown` is cancelled.
///
/// Shutdown is one mechanism: cancelling the token stops the accept loop, makes every
/// connection's writer send close 1001, stops every lobby, and lets idle HTTP connections
/// finish; `run` then waits for all tracked tasks, at most `config.shutdown_timeout`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    run_with_metrics(listener, config, Arc::new(Metrics::new()), shutdown).await
}

/// [`run`] with metrics owned by the caller (so an embedding process can read them).
pub async fn run_with_metrics(
    listener: TcpListener,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shutdown_timeout = config.shutdown_timeout;
    let ctx = Arc::new(ServerContext {
        config,
        metrics,
        directory: lobby::Directory::default(),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        ws_connections: AtomicUsize::new(0),
        started: Instant::now(),
    });
    info!(addr = %listener.local_addr()?, tick_hz = ctx.config.tick_hz, "tickrelay listening");
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => serve_http(&ctx, stream, peer),
            Err(err) => {
                // Typically EMFILE at the open-file limit: back off instead of spinning.
                warn!(%err, "accept failed");
                ctx.metrics.upgrade_refused("accept_failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    ctx.tracker.close();
    info!(connections = ctx.tracker.len(), "shutting down");
    if tokio::time::timeout(shutdown_timeout, ctx.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = ctx.tracker.len(),
            "shutdown timeout: abandoning remaining tasks"
        );
    }
    Ok(())
}

fn serve_http(ctx: &Arc<ServerContext>, stream: TcpStream, peer: SocketAddr) {
    // Snapshots are small and latency-bound: never wait to coalesce them in the kernel.
    let _ = stream.set_nodelay(true);
    let conn_ctx = ctx.clone();
    ctx.tracker.spawn(async move {
        let ctx = conn_ctx;
        let service_ctx = ctx.clone();
        let service =
            service_fn(move |request| http::route(service_ctx.clone(), request, peer.to_string()));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ctx.config.handshake_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            () = ctx.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    });
}

/// Locks a mutex whose critical sections cannot panic midway: a poisoned lock only means a
/// panic elsewhere in the holder's task, and the data is still consistent, so it is used.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
