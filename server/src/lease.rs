//! A lobby's lease as this node sees it (sans-I/O: time is passed in). Redis holds the truth:
//! the lobby's key, with the owner record `"{node} {fence}"` and an expiry. The node may run
//! the lobby only until a deadline it can prove is before that expiry: Redis starts a lease's
//! clock when it *receives* an acquire or renewal, which is after the node sent it, so
//! `sent + length` is a bound from below; the node stops a margin earlier still, for the two
//! clocks' drift. A node that cannot renew in time (cut off from Redis, paused by SIGSTOP,
//! starved) finds its deadline passed at its next tick and stops before anybody else can
//! take the lobby. Who holds a lease is counted by `Arc`: the fleet's map, the lobby running
//! under it, joins on their way; when only the map is left, the fleet gives the lease up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A lease held (or once held) by this node.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The owner record in Redis, which renewals and the release compare.
    pub(crate) record: String,
    /// What `until` counts from.
    epoch: Instant,
    /// Nanoseconds after `epoch` until which the lobby may run.
    until: AtomicU64,
    /// Redis said the lobby is no longer ours: never valid again.
    lost: AtomicBool,
}

impl Lease {
    /// A lease Redis granted for `length`, in answer to a request sent at `sent`.
    pub(crate) fn granted(record: String, sent: Instant, length: Duration) -> Self {
        let lease = Self {
            record,
            epoch: sent,
            until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        };
        lease.renewed(sent, length);
        lease
    }

    /// Redis confirmed a renewal for `length`, sent at `sent`. Deadlines only move forward (a
    /// late answer to an older renewal cannot shorten a newer one).
    pub(crate) fn renewed(&self, sent: Instant, length: Duration) {
        let until = sent.saturating_duration_since(self.epoch) + safe_length(length);
        self.until
            .fetch_max(until.as_nanos() as u64, Ordering::AcqRel);
    }

    /// Redis no longer holds this record: the lobby must stop at once.
    pub(crate) fn lose(&self) {
        self.lost.store(true, Ordering::Release);
    }

    /// Whether the lobby may still run at `now`.
    pub(crate) fn valid(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        !self.lost.load(Ordering::Acquire) && elapsed < self.until.load(Ordering::Acquire)
    }
}

/// How much of a lease of `length` the node counts on: a fifth less, for clock drift
/// between the node and Redis (far more than real clocks drift over seconds).
fn safe_length(length: Duration) -> Duration {
    length - length / 5
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTH: Duration = Duration::from_secs(5);

    #[test]
    fn a_lease_ends_before_redis_could_expire_it() {
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), sent, LENGTH);
        assert!(lease.valid(sent));
        assert!(lease.valid(sent + Duration::from_secs(3)));
        // Redis expires it at `received + LENGTH` at the earliest, `received` >= `sent`.
        assert!(!lease.valid(sent + LENGTH - Duration::from_millis(1)));
        assert!(!lease.valid(sent + Duration::from_secs(4)));
    }

    #[test]
    fn renewals_extend_from_when_they_were_sent_and_never_shorten() {
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), sent, LENGTH);
        let later = sent + Duration::from_secs(2);
        lease.renewed(later, LENGTH);
        assert!(lease.valid(later + Duration::from_secs(3)));
        assert!(!lease.valid(later + Duration::from_secs(4)));
        // A late answer to an earlier renewal.
        lease.renewed(sent + Duration::from_secs(1), LENGTH);
        assert!(lease.valid(later + Duration::from_secs(3)));
    }

    #[test]
    fn a_paused_node_finds_its_lease_gone_when_it_wakes() {
        // SIGSTOP after a renewal, SIGCONT long after: the first look at the clock says stop.
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), sent, LENGTH);
        assert!(!lease.valid(sent + Duration::from_secs(60)));
    }

    #[test]
    fn a_lost_lease_is_never_valid_again() {
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), sent, LENGTH);
        lease.lose();
        assert!(!lease.valid(sent));
        lease.renewed(sent + Duration::from_secs(1), LENGTH);
        assert!(!lease.valid(sent + Duration::from_secs(1)));
    }
}
