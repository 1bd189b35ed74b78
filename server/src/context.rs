//! `ServerContext`: everything the server's tasks share, built once by `run` and passed down
//! explicitly (there are no globals).

use std::sync::Arc;
use std::time::Instant;

use tickrelay_protocol::ticket::TicketVerifier;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lobby;
use crate::metrics::Metrics;

/// Everything the server's tasks share. Built once by [`run`].
pub(crate) struct ServerContext {
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) directory: Box<dyn lobby::Directory>,
    /// Verifies join tickets; `None` when joins need none (`--ticket-secret` and the like).
    pub(crate) tickets: Option<TicketVerifier>,
    /// Cancelled to shut down: see [`run`].
    pub(crate) shutdown: CancellationToken,
    /// Every task the server spawns, so shutdown can wait for all of them.
    pub(crate) tracker: TaskTracker,
    /// One permit per WebSocket connection allowed (`--max-connections`), held by each
    /// connection's `ConnectionGuard`.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// One permit per connection that is not a WebSocket session with a slot
    /// (`--max-pending-connections`): HTTP connections until they upgrade or end, and
    /// refused (1013) sessions until they end.
    pub(crate) pending_slots: Arc<Semaphore>,
    /// When `run` started, for `/stats`' uptime.
    pub(crate) started: Instant,
}
