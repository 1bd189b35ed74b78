//! The task that owns one lobby: it applies members' commands to the sans-I/O state, ticks on
//! its [`TickSchedule`], encodes each snapshot once per codec and hands the same bytes to
//! every member's outbox. It never awaits a socket; slow members are the outbox's business.
//! What a member gets (delta or keyframe) is the state's decision; the actor reports what each
//! push did. It reaches its directory only through its [`Registration`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tickrelay_protocol::{
    Codec, ErrorCode, HANDOFF_VERSION, Handoff, HandoffSeat, Payload, PlayerId, Role,
    ServerMessage, close,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::history::{History, HistoryLimits};
use super::info::{LobbyInfo, TrafficCounts};
use super::input::InputSlot;
use super::schedule::{Fired, TickSchedule};
use super::state::{
    Delivery, JoinRefused, Joiner, LobbyState, MemberKey, MemberState, Previous, PushOutcome, Seat,
};
use crate::clock::unix_micros;
use crate::lease::Progress;
use crate::metrics::Metrics;
use crate::outbox::{IfUnsent, Outbox, PushError, Pushed};
use crate::resume::{self, ResumeKeys};

/// Bound of a lobby's command inbox. A full inbox makes senders wait, which backpressures the
/// sending connections' reads, never the tick.
pub(crate) const INBOX_CAPACITY: usize = 4096;
/// Commands applied per wake-up before the actor checks its tick timer again.
const COMMAND_BATCH: usize = 32;

/// What a connection asks for when it joins.
pub(crate) struct JoinRequest {
    pub(crate) lobby: String,
    pub(crate) joiner: Joiner,
    pub(crate) codec: Codec,
    pub(crate) outbox: Arc<Outbox>,
    /// Where the connection puts its states for the lobby to take at tick time.
    pub(crate) input: Arc<InputSlot>,
    /// Take back a seat (from a verified resume token) instead of joining afresh.
    pub(crate) resume: Option<ResumeRequest>,
}

/// A seat to take back, as a verified resume token names it, and the last reliable offset the
/// client received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResumeRequest {
    pub(crate) instance: u64,
    pub(crate) player_id: PlayerId,
    pub(crate) holder: u32,
    pub(crate) offset: u64,
}

/// A successful join: where to send this player's commands from now on.
pub(crate) struct JoinAccepted {
    pub(crate) lobby: LobbyHandle,
    pub(crate) seat: Seat,
    /// The seat's role (a resumed seat keeps the one it had).
    pub(crate) role: Role,
}

/// A refused join: the `error` the client gets.
#[derive(Debug)]
pub(crate) struct JoinRefusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// With `overloaded`: when to try again.
    pub(crate) retry_after: Option<Duration>,
    /// With `wrong_node`: where the lobby runs.
    pub(crate) url: Option<String>,
}

impl JoinRefusal {
    pub(crate) fn new(code: ErrorCode, message: String) -> Self {
        Self {
            code,
            message,
            retry_after: None,
            url: None,
        }
    }

    /// `wrong_node`: the lobby runs on the node at `url`.
    pub(crate) fn wrong_node(url: String, message: String) -> Self {
        Self {
            url: Some(url),
            ..Self::new(ErrorCode::WrongNode, message)
        }
    }

    /// `seat_expired` for a resume of a lobby that does not run anywhere any more.
    pub(crate) fn lobby_gone(lobby: &str) -> Self {
        Self::new(
            ErrorCode::SeatExpired,
            format!("lobby {lobby:?} is gone (its seats with it): join afresh"),
        )
    }

    /// `overloaded`, to be tried again after `wait`.
    pub(crate) fn retry(message: String, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(ErrorCode::Overloaded, message)
        }
    }
}

/// What a connection asks of its lobby, besides states (those go through its [`InputSlot`]).
pub(crate) enum Command {
    /// Boxed: joins are rare, and the largest variant sets the size of every command queued
    /// and of each lobby's batch buffer.
    Join {
        request: Box<JoinRequest>,
        reply: oneshot::Sender<Result<JoinAccepted, JoinRefusal>>,
    },
    Event {
        seat: Seat,
        data: Payload,
    },
    Leave {
        seat: Seat,
    },
    /// The connection dropped without `leave`: the seat waits for a resume (or leaves at once
    /// when resume is off).
    Away {
        seat: Seat,
    },
    /// A drain moves the lobby to another node: the lobby freezes (no tick, no command) and
    /// answers with what the next owner needs, then waits for the decision.
    Move {
        reply: oneshot::Sender<Frozen>,
    },
}

/// A lobby frozen for its move: everything it did is in `handoff`. Send `decision` the URL of
/// the node that took it over (members are redirected there, the lobby stops), or `None` to
/// go on here.
pub(crate) struct Frozen {
    pub(crate) handoff: Handoff,
    pub(crate) members: usize,
    pub(crate) decision: oneshot::Sender<Option<String>>,
    /// Ends once the decision is carried out (the redirects queued before any shutdown's
    /// close can win).
    pub(crate) done: oneshot::Receiver<()>,
}

/// A connection's way to its lobby.
#[derive(Clone)]
pub(crate) struct LobbyHandle {
    commands: mpsc::Sender<Command>,
}

/// The lobby stopped (it was retired or the server is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LobbyStopped;

impl LobbyHandle {
    /// Sends a command, waiting while the lobby's inbox is full.
    pub(crate) async fn send(&self, command: Command) -> Result<(), LobbyStopped> {
        self.commands.send(command).await.map_err(|_| LobbyStopped)
    }
}

/// What the actor needs of the directory that created it. The directory implements it; the
/// actor never sees the directory's internals.
pub(crate) trait Registration: Send + Sync + 'static {
    /// A join routed to this lobby has been processed (accepted or refused).
    fn join_processed(&self);
    /// The lobby is empty: remove it from the directory unless a join is on its way. Returns
    /// true when the actor must stop.
    fn try_retire(&self) -> bool;
    /// Whether the lobby may still tick at `now` (false once a fleet lease has run out).
    fn may_run(&self, now: Instant) -> bool;
    /// Where the lobby is, after each tick (a fleet keeps it for rebuilding the lobby
    /// elsewhere should this node die).
    fn report(&self, progress: Progress);
    /// The actor stopped, for whatever reason: the lobby is no longer in the directory.
    fn stopped(&self);
}

/// Everything a lobby's actor needs from the server, fixed at its creation.
#[derive(Clone)]
pub(crate) struct LobbySettings {
    pub(crate) tick_hz: u32,
    /// `1 s / tick_hz` (`Config::tick_period`).
    pub(crate) tick_period: Duration,
    /// Players per lobby (`--max-lobby-size`).
    pub(crate) max_members: usize,
    pub(crate) max_spectators: usize,
    /// Most state bytes in one keyframe (`--max-snapshot-size`).
    pub(crate) max_snapshot_bytes: usize,
    /// Event bytes per second per lobby, shared by its players (`--max-lobby-event-bytes`).
    pub(crate) max_lobby_event_bytes: usize,
    /// Seat resume, unless `--resume-grace 0` turned it off.
    pub(crate) resume: Option<ResumeSettings>,
    /// How long a fresh join counts as recent (`Progress::recent`, `LobbyInfo`): the life of
    /// a matchmaking promise, which such a join most likely used.
    pub(crate) join_window: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
}

/// How dropped seats wait to be taken back.
#[derive(Clone)]
pub(crate) struct ResumeSettings {
    /// How long an away seat waits (`--resume-grace`).
    pub(crate) grace: Duration,
    pub(crate) history: HistoryLimits,
    pub(crate) keys: Arc<ResumeKeys>,
    /// Most of a replay queued for one resuming connection (what fits its reliable queue);
    /// older messages count as lost.
    pub(crate) max_replay_messages: usize,
    pub(crate) max_replay_bytes: usize,
}

/// What the lobby keeps per member besides its game state: how to reach it.
struct Connection {
    outbox: Arc<Outbox>,
    /// The member's newest state, put there by its reader, taken at each tick.
    input: Arc<InputSlot>,
    codec: Codec,
}

impl Connection {
    /// What stands for the connection of a seat whose member has not arrived yet (a lobby
    /// moved here): closed, so nothing is ever queued for it.
    fn arriving() -> Self {
        let codec = Codec::MessagePack;
        let outbox = Outbox::new(0, 0, codec.frame_kind(), None, CancellationToken::new());
        outbox.close(close::MOVED);
        Self {
            outbox: Arc::new(outbox),
            input: Arc::default(),
            codec,
        }
    }

    /// Queues an `error` for this member: the lobby refused something it sent. (Counting it
    /// is the caller's: the tick counts its refusals once per tick.)
    fn send_error(&self, code: ErrorCode, message: String, retry_after: Option<Duration>) {
        let error = ServerMessage::Error {
            code,
            message,
            retry_after_ms: retry_after.map(|wait| wait.as_millis().max(1) as u64),
            url: None,
        };
        let _ = self.outbox.push_reliable(self.codec.encode_server(&error));
    }
}

/// A lobby rebuilt after its node died seats each player again as it comes back with a
/// resume token of the lobby's instance, until `until` (the resume grace).
#[derive(Debug, Clone, Copy)]
struct Reseat {
    until: Instant,
    /// The offset the dead node last reported (later messages are unknown).
    last_known_offset: u64,
}

/// Offsets a rebuilt lobby skips: its dead node may have used them after its last report
/// (a second at most), and none may mean two messages.
const OFFSET_MARGIN: u64 = 1 << 16;

/// Where a batch of commands stands after a `Move` in it.
enum AfterFreeze {
    /// No move, or the lobby goes on here.
    Running,
    /// Moved to the node at this URL: later commands are answered for it.
    Moved(String),
    /// The lease was lost meanwhile: the lobby stops.
    LeaseLost,
}

/// A new lobby's command channel: the handle connections send on, the actor's inbox.
pub(crate) fn channel() -> (LobbyHandle, mpsc::Receiver<Command>) {
    let (commands, inbox) = mpsc::channel(INBOX_CAPACITY);
    (LobbyHandle { commands }, inbox)
}

pub(crate) struct Actor {
    settings: LobbySettings,
    info: Arc<LobbyInfo>,
    registration: Box<dyn Registration>,
    handle: LobbyHandle,
    state: LobbyState<Connection>,
    /// Every reliable message broadcast, with its offset, for members that resume.
    history: History,
    /// This lobby among all that ever had its name: resume tokens name it.
    instance: u64,
    /// Rebuilt after its node died (`Handoff::recovered`): see [`Reseat`].
    reseat: Option<Reseat>,
    /// Traffic since the last tick, added to the lobby's shared counters once per tick.
    traffic: TrafficCounts,
    /// When players joined afresh within the last `join_window`, oldest first.
    recent_joins: VecDeque<Instant>,
}

impl Actor {
    /// The actor of a new lobby, or of one `moved` here from another node; `handle` is its
    /// own channel's (it hands clones to joiners).
    pub(crate) fn new(
        settings: LobbySettings,
        info: Arc<LobbyInfo>,
        registration: Box<dyn Registration>,
        handle: LobbyHandle,
        moved: Option<Handoff>,
    ) -> Self {
        let limits = settings.resume.as_ref().map_or(
            HistoryLimits {
                messages: 0,
                bytes: 0,
                age: Duration::ZERO,
            },
            |resume| resume.history,
        );
        let (max_players, max_spectators) = (settings.max_members, settings.max_spectators);
        let (state, history, instance, reseat) = match moved {
            None => (
                LobbyState::new(max_players, max_spectators),
                History::new(limits),
                resume::new_instance(),
                None,
            ),
            Some(handoff) => {
                let now = tokio::time::Instant::now().into_std();
                let grace = settings.resume.as_ref().map_or(Duration::ZERO, |r| r.grace);
                let mut state = LobbyState::moved_in(
                    max_players,
                    max_spectators,
                    handoff.tick,
                    handoff.next_player_id,
                );
                for seat in handoff.seats {
                    state.adopt(seat, Connection::arriving(), now, grace);
                }
                // A rebuilt lobby's last messages may have had offsets past the last one its
                // node reported: new ones start past any of them.
                let offset = handoff.offset + if handoff.recovered { OFFSET_MARGIN } else { 0 };
                let history = History::moved_in(limits, offset, handoff.history, now);
                info.set_roster(state.roster());
                let reseat = handoff.recovered.then_some(Reseat {
                    until: now + grace,
                    last_known_offset: handoff.offset,
                });
                (state, history, handoff.instance, reseat)
            }
        };
        Self {
            state,
            history,
            instance,
            reseat,
            settings,
            info,
            recent_joins: VecDeque::new(),
            registration,
            handle,
            traffic: TrafficCounts::default(),
        }
    }

    pub(crate) async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        // Lobbies are created at arbitrary instants, so their tick phases spread over the
        // period by themselves instead of all lobbies ticking at once.
        // tokio's clock, the one the timer runs on (paused time in tests included).
        let now = || tokio::time::Instant::now().into_std();
        let mut schedule = TickSchedule::new(now(), self.settings.tick_period);
        let timer = sleep_until(schedule.due().into());
        tokio::pin!(timer);
        // Grows on demand: most lobbies receive a handful of commands per wake-up.
        let mut commands = Vec::new();
        let shutdown = self.settings.shutdown.clone();
        debug!(lobby = %self.info.name, "lobby started");
        loop {
            tokio::select! {
                biased;
                () = &mut timer => {
                    if !self.registration.may_run(now()) {
                        self.lease_lost();
                        break;
                    }
                    let fired = schedule.fire(now());
                    self.expire_away(now());
                    self.on_tick(fired);
                    timer.as_mut().reset(fired.next_due.into());
                    if self.may_retire(now()) && self.registration.try_retire() {
                        break;
                    }
                }
                received = inbox.recv_many(&mut commands, COMMAND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    // Nothing is relayed past the lease either, not only ticks.
                    if !self.registration.may_run(now()) {
                        self.lease_lost();
                        break;
                    }
                    let mut after = AfterFreeze::Running;
                    for command in commands.drain(..) {
                        match (command, &after) {
                            (Command::Move { reply }, AfterFreeze::Running) => {
                                after = match self.freeze(reply).await {
                                    Some(url) => AfterFreeze::Moved(url),
                                    // Lost while frozen (or its move in doubt): nothing more.
                                    None if !self.registration.may_run(now()) => {
                                        AfterFreeze::LeaseLost
                                    }
                                    None => AfterFreeze::Running,
                                };
                            }
                            (command, AfterFreeze::Running) => self.apply(command),
                            (command, AfterFreeze::Moved(url)) => self.refuse_moved(command, url),
                            (_, AfterFreeze::LeaseLost) => {}
                        }
                    }
                    match after {
                        AfterFreeze::Moved(url) => {
                            // Out of the directory first, so no new join is sent here; then
                            // what is still on its way gets the new node.
                            self.registration.stopped();
                            inbox.close();
                            while let Some(command) = inbox.recv().await {
                                self.refuse_moved(command, &url);
                            }
                            break;
                        }
                        AfterFreeze::LeaseLost => {
                            self.lease_lost();
                            break;
                        }
                        AfterFreeze::Running => {}
                    }
                    if self.may_retire(now()) && self.registration.try_retire() {
                        break;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        self.registration.stopped();
        self.settings.metrics.lobbies.dec();
        debug!(lobby = %self.info.name, ticks = self.state.tick_number(), "lobby stopped");
    }

    /// The fleet lease ran out (this node was cut off from Redis or paused for longer than
    /// it): another node may take the lobby at any moment, so it stops ticking here now and
    /// sends its members to route again. Their seats stay resumable where the route points.
    fn lease_lost(&mut self) {
        warn!(lobby = %self.info.name, members = self.state.members().count(), "lease ran out: lobby stopped here, members sent to route again");
        self.settings.metrics.fleet_lease("expired");
        // Away seats' outboxes are closed already; closing again changes nothing.
        for (_, member) in self.state.members() {
            member.conn.outbox.close(close::LEASE_LOST);
        }
    }

    /// Whether the lobby, empty, may leave the directory: not while a rebuilt lobby still
    /// waits for its players (retiring would give up what it was rebuilt from).
    fn may_retire(&self, now: Instant) -> bool {
        self.state.is_empty() && self.reseat.is_none_or(|reseat| now >= reseat.until)
    }

    /// Hands everything the lobby did so far to the drain, and waits (not ticking, applying
    /// nothing: all of it would be missing from the handoff) for where it went. Moved: every
    /// connected member is sent `redirect` with its resume token, then closed 4008, and the
    /// URL is returned; otherwise the lobby goes on here (its schedule counts the ticks the
    /// pause cost).
    async fn freeze(&mut self, reply: oneshot::Sender<Frozen>) -> Option<String> {
        // States sent since the last tick move with the lobby.
        let mut out = FanOut::default();
        take_inputs(&mut self.state, self.settings.max_snapshot_bytes, &mut out);
        self.count_inputs(&out);
        let now = tokio::time::Instant::now().into_std();
        let handoff = Handoff {
            v: HANDOFF_VERSION,
            lobby: self.info.name.clone(),
            instance: self.instance,
            tick: self.state.tick_number(),
            next_player_id: self.state.next_player_id(),
            offset: self.history.offset(),
            seats: self.state.handoff_seats(now),
            history: self.history.handoff(now),
            recovered: false,
        };
        let (decision, decided) = oneshot::channel();
        // Dropped when this returns: the decision is carried out.
        let (_done, done) = oneshot::channel::<()>();
        let frozen = Frozen {
            handoff,
            members: self.state.members().count(),
            decision,
            done,
        };
        reply.send(frozen).ok()?;
        let url = decided.await.ok().flatten()?;
        let now_secs = unix_micros() / 1_000_000;
        for (key, member) in self.state.members() {
            if member.is_away() {
                continue;
            }
            let resume = self.token(member, member.seat(key), now_secs);
            let redirect = ServerMessage::Redirect {
                url: url.clone(),
                resume,
            };
            let _ = member
                .conn
                .outbox
                .push_reliable(member.conn.codec.encode_server(&redirect));
            member.conn.outbox.close(close::MOVED);
        }
        self.settings.metrics.fleet_lease("moved");
        debug!(lobby = %self.info.name, %url, "lobby moved");
        Some(url)
    }

    /// A command that came after the lobby froze for its move: a join is sent to the new
    /// node; an event is dropped and counted (its sender was redirected).
    fn refuse_moved(&self, command: Command, url: &str) {
        match command {
            Command::Join { reply, .. } => {
                self.registration.join_processed();
                let name = &self.info.name;
                let _ = reply.send(Err(JoinRefusal::wrong_node(
                    url.to_owned(),
                    format!("lobby {name:?} moved to another node: join there"),
                )));
            }
            Command::Event { .. } => {
                self.settings.metrics.fleet_events_dropped_moving.inc();
            }
            Command::Move { .. } | Command::Leave { .. } | Command::Away { .. } => {}
        }
    }

    /// Away seats nobody took back in time leave; old history goes.
    fn expire_away(&mut self, now: Instant) {
        for seat in self.state.expired_away(now) {
            self.settings.metrics.seats_expired.inc();
            self.leave(seat);
        }
        self.history.trim(now);
    }

    fn on_tick(&mut self, fired: Fired) {
        let started = Instant::now();
        let metrics = &self.settings.metrics;
        metrics.tick_lateness.observe(fired.lateness.as_secs_f64());
        if fired.skipped > 0 {
            metrics.ticks_missed.inc_by(fired.skipped);
        }
        let out = fan_out(
            &mut self.state,
            unix_micros(),
            self.settings.max_snapshot_bytes,
        );
        self.count_inputs(&out);
        let metrics = &self.settings.metrics;
        metrics.ticks.inc();
        metrics.snapshots_sent.inc_by(out.sent);
        metrics.snapshots_written_direct.inc_by(out.written);
        metrics.snapshots_coalesced.inc_by(out.coalesced);
        metrics.keyframes_sent.inc_by(out.keyframes);
        metrics.messages_out.inc_by(out.written);
        metrics.bytes_out.inc_by(out.written_bytes);
        self.traffic.ticks += 1;
        self.traffic.snapshots_out += out.sent;
        self.traffic.messages_out += out.sent;
        self.traffic.bytes_out += out.bytes;
        let traffic = std::mem::take(&mut self.traffic);
        self.info.traffic.add(&traffic);
        let window_start = tokio::time::Instant::now()
            .into_std()
            .checked_sub(self.settings.join_window);
        while self
            .recent_joins
            .front()
            .is_some_and(|&joined| window_start.is_some_and(|start| joined < start))
        {
            self.recent_joins.pop_front();
        }
        let seats = u32::try_from(self.state.player_count()).unwrap_or(u32::MAX);
        let recent = u32::try_from(self.recent_joins.len()).unwrap_or(u32::MAX);
        self.info.set_seats(seats, recent);
        self.registration.report(Progress {
            instance: self.instance,
            next_player_id: self.state.next_player_id(),
            offset: self.history.offset(),
            tick: self.state.tick_number(),
            seats,
            recent,
        });
        metrics
            .tick_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts what [`take_inputs`] took in.
    fn count_inputs(&mut self, out: &FanOut) {
        let metrics = &self.settings.metrics;
        if out.over_budget > 0 {
            metrics
                .errors_sent
                .get_or_create(&[("code", ErrorCode::StateTooLarge.as_str())])
                .inc_by(out.over_budget);
        }
        metrics.messages_in.inc_by(out.messages_in);
        metrics.bytes_in.inc_by(out.bytes_in);
        self.traffic.states_in += out.states_in;
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Join { request, reply } => {
                self.registration.join_processed();
                let result = self.join(*request);
                // The connection may have gone while waiting; its outbox is then closed anyway.
                let _ = reply.send(result);
            }
            Command::Event { seat, data } => {
                // Spectators' events are refused by their session already.
                if !self
                    .state
                    .member(seat)
                    .is_some_and(|m| m.role == Role::Player)
                {
                    return;
                }
                let now = tokio::time::Instant::now().into_std();
                let budget = self.settings.max_lobby_event_bytes;
                if let Err(wait) = self.state.charge_event(seat, data.len(), budget, now) {
                    self.refuse(
                        seat,
                        ErrorCode::Overloaded,
                        format!("the lobby's event budget ({budget} bytes/s) is spent; dropped"),
                        Some(wait),
                    );
                    return;
                }
                self.traffic.events_in += 1;
                let from = seat.id;
                self.broadcast(None, None, data.len(), |offset| ServerMessage::Event {
                    from,
                    data,
                    offset: Some(offset),
                });
            }
            Command::Leave { seat } => self.leave(seat),
            Command::Away { seat } => self.away(seat),
            // Taken by the run loop, which may await the decision.
            Command::Move { .. } => {}
        }
    }

    fn leave(&mut self, seat: Seat) {
        if let Some(member) = self.state.leave(seat) {
            self.count_input(&member.conn);
            let id = seat.id;
            self.broadcast(None, None, 0, |offset| ServerMessage::MemberLeft {
                id,
                offset: Some(offset),
            });
            self.info.set_roster(self.state.roster());
        }
    }

    /// What a departing connection received since the last tick.
    fn count_input(&self, conn: &Connection) {
        let counts = conn.input.take_counts();
        self.settings.metrics.messages_in.inc_by(counts.messages);
        self.settings.metrics.bytes_in.inc_by(counts.bytes);
    }

    fn away(&mut self, seat: Seat) {
        let Some(grace) = self.settings.resume.as_ref().map(|r| r.grace) else {
            return self.leave(seat);
        };
        let until = tokio::time::Instant::now().into_std() + grace;
        if !self.state.set_away(seat, until) {
            return;
        }
        if let Some(member) = self.state.member(seat) {
            self.count_input(&member.conn);
        }
        let id = seat.id;
        self.broadcast(Some(seat.key), Some(id), 0, |offset| {
            ServerMessage::MemberAway { id, offset }
        });
        self.info.set_roster(self.state.roster());
    }

    fn join(&mut self, request: JoinRequest) -> Result<JoinAccepted, JoinRefusal> {
        let JoinRequest {
            joiner,
            codec,
            outbox,
            input,
            resume,
            ..
        } = request;
        let connection = Connection {
            outbox: outbox.clone(),
            input,
            codec,
        };
        if let Some(resume) = resume {
            return self.resume(resume, joiner, connection);
        }
        // One seat per identity: a newer connection takes it over, unnoticed by the others
        // when the role is the same; with another role the old seat leaves first (once the
        // new role is sure to have room, so the identity never ends up with no seat).
        let held = joiner
            .identity
            .as_deref()
            .and_then(|identity| self.state.seat_of(identity))
            .map(|(seat, member)| (seat, member.role));
        let takeover = match held {
            Some((seat, role)) if role == joiner.role => Some(seat),
            Some((seat, _)) => {
                self.state
                    .has_room(joiner.role)
                    .map_err(|refused| self.refusal(refused))?;
                if let Some(member) = self.state.member(seat)
                    && !member.is_away()
                {
                    self.replaced(&member.conn);
                }
                self.leave(seat);
                None
            }
            None => None,
        };
        let seat = match takeover {
            Some(seat) => {
                let (seat, old, previous) = self.take_over(seat, connection);
                self.returned(seat, &old, previous);
                seat
            }
            None => {
                let (name, role) = (joiner.name.clone(), joiner.role);
                let seat = self
                    .state
                    .join(joiner, connection)
                    .map_err(|refused| self.refusal(refused))?;
                if role == Role::Player {
                    self.recent_joins
                        .push_back(tokio::time::Instant::now().into_std());
                }
                // Before the welcome, whose offset then covers it.
                self.joined(seat, name, role);
                seat
            }
        };
        self.info.set_roster(self.state.roster());
        self.welcome(seat, &outbox, codec, None);
        Ok(self.accepted(seat))
    }

    /// Takes a seat back for a resuming connection: the same player, `welcome` with
    /// `resumed`, then the reliable messages it missed, then (at the next tick) a keyframe.
    /// The connection that held the seat, if it still looks open (half-open), is closed 4006.
    fn resume(
        &mut self,
        resume: ResumeRequest,
        holder: Joiner,
        connection: Connection,
    ) -> Result<JoinAccepted, JoinRefusal> {
        let expired = || {
            Err(JoinRefusal::new(
                ErrorCode::SeatExpired,
                "this seat cannot be resumed (expired, used, or the lobby was recreated): \
                 join afresh"
                    .into(),
            ))
        };
        // Refusals are counted by the session, which sees every `seat_expired`.
        if resume.instance != self.instance {
            return expired();
        }
        // A lobby rebuilt after its node died seats each player again as it comes back.
        let now = tokio::time::Instant::now().into_std();
        let reseat = self
            .reseat
            .filter(|reseat| now < reseat.until)
            .filter(|_| self.state.seat_of_player(resume.player_id).is_none());
        let reseated = reseat.is_some();
        if reseated {
            let grace = self
                .settings
                .resume
                .as_ref()
                .map_or(Duration::ZERO, |r| r.grace);
            let seat = HandoffSeat {
                id: resume.player_id,
                name: holder.name,
                identity: holder.identity,
                role: holder.role,
                holder: resume.holder,
                state: None,
                away_ms: None,
            };
            self.state.adopt(seat, Connection::arriving(), now, grace);
        }
        let Some((seat, _)) = self
            .state
            .seat_of_player(resume.player_id)
            .filter(|(seat, _)| seat.holder == resume.holder)
        else {
            return expired();
        };
        let (outbox, codec) = (connection.outbox.clone(), connection.codec);
        let (seat, old, previous) = self.take_over(seat, connection);
        if reseated && let Some(member) = self.state.member(seat) {
            // Back in the rebuilt lobby: the members already there see it join.
            let (name, role) = (member.name.clone(), member.role);
            self.joined(seat, name, role);
        }
        // What it missed, before `member_back` takes an offset (and maybe a history slot).
        let replay = self.history.since(resume.offset, seat.id);
        // A rebuilt lobby has no history: what its dead node sent after the member's offset
        // is lost, as far as its last report tells.
        let mut lost = match reseat {
            Some(reseat) => reseat.last_known_offset.saturating_sub(resume.offset),
            None => replay.lost,
        };
        // The welcome's offset is where the replay starts: the replayed messages raise it,
        // so a client that drops again mid-replay resumes from what it really got.
        let from = resume.offset.min(self.history.offset());
        let mut frames: Vec<Bytes> = replay
            .messages
            .iter()
            .map(|message| codec.encode_server(message))
            .collect();
        // Only the newest of a long replay fit the connection's reliable queue; the older
        // ones are reported as lost rather than overflowing it (4002).
        if let Some(resume) = &self.settings.resume {
            let mut bytes = 0;
            let keep = frames
                .iter()
                .rev()
                .take(resume.max_replay_messages)
                .take_while(|frame| {
                    bytes += frame.len();
                    bytes <= resume.max_replay_bytes
                })
                .count();
            let dropped = frames.len() - keep;
            frames.drain(..dropped);
            lost += dropped as u64;
        }
        self.returned(seat, &old, previous);
        self.info.set_roster(self.state.roster());
        self.welcome(seat, &outbox, codec, Some((from, lost)));
        let (mut sent, mut bytes) = (0, 0);
        for frame in frames {
            let len = frame.len() as u64;
            if outbox.push_reliable(frame).is_ok() {
                sent += 1;
                bytes += len;
            }
        }
        self.traffic.messages_out += sent;
        self.traffic.bytes_out += bytes;
        self.settings.metrics.resume(if lost == 0 {
            "resumed"
        } else {
            "resumed_lossy"
        });
        Ok(self.accepted(seat))
    }

    /// [`LobbyState::take_over`], carrying over the state the old connection received but
    /// no tick took yet, so a quick reconnect loses nothing it sent.
    fn take_over(&mut self, seat: Seat, connection: Connection) -> (Seat, Connection, Previous) {
        let input = connection.input.clone();
        let (seat, old, previous) = self.state.take_over(seat, connection);
        let taken = old.input.take();
        if let Some((seq, data)) = taken.state {
            input.hand_over(seq, data);
        }
        self.settings
            .metrics
            .messages_in
            .inc_by(taken.counts.messages);
        self.settings.metrics.bytes_in.inc_by(taken.counts.bytes);
        (seat, old, previous)
    }

    /// After a takeover: the connection that held the seat is closed 4006 if it still looked
    /// open; the others hear `member_back` if they were told it was away (a seat arriving
    /// from another node was never announced away).
    fn returned(&mut self, seat: Seat, old: &Connection, previous: Previous) {
        match previous {
            Previous::Connected => self.replaced(old),
            Previous::Away => self.back(seat),
            Previous::Arriving => {}
        }
    }

    fn accepted(&self, seat: Seat) -> JoinAccepted {
        JoinAccepted {
            lobby: self.handle.clone(),
            seat,
            role: self.state.member(seat).map_or(Role::Player, |m| m.role),
        }
    }

    /// Tells the others that `seat` joined.
    fn joined(&mut self, seat: Seat, name: String, role: Role) {
        let id = seat.id;
        self.broadcast(Some(seat.key), Some(id), 0, |offset| {
            ServerMessage::MemberJoined {
                id,
                name,
                role,
                offset: Some(offset),
            }
        });
    }

    /// Tells the others that an away seat is taken again.
    fn back(&mut self, seat: Seat) {
        let id = seat.id;
        self.broadcast(Some(seat.key), Some(id), 0, |offset| {
            ServerMessage::MemberBack { id, offset }
        });
    }

    /// Queues `welcome` for the connection now holding `seat`, with a fresh resume token;
    /// `resumed` is the replay's start offset and what it lost. Queued before any snapshot
    /// can be, so `welcome` is always the first message.
    fn welcome(&mut self, seat: Seat, outbox: &Outbox, codec: Codec, resumed: Option<(u64, u64)>) {
        let name = &self.info.name;
        let resume = self
            .state
            .member(seat)
            .and_then(|member| self.token(member, seat, unix_micros() / 1_000_000));
        let welcome = ServerMessage::Welcome {
            player_id: seat.id,
            lobby: name.clone(),
            tick_hz: self.settings.tick_hz,
            members: self.state.roster(),
            offset: resumed.map_or(self.history.offset(), |(from, _)| from),
            resume,
            resumed: resumed.is_some(),
            lost: resumed.map_or(0, |(_, lost)| lost),
        };
        let frame = codec.encode_server(&welcome);
        let len = frame.len() as u64;
        if outbox.push_reliable(frame).is_ok() {
            self.traffic.messages_out += 1;
            self.traffic.bytes_out += len;
        }
    }

    /// A resume token for `member`, holding `seat` (none when resume is off).
    fn token(&self, member: &MemberState<Connection>, seat: Seat, now_secs: u64) -> Option<String> {
        let resume = self.settings.resume.as_ref()?;
        let claims = resume::SeatClaims {
            lobby: &self.info.name,
            instance: self.instance,
            player_id: seat.id,
            holder: seat.holder,
            name: &member.name,
            role: member.role,
            identity: member.identity.as_deref(),
        };
        Some(resume.keys.issue(claims, now_secs))
    }

    /// Sends one member an `error` (the lobby refused something it sent), counted.
    fn refuse(&self, seat: Seat, code: ErrorCode, message: String, retry_after: Option<Duration>) {
        let Some(member) = self.state.member(seat) else {
            return;
        };
        self.settings.metrics.error_sent(code.as_str());
        member.conn.send_error(code, message, retry_after);
    }

    /// Closes a connection whose seat a newer connection of the same identity took.
    fn replaced(&self, old: &Connection) {
        old.outbox.close(close::REPLACED);
        self.settings.metrics.seats_replaced.inc();
    }

    fn refusal(&self, refused: JoinRefused) -> JoinRefusal {
        let (what, max) = match refused {
            JoinRefused::LobbyFull => ("players", self.settings.max_members),
            JoinRefused::SpectatorsFull => ("spectators", self.settings.max_spectators),
        };
        JoinRefusal::new(
            ErrorCode::LobbyFull,
            format!(
                "lobby {:?} already has its maximum of {max} {what}",
                self.info.name
            ),
        )
    }

    /// Gives the message `make` builds the lobby's next reliable offset, keeps it in the
    /// history (`subject`: the member it must not be replayed to; `size`: what it costs to
    /// keep, beyond a fixed overhead), and queues it for every connected member except `skip`,
    /// encoded once per codec. A member whose queue overflows is closed by its outbox (4002)
    /// and leaves (or goes away) via its reader.
    fn broadcast(
        &mut self,
        skip: Option<MemberKey>,
        subject: Option<PlayerId>,
        size: usize,
        make: impl FnOnce(u64) -> ServerMessage,
    ) {
        /// What keeping any message costs besides its payload.
        const ENTRY_OVERHEAD: usize = 64;
        let now = tokio::time::Instant::now().into_std();
        let message = self
            .history
            .push(now, subject, ENTRY_OVERHEAD + size, make)
            .clone();
        let mut frames = PerCodec::new(message);
        let (mut sent, mut bytes) = (0, 0);
        for (key, member) in self.state.members() {
            if Some(key) != skip && !member.is_away() {
                let frame = frames.get(member.conn.codec);
                let len = frame.len() as u64;
                if member.conn.outbox.push_reliable(frame).is_ok() {
                    sent += 1;
                    bytes += len;
                }
            }
        }
        self.traffic.messages_out += sent;
        self.traffic.bytes_out += bytes;
    }
}

/// What one tick took in and handed out.
#[derive(Debug, Default, Clone, Copy)]
struct FanOut {
    /// States members sent since the previous tick (superseded ones included).
    states_in: u64,
    /// Messages of any kind members' connections received since the previous tick, and
    /// their bytes.
    messages_in: u64,
    bytes_in: u64,
    /// Members that were handed this tick's snapshot (written directly or queued).
    sent: u64,
    /// Of those, written straight into the socket by the tick, and their bytes.
    written: u64,
    written_bytes: u64,
    /// Unsent snapshots replaced by this tick's (the reader was slow).
    coalesced: u64,
    /// Members handed a keyframe.
    keyframes: u64,
    /// Bytes of the snapshots handed out.
    bytes: u64,
    /// States refused because the lobby's keyframe would outgrow `--max-snapshot-size`.
    over_budget: u64,
}

impl FanOut {
    /// Hands `frame` (this tick's `delivery`) to the member's outbox, records what happened in
    /// the counts and in the member's state, and returns whether the member must get the
    /// keyframe at once (see `MemberState::delivered`). A keyframe replaces a waiting snapshot;
    /// a delta never does.
    fn deliver(
        &mut self,
        member: &mut MemberState<Connection>,
        delivery: Delivery,
        frame: Bytes,
    ) -> bool {
        let len = frame.len() as u64;
        let if_unsent = match delivery {
            Delivery::Keyframe => IfUnsent::Replace,
            Delivery::Delta => IfUnsent::Keep,
        };
        let outcome = outcome(member.conn.outbox.push_snapshot(frame, if_unsent));
        self.record(outcome, len);
        self.keyframes += u64::from(
            delivery == Delivery::Keyframe
                && !matches!(outcome, PushOutcome::Refused | PushOutcome::Kept),
        );
        member.delivered(delivery, outcome)
    }

    fn record(&mut self, outcome: PushOutcome, len: u64) {
        match outcome {
            PushOutcome::Refused | PushOutcome::Kept => return,
            PushOutcome::Written => {
                self.written += 1;
                self.written_bytes += len;
            }
            PushOutcome::Replaced => self.coalesced += 1,
            PushOutcome::Queued => {}
        }
        self.sent += 1;
        self.bytes += len;
    }
}

/// The outbox's answer in the state's vocabulary.
fn outcome(pushed: Result<Pushed, PushError>) -> PushOutcome {
    match pushed {
        Ok(Pushed::Written) => PushOutcome::Written,
        Ok(Pushed::Queued) => PushOutcome::Queued,
        Ok(Pushed::Replaced) => PushOutcome::Replaced,
        Ok(Pushed::Kept) => PushOutcome::Kept,
        // Closing: its reader sends `Leave` shortly.
        Err(PushError::Closed | PushError::Overflow) => PushOutcome::Refused,
    }
}

/// Takes each member's newest state from its input slot into the lobby (refusing one that
/// would make the keyframe's states exceed `max_snapshot_bytes`), counting what came in.
fn take_inputs(state: &mut LobbyState<Connection>, max_snapshot_bytes: usize, out: &mut FanOut) {
    let mut state_bytes = state.state_bytes();
    for (_, member) in state.members_mut() {
        let taken = member.conn.input.take();
        if let Some((seq, data)) = taken.state {
            let grown = state_bytes - member.state_len() + data.len();
            if grown <= max_snapshot_bytes {
                state_bytes = grown;
                member.set_state(seq, data);
            } else {
                out.over_budget += 1;
                let message = format!(
                    "a state of {} bytes would make this lobby's keyframe exceed {max_snapshot_bytes} bytes of states; dropped",
                    data.len()
                );
                member
                    .conn
                    .send_error(ErrorCode::StateTooLarge, message, None);
            }
        }
        out.states_in += taken.states;
        out.messages_in += taken.counts.messages;
        out.bytes_in += taken.counts.bytes;
    }
}

/// The work of one tick: take each member's newest state (refusing one that would make the
/// keyframe's states exceed `max_snapshot_bytes`), advance the state, build the delta (and the
/// keyframe if any member needs it), encode each once per codec, and hand the shared bytes to
/// every member's outbox, each member getting what the state's delivery rule says.
fn fan_out(state: &mut LobbyState<Connection>, now_us: u64, max_snapshot_bytes: usize) -> FanOut {
    let mut out = FanOut::default();
    take_inputs(state, max_snapshot_bytes, &mut out);
    let delta = state.tick(now_us);
    let keyframe_of = |state: &LobbyState<Connection>| {
        PerCodec::new(ServerMessage::Snapshot(state.keyframe(now_us)))
    };
    // Away members get nothing: their connection is gone.
    let mut keyframe = state
        .members()
        .any(|(_, m)| !m.is_away() && m.delivery() == Delivery::Keyframe)
        .then(|| keyframe_of(state));
    let mut delta = PerCodec::new(ServerMessage::Snapshot(delta));
    let mut resend = false;
    for (_, member) in state.members_mut().filter(|(_, m)| !m.is_away()) {
        let delivery = member.delivery();
        let frames = match (delivery, keyframe.as_mut()) {
            (Delivery::Keyframe, Some(keyframe)) => keyframe,
            _ => &mut delta,
        };
        let frame = frames.get(member.conn.codec);
        resend |= out.deliver(member, delivery, frame);
    }
    if resend {
        // Slow readers whose connection still holds an unsent snapshot: this tick's delta was
        // kept out (it would lack that snapshot's changes), and this tick's keyframe replaces
        // what waits. Until then the member's writer can only send the older, whole snapshot.
        let keyframe = keyframe.get_or_insert_with(|| keyframe_of(state));
        for (_, member) in state.members_mut().filter(|(_, m)| !m.is_away()) {
            if member.delivery() == Delivery::Keyframe {
                let frame = keyframe.get(member.conn.codec);
                out.deliver(member, Delivery::Keyframe, frame);
            }
        }
    }
    out
}

/// Benchmark support (criterion, `benches/`): a lobby of `members` (every `json_every`-th
/// one on the JSON codec, the rest MessagePack; 0 = none) and a closure that runs one real
/// tick — `changed` members send a `state_size`-byte state, then [`fan_out`], with every
/// member wanting a keyframe if `keyframes` — and drains every outbox as the writers would.
/// Returns the snapshots handed out.
#[doc(hidden)]
pub fn bench_tick(
    members: usize,
    changed: usize,
    state_size: usize,
    json_every: usize,
    keyframes: bool,
) -> impl FnMut() -> u64 {
    let mut state = LobbyState::new(members, 0);
    let mut handles = Vec::with_capacity(members);
    for i in 0..members {
        let codec = if json_every > 0 && i % json_every == 0 {
            Codec::Json
        } else {
            Codec::MessagePack
        };
        let outbox = Arc::new(Outbox::new(
            16,
            1 << 20,
            codec.frame_kind(),
            None,
            Default::default(),
        ));
        let input = Arc::new(InputSlot::default());
        let connection = Connection {
            outbox: outbox.clone(),
            input: input.clone(),
            codec,
        };
        if state
            .join(Joiner::player(format!("p{i}")), connection)
            .is_ok()
        {
            handles.push((input, outbox));
        }
    }
    let data = Payload::from(vec![7u8; state_size]);
    let mut seq = 0;
    let mut batch = crate::outbox::Batch::default();
    move || {
        seq += 1;
        for (input, _) in handles.iter().take(changed) {
            input.put(seq, data.clone(), state_size);
        }
        if keyframes {
            state.members_mut().for_each(|(_, m)| m.mark_behind());
        }
        let out = fan_out(&mut state, unix_micros(), usize::MAX);
        for (_, outbox) in &handles {
            outbox.drain_into(&mut batch);
            batch.clear();
        }
        out.sent
    }
}

/// One message, encoded lazily at most once per codec and shared by every recipient.
struct PerCodec {
    message: ServerMessage,
    frames: [Option<Bytes>; 2],
}

impl PerCodec {
    fn new(message: ServerMessage) -> Self {
        Self {
            message,
            frames: [None, None],
        }
    }

    fn get(&mut self, codec: Codec) -> Bytes {
        self.frames[codec.index()]
            .get_or_insert_with(|| codec.encode_server(&self.message))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use tickrelay_protocol::Snapshot;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::outbox::Batch;

    /// A member whose outbox has no direct sink: every snapshot queues, as for a socket that
    /// is full, and only `drain` (the writer) takes it out.
    fn member(state: &mut LobbyState<Connection>, name: &str) -> (Arc<InputSlot>, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(
            16,
            1 << 20,
            Codec::MessagePack.frame_kind(),
            None,
            CancellationToken::new(),
        ));
        let input = Arc::new(InputSlot::default());
        let connection = Connection {
            outbox: outbox.clone(),
            input: input.clone(),
            codec: Codec::MessagePack,
        };
        state.join(Joiner::player(name.into()), connection).unwrap();
        (input, outbox)
    }

    fn drain(outbox: &Outbox) -> Vec<Snapshot> {
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        batch
            .messages
            .iter()
            .filter_map(|(_, frame)| match Codec::MessagePack.decode_server(frame) {
                Ok(ServerMessage::Snapshot(snapshot)) => Some(snapshot),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_slow_member_gets_the_keyframe_in_the_tick_its_snapshot_was_replaced() {
        let mut state = LobbyState::new(4, 0);
        let (fast_input, fast) = member(&mut state, "fast");
        let (_, slow) = member(&mut state, "slow");
        fast_input.put(1, Payload::from(vec![1]), 10);
        let first = fan_out(&mut state, 100, usize::MAX);
        assert_eq!((first.sent, first.keyframes, first.coalesced), (2, 2, 0));
        assert!(drain(&fast)[0].keyframe, "joined: keyframe");

        // The slow member's keyframe is still unsent when the next tick's delta comes.
        fast_input.put(2, Payload::from(vec![2]), 10);
        let second = fan_out(&mut state, 200, usize::MAX);
        assert_eq!((second.sent, second.keyframes, second.coalesced), (2, 1, 1));
        let fast_got = drain(&fast);
        assert_eq!(fast_got.len(), 1);
        assert!(!fast_got[0].keyframe, "in sync: delta");
        let slow_got = drain(&slow);
        assert_eq!(slow_got.len(), 1, "one snapshot waits, the newest");
        assert!(
            slow_got[0].keyframe,
            "its delta lacked the lost keyframe: keyframe"
        );
        assert_eq!(slow_got[0].tick, 2);
        assert_eq!(slow_got[0].players.len(), 1);
        assert_eq!(slow_got[0].players[0].seq, 2);

        // Caught up: deltas again for both.
        let third = fan_out(&mut state, 300, usize::MAX);
        assert_eq!((third.sent, third.keyframes, third.coalesced), (2, 0, 0));
        assert!(!drain(&slow)[0].keyframe);
    }
}
