//! The WebSocket connection guard: a connection's place in the connection limit, in its IP's
//! count and in the gauges, given back by `Drop`, so no path out of a session (a panic
//! included) can leak a slot and leave the server answering 1013 forever. A connection refused
//! for want of a slot (closed at once with 1013) holds a pending-connection permit instead
//! while it closes, so a flood of refused upgrades is bounded too.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::admission::IpSlot;
use crate::context::ServerContext;

pub(crate) struct ConnectionGuard {
    ctx: Arc<ServerContext>,
    /// A permit of the `--max-connections` semaphore (`has_slot`), or, when the server was
    /// full (the connection is closed at once with 1013, but counted while it lasts), of the
    /// pending one.
    _permit: OwnedSemaphorePermit,
    has_slot: bool,
    ip: IpSlot,
}

impl ConnectionGuard {
    /// Counts a new WebSocket connection holding `ip` (its place in its IP's count, which the
    /// guard gives back) and one connection slot, or if none is free one pending permit (to be
    /// refused with 1013). `None` when neither is free (`ip` is given back at once): the
    /// upgrade is then refused over HTTP.
    pub(crate) fn open(ctx: &Arc<ServerContext>, ip: IpSlot) -> Option<Self> {
        let (permit, has_slot) = match ctx.connection_slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, true),
            Err(_) => match ctx.pending_slots.clone().try_acquire_owned() {
                Ok(pending) => (pending, false),
                Err(_) => {
                    ctx.admission.release(ip);
                    return None;
                }
            },
        };
        ctx.metrics.connections.inc();
        ctx.metrics.connections_opened.inc();
        Some(Self {
            ctx: ctx.clone(),
            _permit: permit,
            has_slot,
            ip,
        })
    }

    pub(crate) fn has_slot(&self) -> bool {
        self.has_slot
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.ctx.metrics.connections.dec();
        self.ctx.admission.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn a_panicking_connection_gives_its_slot_its_ip_place_and_its_gauge_back() {
        let config = Config {
            max_connections: 1,
            max_pending_connections: 1,
            max_connections_per_ip: 3,
            ip_limit_exempt: Vec::new(),
            ..Config::default()
        };
        let ctx = ServerContext::new(config, CancellationToken::new()).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let open = || {
            let slot = ctx.admission.admit(ip, None).expect("under the IP's limit");
            ConnectionGuard::open(&ctx, slot)
        };
        let guard = open().expect("a free slot");
        assert!(guard.has_slot());
        let refused = open().expect("a pending permit");
        assert!(!refused.has_slot(), "the only slot is taken");
        assert!(open().is_none(), "no slot and no pending permit left");
        assert!(
            ctx.admission.admit(ip, None).is_ok(),
            "the upgrade refused over HTTP gave its IP place back"
        );
        assert_eq!(
            ctx.metrics.connections.get(),
            2,
            "a refused connection counts while it lasts"
        );
        drop(refused);
        assert_eq!(ctx.pending_slots.available_permits(), 1);
        let session = tokio::spawn(async move {
            let _guard = guard;
            panic!("a bug in a session");
        });
        assert!(session.await.expect_err("the task panicked").is_panic());
        assert_eq!(
            ctx.connection_slots.available_permits(),
            1,
            "the slot came back"
        );
        assert_eq!(ctx.metrics.connections.get(), 0);
        assert_eq!(ctx.metrics.connections_opened.get(), 2);
        assert!(open().expect("the slot is back").has_slot());
    }
}
