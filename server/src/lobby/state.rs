//! The lobby's game state, sans I/O: membership, each player's latest state, and what the next
//! snapshot must carry. Time is an argument and nothing here touches a socket or a channel, so
//! ticks, deltas and keyframes are tested deterministically. The actor in `actor.rs` owns one.
//! It also owns each member's life cycle and the delivery rule (delta or keyframe): the shell
//! only reports what each push did.

use std::time::{Duration, Instant};

use slab::Slab;
use tickrelay_protocol::{HandoffSeat, Member, Payload, PlayerId, PlayerState, Role, Snapshot};

/// A member's handle inside its lobby (a slab key). Only valid until that member leaves.
pub(crate) type MemberKey = usize;

/// What one connection holds: a seat (slab key and player id) and which of the connections
/// that held it this is. A newer connection of the same identity takes the seat over and bumps
/// `holder`, so the replaced connection's late commands (its leave above all) match nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seat {
    pub(crate) key: MemberKey,
    pub(crate) id: PlayerId,
    pub(crate) holder: u32,
}

/// Who asks for a seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Joiner {
    pub(crate) name: String,
    /// A ticket's `sub`: one seat per identity. `None` for anonymous joins (no tickets).
    pub(crate) identity: Option<String>,
    pub(crate) role: Role,
}

impl Joiner {
    /// An anonymous player.
    pub(crate) fn player(name: String) -> Self {
        Self {
            name,
            identity: None,
            role: Role::Player,
        }
    }
}

/// One lobby. `C` is whatever the owner attaches to each member (its connection's outbox);
/// the state stores it but never uses it.
pub(crate) struct LobbyState<C> {
    max_players: usize,
    max_spectators: usize,
    spectators: usize,
    next_player_id: PlayerId,
    tick: u64,
    members: Slab<MemberState<C>>,
    /// Players that left since the last tick; the next delta lists them in `removed`.
    removed_since_tick: Vec<PlayerId>,
}

pub(crate) struct MemberState<C> {
    pub(crate) id: PlayerId,
    pub(crate) name: String,
    pub(crate) identity: Option<String>,
    pub(crate) role: Role,
    /// Which connection holds the seat (see [`Seat`]).
    holder: u32,
    pub(crate) conn: C,
    /// Where the member is in its life cycle, and so what its next snapshot must be.
    phase: Phase,
    /// Latest state and its `seq`, if the player has sent one.
    latest: Option<PlayerState>,
    /// Whether `latest` changed since the last tick.
    dirty: bool,
    /// When this member's share of the lobby's event budget is spent up to (GCRA's theoretical
    /// arrival time); `None` before its first event.
    events_spent_until: Option<Instant>,
    /// Its connection dropped: the seat waits until then for a resume (it gets nothing, and
    /// stays in snapshots with its last state).
    away_until: Option<Instant>,
    /// Away only because the lobby moved here from another node: its member is on its way
    /// (the others were told nothing, so they are told nothing when it arrives).
    arriving: bool,
}

/// Who held a seat before [`LobbyState::take_over`] gave it to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Previous {
    /// A connection that still looked open (half-open, or the same identity again).
    Connected,
    /// Nobody: its connection had dropped, and the others were told (`member_away`).
    Away,
    /// Nobody: the lobby moved here and the seat waited for its member.
    Arriving,
}

/// A member's life cycle as far as snapshots go. (An away member, whose connection dropped,
/// keeps its phase: it gets nothing until a resume restarts it at `Joining`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Joined, and no snapshot has reached its connection yet.
    Joining,
    /// Its connection holds every snapshot so far (sent, or waiting unreplaced).
    InSync,
    /// A snapshot it never received was replaced by a newer one: it missed changes.
    Behind,
}

/// Which snapshot a member gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The players that changed since the previous tick.
    Delta,
    /// Every player's state: after joining, or after missing a snapshot.
    Keyframe,
}

/// What the member's connection did with a snapshot, as the shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushOutcome {
    /// Written to the socket (whole, or with a tail the connection will finish).
    Written,
    /// Queued; nothing was waiting before it.
    Queued,
    /// Queued, replacing a snapshot that never went out.
    Replaced,
    /// Not taken: a snapshot that has not gone out yet waits, and a delta must not replace it.
    Kept,
    /// Refused: the connection is closing (its leave follows).
    Refused,
}

impl<C> MemberState<C> {
    /// Whether `seat` (taken at its key) is this member's current one.
    fn holds(&self, seat: Seat) -> bool {
        self.id == seat.id && self.holder == seat.holder
    }

    /// Its seat, at its key `key`.
    pub(crate) fn seat(&self, key: MemberKey) -> Seat {
        Seat {
            key,
            id: self.id,
            holder: self.holder,
        }
    }

    /// Records this player's latest state, superseding the previous one; the next delta
    /// carries it.
    pub(crate) fn set_state(&mut self, seq: u64, data: Payload) {
        self.latest = Some(PlayerState {
            id: self.id,
            seq,
            data,
        });
        self.dirty = true;
    }

    /// Whether its connection dropped and the seat waits for a resume.
    pub(crate) fn is_away(&self) -> bool {
        self.away_until.is_some()
    }

    /// Bytes of its latest state's data (0 without one): what it adds to every keyframe.
    pub(crate) fn state_len(&self) -> usize {
        self.latest.as_ref().map_or(0, |state| state.data.len())
    }

    /// The member missed something: its next snapshot is a keyframe.
    pub(crate) fn mark_behind(&mut self) {
        self.phase = Phase::Behind;
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// The delivery rule: a delta when the member's connection holds every earlier snapshot,
    /// a keyframe after joining or after one of its snapshots was replaced unsent.
    pub(crate) fn delivery(&self) -> Delivery {
        match self.phase {
            Phase::InSync => Delivery::Delta,
            Phase::Joining | Phase::Behind => Delivery::Keyframe,
        }
    }

    /// Records what happened to the snapshot just handed out. Returns `true` when the member
    /// must get this tick's keyframe at once (it replaces what waits): its connection still
    /// holds an unsent snapshot, so this tick's delta alone would lack that one's changes.
    pub(crate) fn delivered(&mut self, sent: Delivery, outcome: PushOutcome) -> bool {
        let (phase, resend) = match (outcome, sent) {
            (PushOutcome::Refused, _) => (self.phase, false),
            (PushOutcome::Kept, _) | (PushOutcome::Replaced, Delivery::Delta) => {
                (Phase::Behind, true)
            }
            // A keyframe stands alone, whatever it replaced.
            (PushOutcome::Written | PushOutcome::Queued, _)
            | (PushOutcome::Replaced, Delivery::Keyframe) => (Phase::InSync, false),
        };
        self.phase = phase;
        resend
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    /// Every player seat is taken.
    LobbyFull,
    /// Every spectator seat is taken.
    SpectatorsFull,
}

impl<C> LobbyState<C> {
    pub(crate) fn new(max_players: usize, max_spectators: usize) -> Self {
        Self {
            max_players,
            max_spectators,
            spectators: 0,
            next_player_id: 1,
            tick: 0,
            members: Slab::new(),
            removed_since_tick: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members in player seats (away ones included).
    pub(crate) fn player_count(&self) -> usize {
        self.members.len() - self.spectators
    }

    /// The tick number of the last snapshot built (0 before the first tick).
    pub(crate) fn tick_number(&self) -> u64 {
        self.tick
    }

    /// Whether a new member of `role` fits: players and spectators are limited separately.
    pub(crate) fn has_room(&self, role: Role) -> Result<(), JoinRefused> {
        match role {
            Role::Spectator if self.spectators >= self.max_spectators => {
                Err(JoinRefused::SpectatorsFull)
            }
            Role::Player if self.members.len() - self.spectators >= self.max_players => {
                Err(JoinRefused::LobbyFull)
            }
            _ => Ok(()),
        }
    }

    /// Adds a member in a new seat and assigns its player id, if [`has_room`](Self::has_room).
    pub(crate) fn join(&mut self, joiner: Joiner, conn: C) -> Result<Seat, JoinRefused> {
        self.has_room(joiner.role)?;
        let spectator = joiner.role == Role::Spectator;
        self.spectators += usize::from(spectator);
        let id = self.next_player_id;
        self.next_player_id = self.next_player_id.wrapping_add(1).max(1);
        let key = self.members.insert(MemberState {
            id,
            name: joiner.name,
            identity: joiner.identity,
            role: joiner.role,
            holder: 0,
            conn,
            phase: Phase::Joining,
            latest: None,
            dirty: false,
            events_spent_until: None,
            away_until: None,
            arriving: false,
        });
        Ok(Seat { key, id, holder: 0 })
    }

    /// A lobby moved here from another node: its tick counter and player ids go on from
    /// there, and its seats are added with [`adopt`](Self::adopt).
    pub(crate) fn moved_in(
        max_players: usize,
        max_spectators: usize,
        tick: u64,
        next_player_id: PlayerId,
    ) -> Self {
        Self {
            tick,
            next_player_id: next_player_id.max(1),
            ..Self::new(max_players, max_spectators)
        }
    }

    /// Adds a seat the lobby had on its previous node, waiting for its member's resume (until
    /// `now + grace`, or what was left of its grace if it was away already). `conn` stands in
    /// for the connection until then. Limits do not apply: the seat exists already.
    pub(crate) fn adopt(&mut self, seat: HandoffSeat, conn: C, now: Instant, grace: Duration) {
        self.spectators += usize::from(seat.role == Role::Spectator);
        // Never given to anyone else.
        self.next_player_id = self.next_player_id.max(seat.id.wrapping_add(1)).max(1);
        let wait = seat.away_ms.map_or(grace, Duration::from_millis);
        self.members.insert(MemberState {
            id: seat.id,
            name: seat.name,
            identity: seat.identity,
            role: seat.role,
            holder: seat.holder,
            conn,
            phase: Phase::Joining,
            latest: seat.state,
            dirty: false,
            events_spent_until: None,
            away_until: Some(now + wait),
            arriving: seat.away_ms.is_none(),
        });
    }

    /// Every seat, for the node the lobby moves to. A seat still arriving from an earlier
    /// move is arriving there too.
    pub(crate) fn handoff_seats(&self, now: Instant) -> Vec<HandoffSeat> {
        self.members
            .iter()
            .map(|(_, m)| HandoffSeat {
                id: m.id,
                name: m.name.clone(),
                identity: m.identity.clone(),
                role: m.role,
                holder: m.holder,
                state: m.latest.clone(),
                away_ms: m
                    .away_until
                    .filter(|_| !m.arriving)
                    .map(|until| until.saturating_duration_since(now).as_millis() as u64),
            })
            .collect()
    }

    /// The next player id this lobby assigns.
    pub(crate) fn next_player_id(&self) -> PlayerId {
        self.next_player_id
    }

    /// Charges an event of `len` bytes to the sender's share of the lobby's event budget
    /// (`per_second` bytes for the whole lobby, shared equally by its players, each share with
    /// one second of burst and never below `len`). `Err` says how long until it would fit: a
    /// member that floods spends only its own share.
    pub(crate) fn charge_event(
        &mut self,
        seat: Seat,
        len: usize,
        per_second: usize,
        now: Instant,
    ) -> Result<(), Duration> {
        let players = (self.members.len() - self.spectators).max(1);
        let share = (per_second / players).max(len).max(1) as f64;
        let member = self.member_mut(seat).ok_or(Duration::ZERO)?;
        let cost = Duration::from_secs_f64(len as f64 / share);
        let spent = member.events_spent_until.map_or(now, |t| t.max(now)) + cost;
        // One second of burst: the share may be spent up to a second ahead.
        let ahead = spent.saturating_duration_since(now);
        if ahead > Duration::from_secs(1) {
            return Err(ahead - Duration::from_secs(1));
        }
        member.events_spent_until = Some(spent);
        Ok(())
    }

    /// Bytes of every player's latest state: roughly what a keyframe carries.
    pub(crate) fn state_bytes(&self) -> usize {
        self.members.iter().map(|(_, m)| m.state_len()).sum()
    }

    /// The seat `identity` holds, if any.
    pub(crate) fn seat_of(&self, identity: &str) -> Option<(Seat, &MemberState<C>)> {
        self.members
            .iter()
            .find(|(_, m)| m.identity.as_deref() == Some(identity))
            .map(|(key, m)| (m.seat(key), m))
    }

    /// The seat player `id` holds, if it is still in the lobby.
    pub(crate) fn seat_of_player(&self, id: PlayerId) -> Option<(Seat, &MemberState<C>)> {
        self.members
            .iter()
            .find(|(_, m)| m.id == id)
            .map(|(key, m)| (m.seat(key), m))
    }

    /// Leaves `seat` away until `until`; false when the handle is stale.
    pub(crate) fn set_away(&mut self, seat: Seat, until: Instant) -> bool {
        match self.member_mut(seat) {
            Some(member) => {
                member.away_until = Some(until);
                true
            }
            None => false,
        }
    }

    /// The away seats whose wait is over at `now` (they are to leave).
    pub(crate) fn expired_away(&self, now: Instant) -> Vec<Seat> {
        self.members
            .iter()
            .filter(|(_, m)| m.away_until.is_some_and(|until| until <= now))
            .map(|(key, m)| m.seat(key))
            .collect()
    }

    /// Gives `seat` (current: just found with [`seat_of`](Self::seat_of)) to a new
    /// connection: same player, same state, nothing for the others to see (but `member_back`
    /// when it was away). The new connection starts with a keyframe. Returns its seat, the
    /// replaced connection, and who held the seat before.
    pub(crate) fn take_over(&mut self, seat: Seat, conn: C) -> (Seat, C, Previous) {
        let member = self
            .member_mut(seat)
            .expect("take_over is given a current seat");
        member.holder = member.holder.wrapping_add(1);
        member.phase = Phase::Joining;
        let previous = match member.away_until.take() {
            None => Previous::Connected,
            Some(_) if std::mem::take(&mut member.arriving) => Previous::Arriving,
            Some(_) => Previous::Away,
        };
        let old = std::mem::replace(&mut member.conn, conn);
        (member.seat(seat.key), old, previous)
    }

    /// Removes a member; its id goes into the next delta's `removed`. Returns the member, or
    /// `None` when `seat` is stale (that member left, or another connection holds the seat).
    pub(crate) fn leave(&mut self, seat: Seat) -> Option<MemberState<C>> {
        self.member(seat)?;
        let member = self.members.remove(seat.key);
        self.spectators -= usize::from(member.role == Role::Spectator);
        if member.latest.is_some() {
            self.removed_since_tick.push(member.id);
        }
        Some(member)
    }

    /// Advances the tick and returns its delta: the players whose state changed since the
    /// previous tick and the players that left. `now_us` is the send time (Unix microseconds).
    pub(crate) fn tick(&mut self, now_us: u64) -> Snapshot {
        self.tick += 1;
        let players = self
            .members
            .iter_mut()
            .filter(|(_, m)| m.dirty)
            .filter_map(|(_, m)| {
                m.dirty = false;
                m.latest.clone()
            })
            .collect();
        Snapshot {
            tick: self.tick,
            server_time_us: now_us,
            keyframe: false,
            players,
            removed: std::mem::take(&mut self.removed_since_tick),
        }
    }

    /// The keyframe of the last tick: every player that has a state, nothing removed.
    /// `now_us` is the send time, the same as the tick's delta carries.
    pub(crate) fn keyframe(&self, now_us: u64) -> Snapshot {
        Snapshot {
            tick: self.tick,
            server_time_us: now_us,
            keyframe: true,
            players: self
                .members
                .iter()
                .filter_map(|(_, m)| m.latest.clone())
                .collect(),
            removed: Vec::new(),
        }
    }

    /// The member holding `seat`, unless the handle is stale.
    pub(crate) fn member(&self, seat: Seat) -> Option<&MemberState<C>> {
        self.members.get(seat.key).filter(|m| m.holds(seat))
    }

    fn member_mut(&mut self, seat: Seat) -> Option<&mut MemberState<C>> {
        self.members.get_mut(seat.key).filter(|m| m.holds(seat))
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = (MemberKey, &MemberState<C>)> {
        self.members.iter()
    }

    pub(crate) fn members_mut(&mut self) -> impl Iterator<Item = (MemberKey, &mut MemberState<C>)> {
        self.members.iter_mut()
    }

    /// Everyone in the lobby as listed in `welcome` and `/lobbies`.
    pub(crate) fn roster(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(_, m)| Member {
                id: m.id,
                name: m.name.clone(),
                role: m.role,
                // A seat arriving from another node was never announced away.
                away: m.is_away() && !m.arriving,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(bytes: &'static [u8]) -> Payload {
        Payload::from(bytes)
    }

    fn set(lobby: &mut LobbyState<()>, key: MemberKey, seq: u64, bytes: &'static [u8]) {
        member(lobby, key).set_state(seq, data(bytes));
    }

    fn member(lobby: &mut LobbyState<()>, key: MemberKey) -> &mut MemberState<()> {
        lobby
            .members_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m)
            .expect("a member")
    }

    fn player(name: &str) -> Joiner {
        Joiner::player(name.into())
    }

    fn join(lobby: &mut LobbyState<()>, name: &str) -> (MemberKey, PlayerId) {
        let seat = lobby.join(player(name), ()).unwrap();
        (seat.key, seat.id)
    }

    fn ids(snapshot: &Snapshot) -> Vec<(PlayerId, u64)> {
        snapshot.players.iter().map(|p| (p.id, p.seq)).collect()
    }

    #[test]
    fn delta_carries_only_changes_and_keyframe_carries_everyone() {
        let mut lobby = LobbyState::new(8, 8);
        let (a, id_a) = join(&mut lobby, "a");
        let (b, id_b) = join(&mut lobby, "b");
        assert_ne!(id_a, id_b);

        set(&mut lobby, a, 1, b"a1");
        set(&mut lobby, b, 1, b"b1");
        set(&mut lobby, a, 2, b"a2");
        let first = lobby.tick(100);
        assert_eq!((first.tick, first.server_time_us), (1, 100));
        assert_eq!(ids(&first), vec![(id_a, 2), (id_b, 1)], "latest state wins");

        set(&mut lobby, b, 2, b"b2");
        let second = lobby.tick(200);
        assert_eq!(ids(&second), vec![(id_b, 2)]);
        assert!(!second.keyframe);

        let key = lobby.keyframe(200);
        assert!(key.keyframe);
        assert_eq!(key.tick, 2);
        assert_eq!(ids(&key), vec![(id_a, 2), (id_b, 2)]);

        let idle = lobby.tick(300);
        assert!(idle.players.is_empty() && idle.removed.is_empty());
        assert_eq!(idle.tick, 3);
    }

    #[test]
    fn leaving_player_is_listed_once_in_removed() {
        let mut lobby = LobbyState::new(8, 8);
        let (a, id_a) = join(&mut lobby, "a");
        set(&mut lobby, a, 1, b"x");
        lobby.tick(1);
        let seat = Seat {
            key: a,
            id: id_a,
            holder: 0,
        };
        assert!(lobby.leave(seat).is_some());
        assert!(lobby.leave(seat).is_none(), "second leave is stale");
        assert_eq!(lobby.tick(2).removed, vec![id_a]);
        assert!(lobby.tick(3).removed.is_empty());
        assert!(lobby.is_empty());
    }

    #[test]
    fn stale_handle_does_not_reach_the_member_that_reuses_its_key() {
        let mut lobby = LobbyState::new(8, 8);
        let a = lobby.join(player("a"), ()).unwrap();
        lobby.leave(a);
        let b = lobby.join(player("b"), ()).unwrap();
        assert_eq!(a.key, b.key, "slab reuses the key");
        assert!(lobby.member(a).is_none());
        assert!(lobby.leave(a).is_none(), "a stale leave removes nobody");
        assert_eq!(lobby.member(b).map(|m| m.id), Some(b.id));
    }

    #[test]
    fn a_new_member_gets_a_keyframe_then_deltas() {
        let mut lobby = LobbyState::new(8, 8);
        let (a, _) = join(&mut lobby, "a");
        let member = member(&mut lobby, a);
        assert_eq!(member.phase(), Phase::Joining);
        assert_eq!(member.delivery(), Delivery::Keyframe);
        assert!(!member.delivered(Delivery::Keyframe, PushOutcome::Written));
        assert_eq!(member.delivery(), Delivery::Delta);
        assert!(!member.delivered(Delivery::Delta, PushOutcome::Queued));
        assert_eq!(
            member.delivery(),
            Delivery::Delta,
            "a queued delta is not lost"
        );
        assert!(!member.delivered(Delivery::Delta, PushOutcome::Written));
        assert_eq!(member.phase(), Phase::InSync);
    }

    #[test]
    fn a_delta_kept_out_by_an_unsent_snapshot_is_followed_by_a_keyframe_at_once() {
        let mut lobby = LobbyState::new(8, 8);
        let (a, _) = join(&mut lobby, "a");
        let member = member(&mut lobby, a);
        member.delivered(Delivery::Keyframe, PushOutcome::Queued);
        // The reader is slow: the keyframe still waits, and the next delta is kept out.
        assert!(
            member.delivered(Delivery::Delta, PushOutcome::Kept),
            "the delta alone would lack the waiting snapshot's changes: a keyframe now"
        );
        assert_eq!(member.phase(), Phase::Behind);
        assert_eq!(member.delivery(), Delivery::Keyframe);
        // The keyframe replaces the waiting snapshot: nothing is missing any more.
        assert!(!member.delivered(Delivery::Keyframe, PushOutcome::Replaced));
        assert_eq!(member.delivery(), Delivery::Delta);
    }

    #[test]
    fn a_refused_push_changes_nothing() {
        let mut lobby = LobbyState::new(8, 8);
        let (a, _) = join(&mut lobby, "a");
        let member = member(&mut lobby, a);
        assert!(!member.delivered(Delivery::Keyframe, PushOutcome::Refused));
        assert_eq!(member.phase(), Phase::Joining);
        member.delivered(Delivery::Keyframe, PushOutcome::Written);
        assert!(!member.delivered(Delivery::Delta, PushOutcome::Refused));
        assert_eq!(member.phase(), Phase::InSync);
    }

    #[test]
    fn players_and_spectators_are_limited_separately() {
        let mut lobby = LobbyState::new(1, 1);
        let spectator = |name: &str| Joiner {
            role: Role::Spectator,
            ..player(name)
        };
        join(&mut lobby, "a");
        assert_eq!(lobby.join(player("b"), ()), Err(JoinRefused::LobbyFull));
        let watcher = lobby.join(spectator("w"), ()).unwrap();
        assert_eq!(
            lobby.join(spectator("x"), ()),
            Err(JoinRefused::SpectatorsFull)
        );
        lobby.leave(watcher);
        lobby.join(spectator("x"), ()).unwrap();
        assert_eq!(lobby.join(player("b"), ()), Err(JoinRefused::LobbyFull));
    }

    #[test]
    fn each_player_spends_only_its_share_of_the_lobby_event_budget() {
        let mut lobby = LobbyState::new(8, 8);
        let flood = lobby.join(player("flood"), ()).unwrap();
        let calm = lobby.join(player("calm"), ()).unwrap();
        let start = Instant::now();
        // 2,000 bytes/s for two players: 1,000 each, with a second of burst.
        let charge = |lobby: &mut LobbyState<()>, seat, len, at: u64| {
            lobby.charge_event(seat, len, 2000, start + Duration::from_millis(at))
        };
        assert_eq!(charge(&mut lobby, flood, 600, 0), Ok(()));
        assert_eq!(
            charge(&mut lobby, flood, 400, 0),
            Ok(()),
            "a second of burst"
        );
        let wait = charge(&mut lobby, flood, 500, 0).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(500),
            "half a second until 500 bytes fit"
        );
        assert_eq!(
            charge(&mut lobby, calm, 1000, 0),
            Ok(()),
            "the flood spent only its share"
        );
        assert_eq!(charge(&mut lobby, flood, 500, 500), Ok(()), "refilled");
        // An event larger than a share still gets through on its own.
        assert_eq!(charge(&mut lobby, calm, 5000, 10_000), Ok(()));
    }

    #[test]
    fn an_away_seat_waits_expires_or_is_taken_back() {
        let mut lobby: LobbyState<&str> = LobbyState::new(8, 8);
        let start = Instant::now();
        let seat = lobby.join(player("ann"), "first").unwrap();
        assert!(lobby.set_away(seat, start + Duration::from_secs(10)));
        assert!(lobby.member(seat).unwrap().is_away());
        assert!(
            lobby
                .expired_away(start + Duration::from_secs(9))
                .is_empty()
        );
        assert_eq!(
            lobby.expired_away(start + Duration::from_secs(10)),
            vec![seat]
        );
        let (found, _) = lobby.seat_of_player(seat.id).unwrap();
        let (back, _, previous) = lobby.take_over(found, "second");
        assert_eq!(previous, Previous::Away);
        assert!(!lobby.member(back).unwrap().is_away());
        assert!(
            lobby
                .expired_away(start + Duration::from_secs(60))
                .is_empty()
        );
        assert!(
            !lobby.set_away(seat, start),
            "the old holder's handle is stale"
        );
    }

    #[test]
    fn a_moved_lobby_keeps_ids_states_and_ticks_and_its_seats_arrive_quietly() {
        let start = Instant::now();
        let mut old: LobbyState<&str> = LobbyState::new(8, 8);
        let ann = old.join(player("ann"), "a").unwrap();
        let bob = old.join(player("bob"), "b").unwrap();
        old.members_mut()
            .for_each(|(_, m)| m.set_state(3, data(b"s")));
        old.tick(1);
        assert!(old.set_away(bob, start + Duration::from_secs(4)));

        let seats = old.handoff_seats(start);
        let mut moved: LobbyState<&str> =
            LobbyState::moved_in(8, 8, old.tick_number(), old.next_player_id());
        for seat in seats {
            moved.adopt(seat, "gone", start, Duration::from_secs(10));
        }
        // Ann, connected when the lobby moved, is not shown away while she arrives.
        assert_eq!(moved.roster(), old.roster());
        assert_eq!(ids(&moved.keyframe(5)), ids(&old.keyframe(5)));
        assert_eq!(moved.tick(6).tick, old.tick_number() + 1);
        // Bob's grace goes on; Ann's starts now.
        let expired = moved.expired_away(start + Duration::from_secs(4));
        assert_eq!(expired.iter().map(|s| s.id).collect::<Vec<_>>(), [bob.id]);
        let (seat, _) = moved.seat_of_player(ann.id).unwrap();
        assert_eq!(seat.holder, ann.holder, "her resume token names it");
        assert_eq!(moved.take_over(seat, "new").2, Previous::Arriving);
        let (seat, _) = moved.seat_of_player(bob.id).unwrap();
        assert_eq!(moved.take_over(seat, "new").2, Previous::Away);
        let carol = moved.join(player("carol"), "c").unwrap();
        assert_eq!(carol.id, bob.id + 1, "ids go on from the old node's");
    }

    #[test]
    fn a_takeover_keeps_the_player_and_its_state_and_makes_the_old_handle_stale() {
        let mut lobby: LobbyState<&str> = LobbyState::new(8, 8);
        let ann = Joiner {
            identity: Some("user-1".into()),
            ..player("ann")
        };
        let old = lobby.join(ann, "first").unwrap();
        lobby.members_mut().for_each(|(_, m)| {
            m.set_state(1, data(b"x"));
            m.delivered(Delivery::Keyframe, PushOutcome::Written);
        });
        lobby.tick(1);

        let (seat, _) = lobby.seat_of("user-1").expect("the identity has a seat");
        assert_eq!(seat, old);
        assert!(lobby.seat_of("user-2").is_none());
        let (new, replaced, previous) = lobby.take_over(seat, "second");
        assert_eq!(previous, Previous::Connected);
        assert_eq!(replaced, "first");
        assert_eq!(
            (new.key, new.id),
            (old.key, old.id),
            "same seat, same player"
        );
        assert_ne!(new.holder, old.holder);

        assert!(
            lobby.leave(old).is_none(),
            "the replaced connection's leave is stale"
        );
        let member = lobby.member(new).expect("the new holder");
        assert_eq!(member.conn, "second");
        assert_eq!(
            member.delivery(),
            Delivery::Keyframe,
            "it starts with a keyframe"
        );
        assert_eq!(
            ids(&lobby.keyframe(2)),
            vec![(old.id, 1)],
            "its state stays"
        );
        assert!(lobby.tick(2).removed.is_empty(), "nobody left");
    }
}
