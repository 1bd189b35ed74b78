//! The task that owns one lobby: it applies members' commands to the sans-I/O state, ticks on
//! a drift-free schedule, encodes each snapshot once per codec and hands the same bytes to
//! every member's outbox. It never awaits a socket; slow members are the outbox's business.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tickrelay_protocol::{Codec, ErrorCode, Payload, PlayerId, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error};

use super::directory::{Entry, JoinAccepted, JoinRequest, TrafficCounts};
use super::input::InputSlot;
use super::state::{JoinRefused, LobbyState, MemberKey};
use crate::ServerContext;
use crate::outbox::{Outbox, PushError, Pushed};

/// Bound of a lobby's command inbox. A full inbox makes senders wait, which backpressures the
/// sending connections' reads, never the tick.
pub(crate) const INBOX_CAPACITY: usize = 4096;
/// Commands applied per wake-up before the actor checks its tick timer again.
const COMMAND_BATCH: usize = 32;

/// What a connection asks of its lobby, besides states (those go through its [`InputSlot`]).
pub(crate) enum Command {
    /// Boxed: joins are rare, and the largest variant sets the size of every command queued
    /// and of each lobby's batch buffer.
    Join {
        request: Box<JoinRequest>,
        reply: oneshot::Sender<Result<JoinAccepted, (ErrorCode, String)>>,
    },
    Event {
        key: MemberKey,
        id: PlayerId,
        data: Payload,
    },
    Leave {
        key: MemberKey,
        id: PlayerId,
    },
}

/// A connection's way to its lobby.
#[derive(Clone)]
pub(crate) struct LobbyHandle {
    commands: mpsc::Sender<Command>,
}

impl LobbyHandle {
    pub(super) fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    /// Sends a command, waiting while the lobby's inbox is full. Fails only if the lobby stopped.
    pub(crate) async fn send(&self, command: Command) -> Result<(), ()> {
        self.commands.send(command).await.map_err(|_| ())
    }
}

/// What the lobby keeps per member besides its game state: how to reach it.
struct Connection {
    outbox: Arc<Outbox>,
    /// The member's newest state, put there by its reader, taken at each tick.
    input: Arc<InputSlot>,
    codec: Codec,
    /// The next snapshot must be a keyframe (just joined, or a snapshot was coalesced).
    needs_keyframe: bool,
}

pub(super) fn spawn(
    ctx: Arc<ServerContext>,
    entry: Arc<Entry>,
    handle: LobbyHandle,
    inbox: mpsc::Receiver<Command>,
) {
    let tracker = ctx.tracker.clone();
    let actor = Actor {
        state: LobbyState::new(ctx.config.max_lobby_size),
        ctx,
        entry,
        handle,
        traffic: TrafficCounts::default(),
    };
    tracker.spawn(actor.run(inbox));
}

struct Actor {
    ctx: Arc<ServerContext>,
    entry: Arc<Entry>,
    handle: LobbyHandle,
    state: LobbyState<Connection>,
    /// Traffic since the last tick, added to the lobby's shared counters once per tick.
    traffic: TrafficCounts,
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let period = self.ctx.config.tick_period();
        // Lobbies are created at arbitrary instants, so their tick phases spread over the
        // period by themselves instead of all lobbies ticking at once.
        let mut next_tick = Instant::now() + period;
        let timer = sleep_until(next_tick);
        tokio::pin!(timer);
        // Grows on demand: most lobbies receive a handful of commands per wake-up.
        let mut commands = Vec::new();
        debug!(lobby = %self.entry.info.name, "lobby started");
        loop {
            tokio::select! {
                biased;
                () = &mut timer => {
                    next_tick = self.on_timer(next_tick, period);
                    timer.as_mut().reset(next_tick);
                }
                received = inbox.recv_many(&mut commands, COMMAND_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    for command in commands.drain(..) {
                        self.apply(command);
                    }
                    if self.state.is_empty() && self.ctx.directory.retire_if_unused(&self.entry) {
                        break;
                    }
                }
                () = self.ctx.shutdown.cancelled() => break,
            }
        }
        self.ctx.metrics.lobbies.dec();
        debug!(lobby = %self.entry.info.name, ticks = self.state.tick_number(), "lobby stopped");
    }

    /// Runs the tick due at `scheduled` and returns when the next one is due. Ticks stay on
    /// the grid `start + k * period` (no drift); a tick more than a period late skips the
    /// missed instants rather than bursting to catch up.
    fn on_timer(&mut self, scheduled: Instant, period: Duration) -> Instant {
        let started = Instant::now();
        let lateness = started.saturating_duration_since(scheduled);
        self.ctx
            .metrics
            .tick_lateness
            .observe(lateness.as_secs_f64());
        self.tick();
        self.ctx.metrics.ticks.inc();
        self.ctx
            .metrics
            .tick_duration
            .observe(started.elapsed().as_secs_f64());
        let missed = (lateness.as_nanos() / period.as_nanos()) as u32;
        if missed > 0 {
            self.ctx.metrics.ticks_missed.inc_by(u64::from(missed));
        }
        scheduled + period * (missed + 1)
    }

    fn tick(&mut self) {
        let out = fan_out(&mut self.state, unix_micros());
        let metrics = &self.ctx.metrics;
        metrics.snapshots_queued.inc_by(out.queued);
        metrics.snapshots_coalesced.inc_by(out.coalesced);
        metrics.keyframes_queued.inc_by(out.keyframes);
        metrics.messages_out.inc_by(out.written);
        metrics.bytes_out.inc_by(out.written_bytes);
        self.traffic.ticks += 1;
        self.traffic.states_in += out.states_in;
        self.traffic.snapshots_out += out.queued;
        self.traffic.messages_out += out.queued;
        self.traffic.bytes_out += out.bytes;
        let traffic = std::mem::take(&mut self.traffic);
        self.entry.info.traffic.add(&traffic);
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Join { request, reply } => {
                self.ctx.directory.join_processed(&self.entry);
                let result = self.join(*request);
                // The connection may have gone while waiting; its outbox is then closed anyway.
                let _ = reply.send(result);
            }
            Command::Event { key, id, data } => {
                if self.state.member(key, id).is_some() {
                    self.traffic.events_in += 1;
                    self.broadcast(None, ServerMessage::Event { from: id, data });
                }
            }
            Command::Leave { key, id } => {
                if self.state.leave(key, id).is_some() {
                    self.broadcast(None, ServerMessage::MemberLeft { id });
                    self.entry.set_roster(self.state.roster());
                }
            }
        }
    }

    fn join(&mut self, request: JoinRequest) -> Result<JoinAccepted, (ErrorCode, String)> {
        let JoinRequest {
            name,
            codec,
            outbox,
            input,
            ..
        } = request;
        let connection = Connection {
            outbox: outbox.clone(),
            input,
            codec,
            needs_keyframe: true,
        };
        let (key, player_id) = match self.state.join(name.clone(), connection) {
            Ok(joined) => joined,
            Err(JoinRefused::LobbyFull) => {
                return Err((
                    ErrorCode::LobbyFull,
                    format!(
                        "lobby {:?} already has its maximum of {} members",
                        self.entry.info.name, self.ctx.config.max_lobby_size
                    ),
                ));
            }
        };
        let welcome = ServerMessage::Welcome {
            player_id,
            lobby: self.entry.info.name.clone(),
            tick_hz: self.ctx.config.tick_hz,
            members: self.state.roster(),
        };
        // Queued before any snapshot can be, so `welcome` is always the first message.
        if let Some(frame) = encode(codec, &welcome) {
            let len = frame.len() as u64;
            if outbox.push_reliable(frame).is_ok() {
                self.traffic.messages_out += 1;
                self.traffic.bytes_out += len;
            }
        }
        self.broadcast(
            Some(key),
            ServerMessage::MemberJoined {
                id: player_id,
                name,
            },
        );
        self.entry.set_roster(self.state.roster());
        Ok(JoinAccepted {
            lobby: self.handle.clone(),
            key,
            player_id,
        })
    }

    /// Queues a reliable message for every member except `skip`, encoded once per codec. A
    /// member whose queue overflows is closed by its outbox (4002) and leaves via its reader.
    fn broadcast(&mut self, skip: Option<MemberKey>, message: ServerMessage) {
        let mut frames = PerCodec::new(message);
        let (mut sent, mut bytes) = (0, 0);
        for (key, member) in self.state.members() {
            if Some(key) != skip {
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
    /// Snapshots handed out (written directly or queued).
    queued: u64,
    /// Of those, written straight into the socket, and their bytes.
    written: u64,
    written_bytes: u64,
    coalesced: u64,
    keyframes: u64,
    bytes: u64,
}

/// The work of one tick: take each member's newest state, advance the state, build the delta
/// (and the keyframe if any member needs it), encode each once per codec, and hand the shared
/// bytes to every member's outbox.
fn fan_out(state: &mut LobbyState<Connection>, now_us: u64) -> FanOut {
    let mut out = FanOut::default();
    for (_, member) in state.members_mut() {
        if let Some(taken) = member.conn.input.take() {
            member.set_state(taken.seq, taken.data);
            out.states_in += taken.received;
        }
    }
    let delta = state.tick(now_us);
    let any_needs_keyframe = state
        .members()
        .any(|(_, m)| m.conn.needs_keyframe || m.conn.outbox.has_unsent_snapshot());
    let mut keyframe =
        any_needs_keyframe.then(|| PerCodec::new(ServerMessage::Snapshot(state.keyframe(&delta))));
    let mut delta = PerCodec::new(ServerMessage::Snapshot(delta));
    for (_, member) in state.members_mut() {
        let conn = &mut member.conn;
        // An unsent snapshot is about to be replaced, so this member would miss that delta's
        // changes: it gets the keyframe instead.
        let want_keyframe = conn.needs_keyframe || conn.outbox.has_unsent_snapshot();
        let frame = match (&mut keyframe, want_keyframe) {
            (Some(keyframe), true) => keyframe.get(conn.codec),
            _ => delta.get(conn.codec),
        };
        let len = frame.len() as u64;
        match conn.outbox.push_snapshot(frame) {
            Ok(pushed) => {
                out.queued += 1;
                out.bytes += len;
                out.coalesced += u64::from(pushed == Pushed::Replaced);
                if pushed == Pushed::Written {
                    out.written += 1;
                    out.written_bytes += len;
                }
                out.keyframes += u64::from(want_keyframe);
                conn.needs_keyframe = false;
            }
            // Closing: its reader sends `Leave` shortly.
            Err(PushError::Closed | PushError::Overflow) => {}
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
    let mut state = LobbyState::new(members);
    let mut handles = Vec::with_capacity(members);
    for i in 0..members {
        let codec = if json_every > 0 && i % json_every == 0 {
            Codec::Json
        } else {
            Codec::MessagePack
        };
        let outbox = Arc::new(Outbox::new(16, codec.is_text(), None, Default::default()));
        let input = Arc::new(InputSlot::default());
        let connection = Connection {
            outbox: outbox.clone(),
            input: input.clone(),
            codec,
            needs_keyframe: true,
        };
        if state.join(format!("p{i}"), connection).is_ok() {
            handles.push((input, outbox));
        }
    }
    let data = Payload::from(vec![7u8; state_size]);
    let mut seq = 0;
    let mut batch = crate::outbox::Batch::default();
    move || {
        seq += 1;
        for (input, _) in handles.iter().take(changed) {
            input.put(seq, data.clone());
        }
        if keyframes {
            state
                .members_mut()
                .for_each(|(_, m)| m.conn.needs_keyframe = true);
        }
        let out = fan_out(&mut state, unix_micros());
        for (_, outbox) in &handles {
            outbox.drain_into(&mut batch);
            batch.clear();
        }
        out.queued
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
            .get_or_insert_with(|| encode(codec, &self.message).unwrap_or_default())
            .clone()
    }
}

/// Encodes a server message; failure would be a bug in the protocol types, so it is logged
/// rather than propagated into the tick.
pub(crate) fn encode(codec: Codec, message: &ServerMessage) -> Option<Bytes> {
    match codec.encode(message) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(err) => {
            error!(%err, "failed to encode a server message");
            None
        }
    }
}

/// Microseconds since the Unix epoch (the protocol's `server_time_us`).
pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}
