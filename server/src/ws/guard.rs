//! The WebSocket connection guard: a connection's place in the connection limit and in the
//! gauges, given back by `Drop`, so no path out of a session (a panic included) can leak a
//! slot and leave the server answering 1013 forever.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

pub(crate) struct ConnectionGuard {
    metrics: Arc<Metrics>,
    /// A permit of the `--max-connections` semaphore; `None` when the server was full (the
    /// connection is then closed at once with 1013, but counted while it lasts).
    slot: Option<OwnedSemaphorePermit>,
}

impl ConnectionGuard {
    /// Counts a new WebSocket connection and takes one of `slots` if one is free.
    pub(crate) fn open(slots: &Arc<Semaphore>, metrics: &Arc<Metrics>) -> Self {
        let slot = slots.clone().try_acquire_owned().ok();
        metrics.connections.inc();
        metrics.connections_opened.inc();
        Self {
            metrics: metrics.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_connection_gives_its_slot_and_its_gauge_back() {
        let slots = Arc::new(Semaphore::new(1));
        let metrics = Arc::new(Metrics::new());
        let guard = ConnectionGuard::open(&slots, &metrics);
        assert!(guard.has_slot());
        let refused = ConnectionGuard::open(&slots, &metrics);
        assert!(!refused.has_slot(), "the only slot is taken");
        assert_eq!(
            metrics.connections.get(),
            2,
            "a refused connection counts while it lasts"
        );
        drop(refused);
        let session = tokio::spawn(async move {
            let _guard = guard;
            panic!("a bug in a session");
        });
        assert!(session.await.expect_err("the task panicked").is_panic());
        assert_eq!(slots.available_permits(), 1, "the slot came back");
        assert_eq!(metrics.connections.get(), 0);
        assert_eq!(metrics.connections_opened.get(), 2);
        assert!(ConnectionGuard::open(&slots, &metrics).has_slot());
    }
}
