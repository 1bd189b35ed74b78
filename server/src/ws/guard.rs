//! The WebSocket connection guard: a connection's place in the connection limit and in the
//! gauges, given back by `Drop`, so no path out of a session (a panic included) can leak a
//! slot and leave the server answering 1013 forever.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::ServerContext;
use crate::metrics::Metrics;

pub(crate) struct ConnectionGuard {
    metrics: Arc<Metrics>,
    /// A permit of the `--max-connections` semaphore; `None` when the server was full (the
    /// connection is then closed at once with 1013, but counted while it lasts).
    slot: Option<OwnedSemaphorePermit>,
}

impl ConnectionGuard {
    /// Counts a new WebSocket connection and takes a slot if one is free.
    pub(crate) fn open(ctx: &ServerContext) -> Self {
        let slot = ctx.connection_slots.clone().try_acquire_owned().ok();
        ctx.metrics.connections.inc();
        ctx.metrics.connections_opened.inc();
        Self {
            metrics: ctx.metrics.clone(),
            slot,
        }
    }

    pub(crate) fn has_slot(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}
