//! tickrelay server: accepts HTTP connections, upgrades `/ws` to WebSocket sessions, and runs
//! one actor per lobby that broadcasts a snapshot every tick.
//!
//! `run` is the whole server; the binary, the tests, the benchmarks and the load generator's
//! `--self-host` all call it with their own listener, config and shutdown token.

mod admission;
mod assets;
mod clock;
pub mod config;
mod context;
mod fleet;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod lease;
mod lobby;
mod matchmake;
pub mod metrics;
mod mint;
mod outbox;
mod resume;
mod routing;
mod stats;
mod sync;
mod tls;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use crate::config::{Config, ConfigError, LogFormat};
use crate::context::ServerContext;
#[doc(hidden)]
pub use crate::lobby::bench_tick;
pub use crate::metrics::Metrics;
pub use crate::mint::TicketCommand;

/// Connections the kernel queues before `accept` (somaxconn on this machine kind is 4096).
const LISTEN_BACKLOG: u32 = 4096;

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

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener: {0}")]
    Io(#[from] io::Error),
}

/// Where the server listens: the public listener (WebSocket, demo) and, when the operator
/// gives one, a separate admin listener (metrics, stats, lobbies, monitor).
pub struct Listeners {
    pub public: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Which routes a listener serves (see `http::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Everything: the default, one listener.
    All,
    /// The WebSocket, the demo and the health check; the admin routes are on another listener.
    Public,
    /// The admin routes and the health check.
    Admin,
}

/// Runs the server on `listener` (and on `--admin-listen`, bound here, if set) until
/// `shutdown` is cancelled. See [`serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let admin = config.admin_listen.map(bind).transpose()?;
    serve(
        Listeners {
            public: listener,
            admin,
        },
        config,
        shutdown,
    )
    .await
}

/// Runs the server on `listeners` until `stop` is cancelled.
///
/// Shutdown is one mechanism: cancelling the server's token stops the accept loops, makes
/// every connection's writer send close 1001, stops every lobby, and lets idle HTTP
/// connections finish; `serve` then waits for all tracked tasks, at most
/// `config.shutdown_timeout`. In a fleet, `stop` first drains (moves every lobby to other
/// nodes, at most `--drain-timeout`), then cancels that token.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    stop: CancellationToken,
) -> Result<(), RunError> {
    config.validate()?;
    let shutdown_timeout = config.shutdown_timeout;
    let public_addr = listeners.public.local_addr()?;
    // The address really bound (a test's port 0), which the fleet's default public URL names.
    let config = Config {
        listen: public_addr,
        ..config
    };
    let shutdown = CancellationToken::new();
    let ctx = ServerContext::new(config, shutdown.clone())?;
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                // Stopped some other way (an accept loop failed): nothing to drain.
                () = ctx.shutdown.cancelled() => return,
            }
            if !ctx.config.drain_timeout.is_zero() {
                ctx.directory.drain(ctx.config.drain_timeout).await;
            }
            ctx.shutdown.cancel();
        });
    }
    let scheme = if ctx.tls.is_some() { "https" } else { "http" };
    info!(addr = %public_addr, scheme, tick_hz = ctx.config.tick_hz, "tickrelay listening");
    if let Some(tls) = &ctx.tls {
        ctx.tracker.spawn(tls::watch(
            tls.clone(),
            ctx.metrics.clone(),
            ctx.config.tls_reload_check,
            ctx.shutdown.clone(),
        ));
    }
    if let Some(fleet) = &ctx.fleet {
        if ctx.config.resume_secret.is_none() {
            warn!(
                "fleet mode without --resume-secret: this node signs resume tokens with a key \
                 of its own, so seats cannot be resumed on another node (give every node the \
                 same secret)"
            );
        }
        let status = ctx.clone();
        ctx.tracker.spawn(fleet.clone().run(
            move || {
                let lobbies = status.directory.list().len() as u64;
                (lobbies, status.metrics.connections.get().max(0) as u64)
            },
            ctx.shutdown.clone(),
        ));
    }
    match &ctx.tickets {
        Some(tickets) => info!(
            algorithm = tickets.algorithm(),
            "joins require a signed ticket"
        ),
        None if !public_addr.ip().is_loopback() => warn!(
            addr = %public_addr,
            "joins are unauthenticated: anyone who reaches this address may join any lobby \
             under any name (require tickets with --ticket-secret or --ticket-public-key)"
        ),
        None => {}
    }
    let admin = match listeners.admin {
        Some(admin) => {
            info!(addr = %admin.local_addr()?, "admin endpoints (/metrics, /stats, /lobbies, /monitor) listening");
            Some(admin)
        }
        None => {
            if !public_addr.ip().is_loopback() {
                warn!(
                    addr = %public_addr,
                    "admin endpoints (/metrics, /stats, /lobbies, /monitor) are served on a \
                     public address: give them their own with --admin-listen"
                );
            }
            None
        }
    };
    let public_surface = if admin.is_some() {
        Surface::Public
    } else {
        Surface::All
    };
    let admin_loop = async {
        if let Some(admin) = admin {
            accept_loop(&ctx, admin, Surface::Admin).await;
        }
    };
    tokio::join!(
        accept_loop(&ctx, listeners.public, public_surface),
        admin_loop
    );
    // Whatever ended the accept loops, everything else stops too (the drain task included).
    ctx.shutdown.cancel();
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

/// Accepts connections on `listener` until shutdown, each served with the routes of
/// `surface`. Connections not yet upgraded hold a pending permit from before `accept` until
/// they end or upgrade: at the limit the loop stops accepting (the kernel's backlog waits)
/// instead of spending file descriptors that live clients need.
async fn accept_loop(ctx: &Arc<ServerContext>, listener: TcpListener, surface: Surface) {
    let shutdown = &ctx.shutdown;
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = ctx.pending_slots.clone().acquire_owned() => permit,
        };
        // Invariant: the semaphore is never closed.
        let permit = permit.expect("the pending-connection semaphore stays open");
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // TLS on the public listener only: the admin one is meant to stay private.
                let tls = (surface != Surface::Admin)
                    .then(|| ctx.tls.clone())
                    .flatten();
                let pending = PendingGuard::new(ctx, permit);
                serve_http(ctx, stream, tls, peer, surface, pending);
            }
            Err(err) => {
                // Typically EMFILE at the open-file limit: back off instead of spinning, so
                // the accept loop never takes the workers from live connections.
                warn!(%err, "accept failed");
                ctx.metrics.accept_errors.inc();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TCP connection that is not a WebSocket connection (yet): its permit of
/// `--max-pending-connections` and its place in the pending gauge, both given back on drop.
struct PendingGuard {
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl PendingGuard {
    fn new(ctx: &ServerContext, permit: OwnedSemaphorePermit) -> Self {
        ctx.metrics.connections_pending.inc();
        Self {
            metrics: ctx.metrics.clone(),
            _permit: permit,
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.metrics.connections_pending.dec();
    }
}

/// A connection's byte stream before and during its HTTP exchange: plain TCP or TLS over it
/// (`ws::upgrade` takes it apart again after the upgrade). TLS's is boxed: the rustls session
/// inside would otherwise widen every plain connection's HTTP task.
pub(crate) type HttpStream = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

fn serve_http(
    ctx: &Arc<ServerContext>,
    stream: TcpStream,
    tls: Option<Arc<tls::Tls>>,
    peer: SocketAddr,
    surface: Surface,
    pending: PendingGuard,
) {
    // Snapshots are small and latency-bound: never wait to coalesce them in the kernel.
    let _ = stream.set_nodelay(true);
    let conn_ctx = ctx.clone();
    ctx.tracker.spawn(async move {
        let ctx = conn_ctx;
        let stream = match tls {
            None => Either::Left(stream),
            Some(tls) => match tls_handshake(&ctx, &tls, stream, peer).await {
                Some(stream) => Either::Right(Box::new(stream)),
                None => return,
            },
        };
        let service_ctx = ctx.clone();
        let service =
            service_fn(move |request| http::route(service_ctx.clone(), request, peer, surface));
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
        // Upgraded (the WebSocket runs in its own task, under its own guard) or finished.
        drop(pending);
    });
}

/// The TLS handshake, bounded by `--tls-handshake-timeout` (the HTTP request's own timeout
/// starts after it); `None` when it failed or took too long (logged at debug, counted).
async fn tls_handshake(
    ctx: &ServerContext,
    tls: &tls::Tls,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accept = tls.acceptor().accept(stream);
    let handshake = tokio::select! {
        // Shutdown does not wait for handshakes in flight.
        () = ctx.shutdown.cancelled() => return None,
        handshake = tokio::time::timeout(ctx.config.tls_handshake_timeout, accept) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => {
            ctx.metrics.tls_handshake("ok");
            Some(stream)
        }
        Ok(Err(err)) => {
            debug!(%peer, %err, "TLS handshake failed");
            ctx.metrics.tls_handshake("failed");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            ctx.metrics.tls_handshake("timeout");
            None
        }
    }
}
