//! A lobby's reliable-message history, sans I/O: every reliable message the lobby broadcasts
//! (events, member joined/left/away/back) gets the next offset and is kept, bounded in
//! messages, bytes and age, so a member that resumes its seat is sent what it missed. What the
//! bounds evicted is counted, never skipped silently.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tickrelay_protocol::{HandoffEntry, PlayerId, ServerMessage};

/// What a history keeps at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
    /// Older entries cannot be asked for: a member is away at most this long after its last
    /// read (idle timeout plus resume grace).
    pub(crate) age: Duration,
}

struct Entry {
    offset: u64,
    at: Instant,
    /// The member the message is about when that member must not get it (its own join,
    /// away, back).
    subject: Option<PlayerId>,
    message: ServerMessage,
    size: usize,
}

pub(crate) struct History {
    limits: HistoryLimits,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The offset of the last message (0 before the first).
    offset: u64,
}

/// What a resuming member gets: the messages after its offset it may see, and how many it
/// should have got that are gone.
pub(crate) struct Replay<'a> {
    pub(crate) lost: u64,
    pub(crate) messages: Vec<&'a ServerMessage>,
}

impl History {
    pub(crate) fn new(limits: HistoryLimits) -> Self {
        Self {
            limits,
            entries: VecDeque::new(),
            bytes: 0,
            offset: 0,
        }
    }

    /// The history of a lobby moved here: `entries` (oldest first) as its previous node kept
    /// them at `now`, and that node's last offset, which the next message goes on from.
    pub(crate) fn moved_in(
        limits: HistoryLimits,
        offset: u64,
        entries: Vec<HandoffEntry>,
        now: Instant,
    ) -> Self {
        let mut history = Self::new(limits);
        history.offset = offset;
        for entry in entries.into_iter().filter(|e| e.offset <= offset) {
            let size = entry.size as usize;
            history.bytes += size;
            history.entries.push_back(Entry {
                offset: entry.offset,
                at: now
                    .checked_sub(Duration::from_millis(entry.age_ms))
                    .unwrap_or(now),
                subject: entry.subject,
                message: entry.message,
                size,
            });
        }
        history.trim(now);
        history
    }

    /// What a node the lobby moves to needs to replay from (`offset` is the rest), as of `now`.
    pub(crate) fn handoff(&self, now: Instant) -> Vec<HandoffEntry> {
        if self.limits.messages == 0 || self.limits.bytes == 0 {
            return Vec::new();
        }
        self.entries
            .iter()
            .map(|e| HandoffEntry {
                offset: e.offset,
                age_ms: now.saturating_duration_since(e.at).as_millis() as u64,
                subject: e.subject,
                size: e.size as u64,
                message: e.message.clone(),
            })
            .collect()
    }

    /// The offset of the last reliable message (what `welcome` tells a joiner).
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Assigns the next offset to the message `make` builds, keeps it, and returns it.
    /// `size` is what it costs to keep (about its payload).
    pub(crate) fn push(
        &mut self,
        now: Instant,
        subject: Option<PlayerId>,
        size: usize,
        make: impl FnOnce(u64) -> ServerMessage,
    ) -> &ServerMessage {
        self.offset += 1;
        let message = make(self.offset);
        self.entries.push_back(Entry {
            offset: self.offset,
            at: now,
            subject,
            message,
            size,
        });
        self.bytes += size;
        self.trim(now);
        match self.entries.back() {
            Some(entry) => &entry.message,
            // Limits of zero keep nothing: the message lives on only in the caller's copy.
            None => unreachable!("trim keeps the newest entry"),
        }
    }

    /// Drops entries over the bounds, oldest first; the newest always stays until the next.
    pub(crate) fn trim(&mut self, now: Instant) {
        while self.entries.len() > 1
            && (self.entries.len() > self.limits.messages
                || self.bytes > self.limits.bytes
                || self
                    .entries
                    .front()
                    .is_some_and(|e| now.saturating_duration_since(e.at) > self.limits.age))
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.size;
            }
        }
    }

    /// What a member that last received `after` is to be sent, `to` being that member (the
    /// messages about itself are left out, as they were when it was connected).
    pub(crate) fn since(&self, after: u64, to: PlayerId) -> Replay<'_> {
        // A single kept entry is kept only until the next push, whatever the bounds: with
        // limits of zero nothing counts as replayable.
        let keeps_any = self.limits.messages > 0 && self.limits.bytes > 0;
        let oldest = match self.entries.front() {
            Some(first) if keeps_any => first.offset,
            _ => self.offset + 1,
        };
        let after = after.min(self.offset);
        let lost = oldest.saturating_sub(after + 1);
        let messages = self
            .entries
            .iter()
            .filter(|e| keeps_any && e.offset > after && e.subject != Some(to))
            .map(|e| &e.message)
            .collect();
        Replay { lost, messages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: usize, bytes: usize) -> HistoryLimits {
        HistoryLimits {
            messages,
            bytes,
            age: Duration::from_secs(60),
        }
    }

    fn left(history: &mut History, now: Instant, id: PlayerId) -> u64 {
        let message = history.push(now, None, 10, |offset| ServerMessage::MemberLeft {
            id,
            offset: Some(offset),
        });
        match message {
            ServerMessage::MemberLeft { offset, .. } => offset.unwrap(),
            _ => unreachable!(),
        }
    }

    fn ids(replay: &Replay<'_>) -> Vec<PlayerId> {
        replay
            .messages
            .iter()
            .map(|m| match m {
                ServerMessage::MemberLeft { id, .. } | ServerMessage::MemberAway { id, .. } => *id,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn offsets_count_up_and_a_replay_is_what_came_after() {
        let now = Instant::now();
        let mut history = History::new(limits(100, 1000));
        assert_eq!(history.offset(), 0);
        assert_eq!(left(&mut history, now, 1), 1);
        assert_eq!(left(&mut history, now, 2), 2);
        assert_eq!(left(&mut history, now, 3), 3);
        let replay = history.since(1, 99);
        assert_eq!((replay.lost, ids(&replay)), (0, vec![2, 3]));
        let replay = history.since(3, 99);
        assert_eq!((replay.lost, ids(&replay)), (0, vec![]));
        // An offset from the future (a forged or confused client) replays nothing.
        assert_eq!(history.since(50, 99).messages.len(), 0);
    }

    #[test]
    fn what_the_bounds_evicted_is_counted_as_lost() {
        let now = Instant::now();
        let mut by_count = History::new(limits(2, 1000));
        for id in 1..=5 {
            left(&mut by_count, now, id);
        }
        let replay = by_count.since(1, 99);
        assert_eq!(
            (replay.lost, ids(&replay)),
            (2, vec![4, 5]),
            "2 and 3 are gone"
        );

        let mut by_bytes = History::new(limits(100, 25));
        for id in 1..=5 {
            left(&mut by_bytes, now, id);
        }
        assert_eq!(by_bytes.since(0, 99).lost, 3);

        let mut by_age = History::new(limits(100, 1000));
        left(&mut by_age, now, 1);
        left(&mut by_age, now + Duration::from_secs(61), 2);
        let replay = by_age.since(0, 99);
        assert_eq!((replay.lost, ids(&replay)), (1, vec![2]));

        let mut nothing = History::new(limits(0, 0));
        left(&mut nothing, now, 1);
        assert_eq!(nothing.since(0, 99).lost, 1, "resume off: all lost");
    }

    #[test]
    fn a_moved_history_replays_as_the_old_one_did_and_goes_on_counting() {
        let now = Instant::now();
        let mut old = History::new(limits(3, 1000));
        for id in 1..=5 {
            left(&mut old, now, id);
        }
        old.push(now, Some(9), 10, |offset| ServerMessage::MemberAway {
            id: 9,
            offset,
        });
        let later = now + Duration::from_secs(1);
        let mut moved = History::moved_in(limits(3, 1000), old.offset(), old.handoff(now), later);
        for (after, to) in [(0, 99), (3, 99), (4, 9), (6, 99)] {
            let (a, b) = (old.since(after, to), moved.since(after, to));
            assert_eq!(
                (a.lost, ids(&a)),
                (b.lost, ids(&b)),
                "after {after} to {to}"
            );
        }
        assert_eq!(left(&mut moved, later, 10), 7);
        // Ages go on (from the handoff: the time in transit is not counted).
        moved.trim(later + Duration::from_secs(61));
        assert_eq!(moved.since(0, 99).lost, 6);
    }

    #[test]
    fn a_member_is_not_replayed_what_is_about_itself() {
        let now = Instant::now();
        let mut history = History::new(limits(100, 1000));
        history.push(now, Some(7), 10, |offset| ServerMessage::MemberAway {
            id: 7,
            offset,
        });
        left(&mut history, now, 8);
        assert_eq!(ids(&history.since(0, 7)), vec![8]);
        assert_eq!(ids(&history.since(0, 9)), vec![7, 8]);
    }
}
