//! A lobby's public face: its name, roster and traffic counters, as `/lobbies` and `/stats`
//! read them. The lobby's actor writes them (roster on join and leave, traffic once per
//! tick); everyone else only reads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use tickrelay_protocol::Member;

use crate::sync::lock;

/// A lobby as the directory (and `/lobbies`) sees it.
pub(crate) struct LobbyInfo {
    pub(crate) name: String,
    pub(crate) tick_hz: u32,
    pub(crate) created: Instant,
    pub(crate) created_unix: SystemTime,
    /// Current roster, refreshed by the lobby's actor on every join and leave.
    pub(crate) members: Mutex<Vec<Member>>,
    /// Traffic since the lobby was created, added by its actor once per tick.
    pub(crate) traffic: LobbyTraffic,
    /// Players seated, and of those the ones who joined afresh recently (`Progress`'s
    /// `seats` and `recent`), as of the last tick.
    seats: AtomicU64,
}

impl LobbyInfo {
    pub(crate) fn new(name: String, tick_hz: u32) -> Self {
        Self {
            name,
            tick_hz,
            created: Instant::now(),
            created_unix: SystemTime::now(),
            members: Mutex::new(Vec::new()),
            traffic: LobbyTraffic::default(),
            seats: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_roster(&self, roster: Vec<Member>) {
        *lock(&self.members) = roster;
    }

    pub(crate) fn roster(&self) -> Vec<Member> {
        lock(&self.members).clone()
    }

    pub(crate) fn member_count(&self) -> usize {
        lock(&self.members).len()
    }

    /// The actor's once-per-tick count of its players, and of recent fresh joins among them.
    pub(crate) fn set_seats(&self, seats: u32, recent: u32) {
        self.seats.store(
            u64::from(seats) << 32 | u64::from(recent),
            Ordering::Relaxed,
        );
    }

    /// Players seated and recent fresh joins, as of the last tick.
    pub(crate) fn seats(&self) -> (u32, u32) {
        let both = self.seats.load(Ordering::Relaxed);
        ((both >> 32) as u32, both as u32)
    }
}

/// A lobby's traffic counters. Only its actor adds to them, once per tick (never per member or
/// per message), so they cost a handful of uncontended atomic adds per tick.
#[derive(Default)]
pub(crate) struct LobbyTraffic {
    pub(crate) ticks: AtomicU64,
    /// `state` messages the lobby received.
    pub(crate) states_in: AtomicU64,
    /// `event` messages the lobby received (each relayed to every member).
    pub(crate) events_in: AtomicU64,
    /// Snapshots handed to members' outboxes.
    pub(crate) snapshots_out: AtomicU64,
    /// Every message handed to members' outboxes: snapshots, events, welcomes, member news.
    pub(crate) messages_out: AtomicU64,
    /// The bytes of those messages.
    pub(crate) bytes_out: AtomicU64,
}

/// Plain copies of [`LobbyTraffic`], for reading and for the actor's per-tick accumulation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TrafficCounts {
    pub(crate) ticks: u64,
    pub(crate) states_in: u64,
    pub(crate) events_in: u64,
    pub(crate) snapshots_out: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_out: u64,
}

impl LobbyTraffic {
    /// Adds counts accumulated since the last call (the actor calls this once per tick).
    pub(crate) fn add(&self, counts: &TrafficCounts) {
        let pairs = [
            (&self.ticks, counts.ticks),
            (&self.states_in, counts.states_in),
            (&self.events_in, counts.events_in),
            (&self.snapshots_out, counts.snapshots_out),
            (&self.messages_out, counts.messages_out),
            (&self.bytes_out, counts.bytes_out),
        ];
        for (counter, value) in pairs {
            if value > 0 {
                counter.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn get(&self) -> TrafficCounts {
        TrafficCounts {
            ticks: self.ticks.load(Ordering::Relaxed),
            states_in: self.states_in.load(Ordering::Relaxed),
            events_in: self.events_in.load(Ordering::Relaxed),
            snapshots_out: self.snapshots_out.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}
