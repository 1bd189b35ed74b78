//! The WebSocket connection guard: a connection's place in the connection limit and in the
//! gauges, given back by `Drop`, so no path out of a session (a panic included) can leak a
//! slot and leave the server answering 1013 forever. A connection refused for want of a slot
//! (closed at once with 1013) holds a pending-connection permit instead while it closes, so a
//! flood of refused upgrades is bounded too.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

pub(crate) struct ConnectionGuard {
    metrics: Arc<Metrics>,
    /// A permit of the `--max-connections` semaphore (`has_slot`), or, when the server was
    /// full (the connection is closed at once with 1013, but counted while it lasts), of the
    /// pending one.
    _permit: OwnedSemaphorePermit,
    has_slot: bool,
}

impl ConnectionGuard {
    /// Counts a new WebSocket connection holding one of `slots`, or if none is free one of
    /// `pending` (to be refused with 1013). `None` when neither is free: the upgrade is then
    /// refused over HTTP.
    pub(crate) fn open(
        slots: &Arc<Semaphore>,
        pending: &Arc<Semaphore>,
        metrics: &Arc<Metrics>,
    ) -> Option<Self> {
        let (permit, has_slot) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, true),
            Err(_) => (pending.clone().try_acquire_owned().ok()?, false),
        };
        metrics.connections.inc();
        metrics.connections_opened.inc();
        Some(Self {
            metrics: metrics.clone(),
            _permit: permit,
            has_slot,
        })
    }

    pub(crate) fn has_slot(&self) -> bool {
        self.has_slot
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
        let pending = Arc::new(Semaphore::new(1));
        let metrics = Arc::new(Metrics::new());
        let open = || ConnectionGuard::open(&slots, &pending, &metrics);
        let guard = open().expect("a free slot");
        assert!(guard.has_slot());
        let refused = open().expect("a pending permit");
        assert!(!refused.has_slot(), "the only slot is taken");
        assert!(open().is_none(), "no slot and no pending permit left");
        assert_eq!(
            metrics.connections.get(),
            2,
            "a refused connection counts while it lasts"
        );
        drop(refused);
        assert_eq!(pending.available_permits(), 1);
        let session = tokio::spawn(async move {
            let _guard = guard;
            panic!("a bug in a session");
        });
        assert!(session.await.expect_err("the task panicked").is_panic());
        assert_eq!(slots.available_permits(), 1, "the slot came back");
        assert_eq!(metrics.connections.get(), 0);
        assert_eq!(metrics.connections_opened.get(), 2);
        assert!(open().expect("the slot is back").has_slot());
    }
}
