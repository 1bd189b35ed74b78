//! A lobby's lease as this node sees it (sans-I/O: time is passed in). Redis holds the truth:
//! the lobby's key, with the owner record `"{node} {fence}"` and an expiry. The node may run
//! the lobby only until a deadline it can prove is before that expiry: Redis starts a lease's
//! clock when it *receives* an acquire or renewal, which is after the node sent it, so
//! `sent + length` is a bound from below; the node stops a margin earlier still, for the two
//! clocks' drift. A node that cannot renew in time (cut off from Redis, paused by SIGSTOP,
//! starved) finds its deadline passed at its next tick and stops before anybody else can
//! take the lobby. Who holds a lease is counted by `Arc`: the fleet's map, the lobby running
//! under it, joins on their way; when only the map is left, the fleet gives the lease up.
//! The lobby also reports its progress here (instance, next player id, reliable offset, tick)
//! for the renewals to keep in Redis: what another node rebuilds the lobby from if this one
//! dies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A lease held (or once held) by this node.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The owner record in Redis, which renewals and the release compare.
    pub(crate) record: String,
    /// The matchmaking pool the lobby belongs to, whose count its renewals correct.
    pub(crate) pool: Option<String>,
    /// What `until` counts from.
    epoch: Instant,
    /// Nanoseconds after `epoch` until which the lobby may run.
    until: AtomicU64,
    /// Redis said the lobby is no longer ours: never valid again.
    lost: AtomicBool,
    /// The lobby's instance, next player id, reliable offset, tick, seats and recent joins,
    /// as it last reported.
    progress: [AtomicU64; 6],
}

impl Lease {
    /// A lease Redis granted for `length`, in answer to a request sent at `sent`, for a lobby
    /// of matchmaking pool `pool` if any.
    pub(crate) fn granted(
        record: String,
        pool: Option<String>,
        sent: Instant,
        length: Duration,
    ) -> Self {
        let lease = Self {
            record,
            pool,
            epoch: sent,
            until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            progress: Default::default(),
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

    /// The lobby running under this lease reports where it is (once per tick: plain stores).
    pub(crate) fn report(&self, progress: Progress) {
        let values = [
            progress.instance,
            u64::from(progress.next_player_id),
            progress.offset,
            progress.tick,
            u64::from(progress.seats),
            u64::from(progress.recent),
        ];
        for (slot, value) in self.progress.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// What the lobby last reported, if it ever did.
    pub(crate) fn progress(&self) -> Option<Progress> {
        let [instance, next_player_id, offset, tick, seats, recent] = self
            .progress
            .each_ref()
            .map(|slot| slot.load(Ordering::Relaxed));
        (next_player_id > 0).then_some(Progress {
            instance,
            next_player_id: next_player_id as u32,
            offset,
            tick,
            seats: seats as u32,
            recent: recent as u32,
        })
    }

    /// Whether the lobby may still run at `now`.
    pub(crate) fn valid(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        !self.lost.load(Ordering::Acquire) && elapsed < self.until.load(Ordering::Acquire)
    }
}

/// Where a lobby is: what a node rebuilding it after its owner died starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) instance: u64,
    pub(crate) next_player_id: u32,
    pub(crate) offset: u64,
    pub(crate) tick: u64,
    /// Player seats taken (away ones included): what matchmaking counts.
    pub(crate) seats: u32,
    /// Of those, players who joined afresh within the last matchmaking promise's life: each
    /// most likely used a promise still counted, so matchmaking counts them once.
    pub(crate) recent: u32,
}

impl Progress {
    /// Player ids a lobby may have given out since its last report (a second at most) and
    /// that its rebuilt self must never give again: a generous bound on joins per second.
    const ID_MARGIN: u32 = 4096;

    /// As stored in Redis: `"{instance} {next_player_id} {offset} {tick} {seats} {recent}"`
    /// (the matchmaking scripts read the last two fields).
    pub(crate) fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.instance, self.next_player_id, self.offset, self.tick, self.seats, self.recent
        )
    }

    /// Reads [`encode`](Self::encode)'s text, or an earlier version's without `seats` and
    /// `recent`.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ').map(str::parse::<u64>);
        let mut next = || parts.next()?.ok();
        let progress = Self {
            instance: next()?,
            next_player_id: u32::try_from(next()?).ok()?,
            offset: next()?,
            tick: next()?,
            seats: next().map_or(Some(0), |seats| u32::try_from(seats).ok())?,
            recent: next().map_or(Some(0), |recent| u32::try_from(recent).ok())?,
        };
        Some(progress)
    }

    /// The lobby as another node rebuilds it: no seats, no history, ids past any it may
    /// have given.
    pub(crate) fn recovered(&self, lobby: &str) -> tickrelay_protocol::Handoff {
        tickrelay_protocol::Handoff {
            v: tickrelay_protocol::HANDOFF_VERSION,
            lobby: lobby.to_owned(),
            instance: self.instance,
            tick: self.tick,
            next_player_id: self.next_player_id.saturating_add(Self::ID_MARGIN),
            offset: self.offset,
            seats: Vec::new(),
            history: Vec::new(),
            recovered: true,
        }
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
        let lease = Lease::granted("a 1".into(), None, sent, LENGTH);
        assert!(lease.valid(sent));
        assert!(lease.valid(sent + Duration::from_secs(3)));
        // Redis expires it at `received + LENGTH` at the earliest, `received` >= `sent`.
        assert!(!lease.valid(sent + LENGTH - Duration::from_millis(1)));
        assert!(!lease.valid(sent + Duration::from_secs(4)));
    }

    #[test]
    fn renewals_extend_from_when_they_were_sent_and_never_shorten() {
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), None, sent, LENGTH);
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
        let lease = Lease::granted("a 1".into(), None, sent, LENGTH);
        assert!(!lease.valid(sent + Duration::from_secs(60)));
    }

    #[test]
    fn progress_round_trips_and_a_rebuilt_lobby_never_reuses_an_id() {
        let progress = Progress {
            instance: u64::MAX,
            next_player_id: 12,
            offset: 99,
            tick: 4000,
            seats: 7,
            recent: 2,
        };
        assert_eq!(Progress::decode(&progress.encode()), Some(progress));
        assert_eq!(
            Progress::decode("1 2 3 4"),
            Some(Progress {
                instance: 1,
                next_player_id: 2,
                offset: 3,
                tick: 4,
                seats: 0,
                recent: 0,
            }),
            "an earlier version's, without seats"
        );
        assert_eq!(Progress::decode("1 2 3"), None);
        assert_eq!(Progress::decode("1 99999999999 3 4"), None);
        let lease = Lease::granted("a 1".into(), None, Instant::now(), LENGTH);
        assert_eq!(lease.progress(), None, "nothing reported yet");
        lease.report(progress);
        assert_eq!(lease.progress(), Some(progress));
        let rebuilt = progress.recovered("arena");
        assert!(rebuilt.recovered && rebuilt.seats.is_empty());
        assert_eq!((rebuilt.instance, rebuilt.offset), (u64::MAX, 99));
        assert!(rebuilt.next_player_id > 12 + 1000);
    }

    #[test]
    fn a_lost_lease_is_never_valid_again() {
        let sent = Instant::now();
        let lease = Lease::granted("a 1".into(), None, sent, LENGTH);
        lease.lose();
        assert!(!lease.valid(sent));
        lease.renewed(sent + Duration::from_secs(1), LENGTH);
        assert!(!lease.valid(sent + Duration::from_secs(1)));
    }
}
