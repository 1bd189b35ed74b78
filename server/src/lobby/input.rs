//! A member's latest `state`, handed from its connection's reader to its lobby without a
//! channel message. States supersede each other, so the lobby needs only the newest one at
//! tick time: the reader overwrites the slot (never waits, never wakes the lobby) and the tick
//! takes what is there. Events, joins and leaves still go through the lobby's command channel.

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
    received: u64,
}

/// What a tick takes out of a slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TakenState {
    pub(crate) seq: u64,
    pub(crate) data: Payload,
    /// States received since the previous take; all but the last were superseded unseen.
    pub(crate) received: u64,
}

impl InputSlot {
    /// Stores the newest state, replacing one the lobby has not taken yet.
    pub(crate) fn put(&self, seq: u64, data: Payload) {
        let mut pending = self.lock();
        pending.latest = Some((seq, data));
        pending.received += 1;
    }

    /// Takes the newest state, if one arrived since the last take.
    pub(crate) fn take(&self) -> Option<TakenState> {
        let mut pending = self.lock();
        let (seq, data) = pending.latest.take()?;
        let received = std::mem::take(&mut pending.received);
        Some(TakenState {
            seq,
            data,
            received,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        crate::lock(&self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_state_wins_and_every_put_is_counted() {
        let slot = InputSlot::default();
        assert_eq!(slot.take(), None);
        slot.put(1, Payload::from(vec![1]));
        slot.put(2, Payload::from(vec![2]));
        let taken = slot.take().expect("a state was put");
        assert_eq!((taken.seq, taken.received), (2, 2));
        assert_eq!(taken.data, Payload::from(vec![2]));
        assert_eq!(slot.take(), None, "taking empties the slot");
        slot.put(3, Payload::from(vec![3]));
        assert_eq!(slot.take().map(|t| t.received), Some(1));
    }
}
