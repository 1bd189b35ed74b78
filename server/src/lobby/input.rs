//! A member's latest `state`, handed from its connection's reader to its lobby without a
//! channel message. States supersede each other, so the lobby needs only the newest one at
//! tick time: the reader overwrites the slot (never waits, never wakes the lobby) and the tick
//! takes what is there. Events, joins and leaves still go through the lobby's command channel.
//!
//! The slot also counts every message its connection received (and their bytes), so the
//! per-message path touches no shared counter: the tick adds what it takes to the server's
//! metrics once per tick, and whoever lets go of the slot last (the lobby on leave, the
//! session at its end) takes the rest.

use std::sync::Mutex;

use tickrelay_protocol::Payload;

#[derive(Default)]
pub(crate) struct InputSlot {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    latest: Option<(u64, Payload)>,
    /// States put since the last take, superseded ones included (the lobby's `states_in`).
    states: u64,
    /// Messages of any kind received since the last take, and their bytes.
    counts: MessageCounts,
}

/// Messages a connection received, and their bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageCounts {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
}

impl MessageCounts {
    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
    }
}

/// What a tick takes out of a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The newest state and its `seq`, if one arrived since the last take.
    pub(crate) state: Option<(u64, Payload)>,
    /// States received since the previous take; all but the last were superseded unseen.
    pub(crate) states: u64,
    pub(crate) counts: MessageCounts,
}

impl InputSlot {
    /// Stores the newest state (a message of `bytes` bytes), replacing one the lobby has not
    /// taken yet.
    pub(crate) fn put(&self, seq: u64, data: Payload, bytes: usize) {
        let mut pending = self.lock();
        pending.latest = Some((seq, data));
        pending.states += 1;
        pending.counts.add(bytes);
    }

    /// A state another slot received (and counted): it waits here for the next tick, unless
    /// a newer one arrives first.
    pub(crate) fn hand_over(&self, seq: u64, data: Payload) {
        let mut pending = self.lock();
        if pending.latest.is_none() {
            pending.latest = Some((seq, data));
        }
    }

    /// Counts a message that is not a state.
    pub(crate) fn count(&self, bytes: usize) {
        self.lock().counts.add(bytes);
    }

    /// Takes the newest state, if one arrived since the last take, and the counts.
    pub(crate) fn take(&self) -> Taken {
        let mut pending = self.lock();
        Taken {
            state: pending.latest.take(),
            states: std::mem::take(&mut pending.states),
            counts: std::mem::take(&mut pending.counts),
        }
    }

    /// Takes only the counts (the slot is being let go of).
    pub(crate) fn take_counts(&self) -> MessageCounts {
        std::mem::take(&mut self.lock().counts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        crate::sync::lock(&self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_state_wins_and_every_message_is_counted() {
        let slot = InputSlot::default();
        assert_eq!(slot.take().state, None);
        slot.put(1, Payload::from(vec![1]), 10);
        slot.count(5);
        slot.put(2, Payload::from(vec![2]), 12);
        let taken = slot.take();
        assert_eq!(taken.state, Some((2, Payload::from(vec![2]))));
        assert_eq!(taken.states, 2);
        assert_eq!(
            taken.counts,
            MessageCounts {
                messages: 3,
                bytes: 27
            }
        );
        let empty = slot.take();
        assert_eq!(
            (empty.state, empty.states),
            (None, 0),
            "taking empties the slot"
        );
        assert_eq!(empty.counts, MessageCounts::default());
        slot.count(7);
        assert_eq!(
            slot.take_counts(),
            MessageCounts {
                messages: 1,
                bytes: 7
            }
        );
        assert_eq!(slot.take_counts(), MessageCounts::default());
    }
}
