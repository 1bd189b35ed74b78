//! One simulated player: connect, join, then send `state` on a fixed timeline (plus optional
//! `event`s and `ping`s) while a reader task measures every snapshot. Reconnects with
//! exponential backoff plus jitter when its connection is lost or dropped by a storm.
//!
//! Clients of one worker share its `Recorder` through an `Rc<RefCell<_>>`: they run on one
//! thread, so recording a sample is a plain histogram increment.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, Payload as WsPayload, WebSocketError};
use tickrelay_protocol::{
    ClientMessage, Codec, ErrorCode, Payload, PlayerId, ServerMessage, SnapshotSummary,
};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::clock::{ClockEstimator, unix_micros};
use crate::net::{self, Reader, Writer};
use crate::plan::{ClientSpec, Plan, Target, backoff_delay};
use crate::stats::{Counters, Histograms, Metric};
use tickrelay_protocol::framing::reader::ReadError;
use tickrelay_protocol::framing::{self, Kind};

/// States remembered per client for input-to-visible latency (by `seq % SEQ_WINDOW`).
const SEQ_WINDOW: usize = 64;
/// A send this much after its scheduled instant counts as late (generator overloaded). Tokio
/// timers have 1 ms resolution, so lateness up to about 1 ms is normal timer jitter.
const LATE_AFTER: Duration = Duration::from_millis(5);
/// How long a leaving client waits for the server's close.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a worker's clients record into.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) histograms: Histograms,
    pub(crate) counters: Counters,
    pub(crate) clock: ClockEstimator,
    pub(crate) tick_hz: Option<u32>,
}

/// Per-worker state shared by its clients.
pub(crate) struct Shared {
    pub(crate) plan: Rc<Plan>,
    pub(crate) target: Target,
    pub(crate) recorder: RefCell<Recorder>,
    /// Clients currently joined.
    pub(crate) clients_joined: Cell<usize>,
    /// Cancelled by a storm: every live connection drops at once. Replaced after each storm.
    pub(crate) storm: RefCell<CancellationToken>,
    state_data: Payload,
    correct_clock: bool,
    /// Connection error kinds already described in the log (each once per worker: the
    /// counters say how often, the log says why).
    described: RefCell<Vec<&'static str>>,
}

impl Shared {
    /// Logs what a connection error was, the first time this worker meets its kind.
    fn describe_once(&self, err: &net::ConnectError) {
        let mut described = self.described.borrow_mut();
        if !described.contains(&err.kind()) {
            described.push(err.kind());
            tracing::warn!(kind = err.kind(), %err, "connection failed (later ones of this kind are only counted)");
        }
    }

    pub(crate) fn new(plan: Rc<Plan>, target: Target) -> Self {
        let correct_clock = match plan.clock_correction {
            crate::cli::ClockCorrection::On => true,
            crate::cli::ClockCorrection::Off => false,
            crate::cli::ClockCorrection::Auto => !target.is_loopback(),
        };
        // Non-repeating filler so the payload looks like real state, not a run of zeros.
        let state: Vec<u8> = (0..plan.state_size).map(|i| (i * 31 + 7) as u8).collect();
        Self {
            state_data: Payload::from(state),
            plan,
            target,
            recorder: RefCell::default(),
            clients_joined: Cell::new(0),
            storm: RefCell::new(CancellationToken::new()),
            correct_clock,
            described: RefCell::default(),
        }
    }

    /// The node at `url` that a fleet's `what` (`wrong_node`, `redirect`, `route`) names,
    /// reached as `from` is (codec, TLS trust); `None`, counted and logged, if it cannot be.
    async fn follow(&self, from: &Target, url: &str, what: &str) -> Option<Target> {
        match from.redirected(url).await {
            Ok(there) => Some(there),
            Err(err) => {
                self.count(|c| c.error(format!("{what}_unusable")));
                tracing::warn!(%url, error = %format!("{err:#}"), "cannot follow {what}");
                None
            }
        }
    }

    fn record(&self, metric: Metric, micros: u64) {
        self.recorder.borrow_mut().histograms.record(metric, micros);
    }

    fn count(&self, update: impl FnOnce(&mut Counters)) {
        update(&mut self.recorder.borrow_mut().counters);
    }
}

/// How a session ended.
enum SessionEnd {
    /// Asked to stop (run over, or churn): left the lobby.
    Stopped,
    /// A storm dropped the connection.
    Dropped,
    /// The connection failed or the server closed it.
    Lost,
}

/// Runs one client until `stop` is cancelled.
pub(crate) async fn run(spec: ClientSpec, shared: Rc<Shared>, stop: CancellationToken) {
    let plan = shared.plan.clone();
    let source =
        (!plan.source_ips.is_empty()).then(|| plan.source_ips[spec.index % plan.source_ips.len()]);
    let mut attempt: u32 = 0;
    // What the server last asked to wait before trying again (503 Retry-After, `overloaded`).
    let mut retry_after = None;
    let mut ever_joined = false;
    // The seat to take back after a drop: the last welcome's token, the last offset seen.
    let mut seat: Option<SeatToResume> = None;
    // When the client lost its connection, for the reconnect-time metric.
    let mut outage_since: Option<Instant> = None;
    // The node a fleet sent this client to (`wrong_node`), instead of --url. Every new
    // attempt after a failure or a drop starts from --url again: the node it was sent to
    // may be the one that died, and the directory sends it on.
    let mut sent_to: Option<Target> = None;
    // Follow `wrong_node` at once, but not forever: nodes that keep pointing elsewhere
    // (a lobby moving, a directory in flux) get the backoff.
    let mut followed = 0;
    // After a `redirect`: the last tick received before it, to count what the move missed.
    let mut moved_from: Option<u64> = None;
    // Own events written to a connection and not echoed back yet, across connections.
    let unechoed: Rc<RefCell<VecDeque<Payload>>> = Rc::default();
    // The lobby this client plays in: its planned one, or the one matchmaking gave it.
    let mut lobby: Option<String> = plan.matchmake.is_none().then(|| spec.lobby.clone());
    // A ticket for it the routing node made (tickets on), for the next fresh join.
    let mut minted: Option<String> = None;
    loop {
        if (attempt > 0 || outage_since.is_some()) && followed == 0 {
            // The server's hint is the floor; the jittered backoff on top spreads a crowd told
            // the same time so it does not come back all at once.
            let delay = retry_after.take().unwrap_or_default()
                + backoff_delay(
                    plan.backoff_base,
                    plan.backoff_max,
                    attempt.saturating_sub(1),
                );
            tokio::select! {
                () = stop.cancelled() => return,
                () = sleep(delay) => {}
            }
        }
        if stop.is_cancelled() {
            return;
        }
        if !ever_joined {
            let now_us = unix_micros();
            shared.count(|c| {
                if c.first_connect_at_us == 0 || now_us < c.first_connect_at_us {
                    c.first_connect_at_us = now_us;
                }
            });
        }
        // `--route`: where the lobby runs, asked afresh at every new start (the node it ran
        // on may have died or drained); with `--matchmake`, the first start asks for a seat
        // instead, and the lobby it names is this client's from then on.
        if sent_to.is_none()
            && let Some(route) = &plan.route
        {
            let ask = match (&plan.matchmake, &lobby) {
                (Some(pool), None) => net::Ask::Matchmake {
                    pool,
                    size: plan.lobby_size,
                },
                (_, lobby) => net::Ask::Route {
                    lobby: lobby.as_deref().unwrap_or(&spec.lobby),
                },
            };
            match routed(&shared, route, ask, &spec.name, source).await {
                Ok((placed, there)) => {
                    lobby = Some(placed.lobby);
                    minted = placed.ticket;
                    sent_to = Some(there);
                }
                // Refused for good (counted and described): this client cannot play.
                Err(Asked::Never) => return,
                Err(Asked::Again(hint)) => {
                    retry_after = hint;
                    attempt += 1;
                    outage_since.get_or_insert_with(Instant::now);
                    continue;
                }
            }
        }
        let resume = seat.as_ref().filter(|_| plan.resume);
        let target = sent_to.as_ref().unwrap_or(&shared.target);
        let node: Arc<str> = Arc::from(target.url.as_str());
        let Some(joining) = lobby.as_deref() else {
            // (Only --matchmake without --route, which the plan refuses.)
            return;
        };
        let (reader, writer, joined) = match connect_and_join(
            &spec,
            joining,
            minted.take(),
            &shared,
            target,
            source,
            resume,
        )
        .await
        {
            Ok(joined) => joined,
            Err(Again::At(target)) if followed < MAX_FOLLOWED => {
                shared.count(|c| c.wrong_node_followed += 1);
                sent_to = Some(target);
                followed += 1;
                continue;
            }
            Err(again) => {
                retry_after = match again {
                    Again::After(hint) => hint,
                    Again::At(_) => None,
                };
                attempt += 1;
                followed = 0;
                sent_to = None;
                // Not joined where the redirect pointed: the ticks from here on are an
                // outage, not the move's cost.
                moved_from = None;
                outage_since.get_or_insert_with(Instant::now);
                continue;
            }
        };
        followed = 0;
        if ever_joined {
            shared.count(|c| c.reconnects += 1);
        } else {
            let now_us = unix_micros();
            shared.count(|c| {
                c.first_joins += 1;
                c.last_first_join_at_us = c.last_first_join_at_us.max(now_us);
            });
        }
        ever_joined = true;
        if let Some(since) = outage_since.take() {
            let micros = since.elapsed().as_micros() as u64;
            shared.record(Metric::Reconnect, micros);
            if joined.resumed {
                shared.record(Metric::Resume, micros);
            }
        }
        // After a lossless resume, the replay says which of the unechoed events the lobby
        // got; otherwise nobody can tell, and they are counted as unconfirmed.
        let replaying = joined.resumed && joined.lost == 0 && !unechoed.borrow().is_empty();
        if !replaying {
            let unconfirmed = std::mem::take(&mut *unechoed.borrow_mut()).len() as u64;
            shared.count(|c| c.events_unconfirmed += unconfirmed);
        }
        shared.clients_joined.set(shared.clients_joined.get() + 1);
        let ended = session(
            &shared,
            reader,
            writer,
            Resumed {
                player_id: joined.player_id,
                node,
                offset: joined.offset,
                moved_from: moved_from.take(),
                unechoed: unechoed.clone(),
                replaying,
            },
            &stop,
        )
        .await;
        shared.clients_joined.set(shared.clients_joined.get() - 1);
        let offset = ended.offset;
        seat = joined.resume.map(|token| SeatToResume { token, offset });
        if let (SessionEnd::Lost, Some(redirect)) = (&ended.end, ended.redirect) {
            // The lobby moved (a drain): resume there at once, with the redirect's token.
            if let Some(there) = shared.follow(target, &redirect.url, "redirect").await {
                shared.count(|c| c.redirects += 1);
                outage_since = Some(Instant::now());
                if let Some(token) = redirect.resume {
                    seat = Some(SeatToResume { token, offset });
                }
                // (A session that saw no snapshot passes on the tick it came with.)
                moved_from = ended.last_tick.or(ended.moved_from);
                sent_to = Some(there);
                followed = 1;
                continue;
            }
        }
        match ended.end {
            SessionEnd::Stopped => return,
            SessionEnd::Dropped | SessionEnd::Lost => {
                outage_since = Some(Instant::now());
                attempt = 1;
                sent_to = None;
            }
        }
    }
}

/// Why a routing question got no usable answer (counted either way).
enum Asked {
    /// Ask again after the backoff, at least this long if the node said so.
    Again(Option<Duration>),
    /// The node will never answer it as asked (4xx).
    Never,
}

/// What `--route`'s node answers `ask` (client `name` shows its ticket when tickets are on)
/// and the node it names, or why not.
async fn routed(
    shared: &Shared,
    route: &Target,
    ask: net::Ask<'_>,
    name: &str,
    source: Option<std::net::Ipv4Addr>,
) -> Result<(net::Placed, Target), Asked> {
    let (net::Ask::Route { lobby: shown } | net::Ask::Matchmake { pool: shown, .. }) = ask;
    let bearer = shared.plan.ticket(name, shown, unix_micros() / 1_000_000);
    let asked = timeout(
        shared.plan.connect_timeout,
        net::place(route, ask, bearer.as_deref(), source),
    )
    .await
    .unwrap_or(Err(net::ConnectError::Timeout));
    let placed = match asked {
        Ok(placed) => placed,
        Err(err) => {
            let what = match ask {
                net::Ask::Route { .. } => "route",
                net::Ask::Matchmake { .. } => "matchmake",
            };
            shared.count(|c| c.error(format!("{what}_{}", err.kind())));
            shared.describe_once(&err);
            return Err(match err {
                net::ConnectError::Shed(hint) => Asked::Again(hint),
                net::ConnectError::Answered(_) => Asked::Never,
                _ => Asked::Again(None),
            });
        }
    };
    let there = shared
        .follow(&shared.target, &placed.url, "route")
        .await
        .ok_or(Asked::Again(None))?;
    shared.count(|c| match ask {
        net::Ask::Route { .. } => c.routed += 1,
        net::Ask::Matchmake { .. } => c.matchmade += 1,
    });
    Ok((placed, there))
}

/// `wrong_node` answers followed in a row before the client backs off.
const MAX_FOLLOWED: u32 = 3;

/// Why a connection attempt gave up, and what to do next.
enum Again {
    /// Retry after the backoff, at least this long if the server said so.
    After(Option<Duration>),
    /// The lobby runs on another node (`wrong_node`): connect there.
    At(Target),
}

/// A seat this client may take back.
struct SeatToResume {
    token: String,
    offset: u64,
}

/// What a `welcome` gave.
struct Joined {
    player_id: PlayerId,
    /// The token to resume this seat with, if the server resumes seats.
    resume: Option<String>,
    offset: u64,
    /// The seat was taken back.
    resumed: bool,
    /// With `resumed`: reliable messages the server could not replay.
    lost: u64,
}

/// Connects to `target` and joins (resuming `seat` if given, joining afresh if the server
/// refuses it); counts and records everything. On failure, says when or where to try again.
async fn connect_and_join(
    spec: &ClientSpec,
    lobby: &str,
    minted: Option<String>,
    shared: &Shared,
    target: &Target,
    source: Option<std::net::Ipv4Addr>,
    seat: Option<&SeatToResume>,
) -> Result<(Reader, Writer, Joined), Again> {
    let plan = &shared.plan;
    let started = Instant::now();
    let connected = timeout(
        plan.connect_timeout,
        net::connect(target, source, plan.codec),
    )
    .await;
    let (mut reader, mut writer) = match connected {
        Ok(Ok(halves)) => halves,
        Ok(Err(err)) => {
            shared.count(|c| c.error(err.kind()));
            shared.describe_once(&err);
            return Err(Again::After(match err {
                net::ConnectError::Shed(retry_after) => retry_after,
                _ => None,
            }));
        }
        Err(_) => {
            shared.count(|c| c.error(net::ConnectError::Timeout.kind()));
            return Err(Again::After(None));
        }
    };
    shared.record(Metric::Connect, started.elapsed().as_micros() as u64);
    shared.count(|c| c.connects += 1);

    let mut buffer = Vec::with_capacity(64);
    let mut seat = seat;
    loop {
        let join = match seat {
            Some(seat) => ClientMessage::Join {
                lobby: lobby.to_owned(),
                name: spec.name.clone(),
                ticket: None,
                role: None,
                resume: Some(seat.token.clone()),
                offset: Some(seat.offset),
            },
            None => ClientMessage::Join {
                lobby: lobby.to_owned(),
                name: spec.name.clone(),
                ticket: minted
                    .clone()
                    .or_else(|| plan.ticket(&spec.name, lobby, unix_micros() / 1_000_000)),
                role: None,
                resume: None,
                offset: None,
            },
        };
        match join_on(&mut reader, &mut writer, &join, &mut buffer, shared).await {
            Err(JoinFailed::SeatExpired) if seat.is_some() => {
                // The seat is gone; the connection stays: join afresh on it.
                shared.count(|c| c.resumes_refused += 1);
                seat = None;
            }
            Err(JoinFailed::SeatExpired) => return Err(Again::After(None)),
            Err(JoinFailed::Retry(hint)) => return Err(Again::After(hint)),
            Err(JoinFailed::WrongNode(url)) => {
                return Err(match shared.follow(target, &url, "wrong_node").await {
                    Some(there) => Again::At(there),
                    None => Again::After(None),
                });
            }
            Ok(joined) => return Ok((reader, writer, joined)),
        }
    }
}

/// Why [`join_on`] did not get a welcome.
enum JoinFailed {
    SeatExpired,
    /// The lobby runs on the node at this URL.
    WrongNode(String),
    /// Anything else (counted); with the server's hint of when to try again.
    Retry(Option<Duration>),
}

/// Sends `join` on an open connection and waits for the answer.
async fn join_on(
    reader: &mut Reader,
    writer: &mut Writer,
    join: &ClientMessage,
    buffer: &mut Vec<u8>,
    shared: &Shared,
) -> Result<Joined, JoinFailed> {
    let plan = &shared.plan;
    let join_sent = Instant::now();
    if send(writer, plan.codec, join, buffer, shared)
        .await
        .is_err()
    {
        shared.count(|c| c.error("join_send_failed"));
        return Err(JoinFailed::Retry(None));
    }
    let welcome = timeout(plan.connect_timeout, async {
        loop {
            let frame = reader.next_frame().await.ok()?;
            match frame.kind {
                Kind::Binary | Kind::Text if frame.fin => {}
                Kind::Ping | Kind::Pong => continue,
                // tickrelay never fragments; anything else ends the attempt.
                _ => return None,
            }
            match plan.codec.decode_server(&frame.payload) {
                Ok(ServerMessage::Welcome {
                    player_id,
                    tick_hz,
                    resume,
                    offset,
                    resumed,
                    lost,
                    ..
                }) => return Some(Ok((player_id, tick_hz, resume, offset, resumed, lost))),
                Ok(ServerMessage::Error {
                    code,
                    retry_after_ms,
                    url,
                    ..
                }) => return Some(Err((code, retry_after_ms, url))),
                _ => {}
            }
        }
    })
    .await;
    match welcome {
        Ok(Some(Ok((player_id, tick_hz, resume, offset, resumed, lost)))) => {
            shared.record(Metric::Join, join_sent.elapsed().as_micros() as u64);
            shared.recorder.borrow_mut().tick_hz = Some(tick_hz);
            if resumed {
                shared.count(|c| {
                    c.resumes += 1;
                    c.resume_lost += lost;
                });
            }
            Ok(Joined {
                player_id,
                resume,
                offset,
                resumed,
                lost,
            })
        }
        Ok(Some(Err((ErrorCode::SeatExpired, _, _)))) => Err(JoinFailed::SeatExpired),
        Ok(Some(Err((ErrorCode::WrongNode, _, Some(url))))) => Err(JoinFailed::WrongNode(url)),
        Ok(Some(Err((code, retry_after_ms, _)))) => {
            shared.count(|c| c.error(format!("join_refused:{}", code.as_str())));
            Err(JoinFailed::Retry(retry_after_ms.map(Duration::from_millis)))
        }
        Ok(None) => {
            shared.count(|c| c.error("join_connection_lost"));
            Err(JoinFailed::Retry(None))
        }
        Err(_) => {
            shared.count(|c| c.error("join_timeout"));
            Err(JoinFailed::Retry(None))
        }
    }
}

/// Encodes and sends one message, masking in place in a reused buffer.
async fn send(
    writer: &mut Writer,
    codec: Codec,
    message: &ClientMessage,
    buffer: &mut Vec<u8>,
    shared: &Shared,
) -> Result<(), WebSocketError> {
    buffer.clear();
    // Client messages always encode (plain structs and strings).
    let _ = codec.encode_into(message, buffer);
    let len = buffer.len() as u64;
    let payload = WsPayload::BorrowedMut(&mut buffer[..]);
    let frame = if codec.is_text() {
        Frame::text(payload)
    } else {
        Frame::binary(payload)
    };
    writer.write_frame(frame).await?;
    shared.count(|c| c.bytes_out += len);
    Ok(())
}

/// State shared by a session's writer (this task) and its reader task.
struct SessionState {
    player_id: PlayerId,
    /// The node this connection is to (its URL), for the per-node figures.
    node: Arc<str>,
    /// Intended send time (unix µs) of recent `state` seqs, indexed by `seq % SEQ_WINDOW`.
    intended: RefCell<[(u64, u64); SEQ_WINDOW]>,
    last_seen_seq: Cell<u64>,
    last_tick: Cell<Option<u64>>,
    /// A pong owed to a server ping, for the writer to send.
    pong_owed: RefCell<Option<Bytes>>,
    wake_writer: Notify,
    /// Set once we sent `leave`: the close that follows is expected.
    leaving: Cell<bool>,
    /// The lobby's offset of the last reliable message received, for a resume.
    offset: Cell<u64>,
    clock: RefCell<ClockEstimator>,
    /// The server moved the lobby (`redirect`): where to, and the seat's token.
    redirect: RefCell<Option<Redirect>>,
    /// The last tick before a `redirect` brought this session here, until the first
    /// snapshot says how many the move missed.
    moved_from: Cell<Option<u64>>,
    /// Own events written and not echoed yet (the client's, across its connections).
    unechoed: Rc<RefCell<VecDeque<Payload>>>,
    /// A resume's replay is under way (it ends at the first snapshot): no new event yet,
    /// then the unechoed ones go again.
    replaying: Cell<bool>,
    /// The replay ended: the writer sends the unechoed events again.
    resend_due: Cell<bool>,
}

/// Where a session starts.
struct Resumed {
    player_id: PlayerId,
    node: Arc<str>,
    offset: u64,
    /// The last tick before a `redirect` brought it here.
    moved_from: Option<u64>,
    unechoed: Rc<RefCell<VecDeque<Payload>>>,
    replaying: bool,
}

/// A `redirect`: the lobby moved to the node at `url`.
struct Redirect {
    url: String,
    resume: Option<String>,
}

/// How a session ended, and what the next connection needs of it.
struct Ended {
    end: SessionEnd,
    /// The last reliable offset seen, for a resume.
    offset: u64,
    last_tick: Option<u64>,
    /// The tick before the redirect that brought this session, if no snapshot came since.
    moved_from: Option<u64>,
    redirect: Option<Redirect>,
}

/// Plays one connection's life; returns how it ended.
async fn session(
    shared: &Rc<Shared>,
    reader: Reader,
    writer: Writer,
    from: Resumed,
    stop: &CancellationToken,
) -> Ended {
    let Resumed {
        player_id,
        node,
        offset,
        moved_from,
        unechoed,
        replaying,
    } = from;
    let state = Rc::new(SessionState {
        player_id,
        node,
        intended: RefCell::new([(0, 0); SEQ_WINDOW]),
        last_seen_seq: Cell::new(0),
        last_tick: Cell::new(None),
        pong_owed: RefCell::new(None),
        wake_writer: Notify::new(),
        leaving: Cell::new(false),
        offset: Cell::new(offset),
        clock: RefCell::default(),
        redirect: RefCell::default(),
        moved_from: Cell::new(moved_from),
        unechoed,
        replaying: Cell::new(replaying),
        resend_due: Cell::new(false),
    });
    let end = Box::pin(play(shared, &state, reader, writer, stop)).await;
    Ended {
        end,
        offset: state.offset.get(),
        last_tick: state.last_tick.get(),
        moved_from: state.moved_from.take(),
        redirect: state.redirect.take(),
    }
}

async fn play(
    shared: &Rc<Shared>,
    state: &Rc<SessionState>,
    reader: Reader,
    mut writer: Writer,
    stop: &CancellationToken,
) -> SessionEnd {
    let plan = shared.plan.clone();
    let mut read_task = tokio::task::spawn_local(read_loop(shared.clone(), state.clone(), reader));
    let storm = shared.storm.borrow().clone();
    let mut buffer = Vec::with_capacity(64 + plan.state_size * 2);

    let now = Instant::now();
    let period = |rate: f64| (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let state_period = period(plan.state_rate);
    let event_period = period(plan.event_rate);
    // Random phases: clients that join together do not send in lockstep.
    let phase = |p: Option<Duration>| p.map(|p| now + p.mul_f64(fastrand::f64()));
    let mut next_state = phase(state_period);
    let mut next_event = phase(event_period);
    let mut next_ping = now + plan.ping_interval.mul_f64(fastrand::f64());
    let mut seq: u64 = 0;
    // Created once per session, not per loop turn: each creation costs a timer-wheel entry
    // or a waiter registration, and this loop turns ~30 times a second per client.
    let stopped = stop.clone().cancelled_owned();
    let stormed = storm.cancelled_owned();
    let wake = state.wake_writer.notified();
    let timer = sleep_until(next_ping);
    tokio::pin!(stopped, stormed, wake, timer);

    loop {
        if state.resend_due.take() {
            // The replay ended (its first snapshot came): what it did not echo goes again,
            // before any newer event.
            let again = std::mem::take(&mut *state.unechoed.borrow_mut());
            shared.count(|c| c.events_resent += again.len() as u64);
            for data in again {
                if send_event(&mut writer, state, data, &mut buffer, shared)
                    .await
                    .is_err()
                {
                    return lost(shared, state, read_task, "write_failed").await;
                }
            }
        }
        // While a resume's replay runs, events wait (the snapshot that ends it wakes the loop).
        let event_due = next_event.filter(|_| !state.replaying.get() && !state.resend_due.get());
        let due = [next_state, event_due, Some(next_ping)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_ping);
        timer.as_mut().reset(due);
        tokio::select! {
            biased;
            // The timer first: it is why this loop wakes ~30 times a second, and a ready
            // branch spares polling the others (each poll of a token or `Notified` takes a
            // lock). They stay registered, so a stop or storm still wakes the loop.
            () = &mut timer => {}
            () = &mut stopped => {
                state.leaving.set(true);
                let _ = send(&mut writer, plan.codec, &ClientMessage::Leave, &mut buffer, shared).await;
                if timeout(LEAVE_TIMEOUT, &mut read_task).await.is_err() {
                    read_task.abort();
                }
                return SessionEnd::Stopped;
            }
            () = &mut stormed => {
                read_task.abort();
                return SessionEnd::Dropped;
            }
            _ = &mut read_task => return SessionEnd::Lost,
            () = &mut wake => {
                wake.set(state.wake_writer.notified());
                let pong = state.pong_owed.borrow_mut().take();
                if let Some(pong) = pong
                    && writer.write_frame(Frame::pong(WsPayload::Borrowed(&pong))).await.is_err()
                {
                    return lost(shared, state, read_task, "write_failed").await;
                }
                continue;
            }
        }
        let now = Instant::now();
        if let (Some(at), Some(period)) = (next_state, state_period)
            && at <= now
        {
            // Coordinated omission: the timeline is fixed. A late send is measured from its
            // intended instant; more than a period behind, missed sends are skipped (counted).
            let lag = now - at;
            let skipped = (lag.as_nanos() / period.as_nanos()) as u32;
            let intended_at = at + period * skipped;
            let lag_from_intended = now - intended_at;
            let intended_us = unix_micros().saturating_sub(lag_from_intended.as_micros() as u64);
            seq += 1 + u64::from(skipped);
            state.intended.borrow_mut()[(seq % SEQ_WINDOW as u64) as usize] = (seq, intended_us);
            let message = ClientMessage::State {
                seq,
                data: shared.state_data.clone(),
            };
            if send(&mut writer, plan.codec, &message, &mut buffer, shared)
                .await
                .is_err()
            {
                return lost(shared, state, read_task, "write_failed").await;
            }
            shared.count(|c| {
                c.states_sent += 1;
                c.sends_skipped += u64::from(skipped);
                c.sends_late += u64::from(lag_from_intended > LATE_AFTER);
                c.max_send_lag_us = c.max_send_lag_us.max(lag.as_micros() as u64);
            });
            next_state = Some(intended_at + period);
        }
        if let (Some(at), Some(period)) = (next_event, event_period)
            && at <= now
            // After a resume, the events to send again go first (top of the loop).
            && !state.replaying.get()
            && !state.resend_due.get()
        {
            let mut data = vec![0u8; plan.event_size];
            data[..8].copy_from_slice(&unix_micros().to_be_bytes());
            if send_event(&mut writer, state, Payload::from(data), &mut buffer, shared)
                .await
                .is_err()
            {
                return lost(shared, state, read_task, "write_failed").await;
            }
            shared.count(|c| c.events_sent += 1);
            let behind = ((now - at).as_nanos() / period.as_nanos()) as u32;
            next_event = Some(at + period * (behind + 1));
        }
        if next_ping <= now {
            let message = ClientMessage::Ping {
                client_time: unix_micros() as f64,
            };
            if send(&mut writer, plan.codec, &message, &mut buffer, shared)
                .await
                .is_err()
            {
                return lost(shared, state, read_task, "write_failed").await;
            }
            shared.count(|c| c.pings_sent += 1);
            next_ping = now + plan.ping_interval;
        }
    }
}

/// Sends an own event, remembering it until its echo comes back (at most
/// `MAX_UNECHOED`: events the server refused are never echoed).
async fn send_event(
    writer: &mut Writer,
    state: &SessionState,
    data: Payload,
    buffer: &mut Vec<u8>,
    shared: &Shared,
) -> Result<(), WebSocketError> {
    // Kept before it is written: its echo may come before the write returns.
    {
        let mut unechoed = state.unechoed.borrow_mut();
        unechoed.push_back(data.clone());
        if unechoed.len() > MAX_UNECHOED {
            unechoed.pop_front();
            shared.count(|c| c.events_unconfirmed += 1);
        }
    }
    send(
        writer,
        shared.plan.codec,
        &ClientMessage::Event { data },
        buffer,
        shared,
    )
    .await
}

/// Own events remembered until echoed.
const MAX_UNECHOED: usize = 256;

/// The session's socket failed a write. The server may have closed it right after a
/// `redirect` (a drain): the reader gets a moment to take what is still on its way, and a
/// write failing then is no error.
async fn lost(
    shared: &Shared,
    state: &SessionState,
    mut read_task: tokio::task::JoinHandle<()>,
    kind: &str,
) -> SessionEnd {
    if timeout(Duration::from_millis(200), &mut read_task)
        .await
        .is_err()
    {
        read_task.abort();
    }
    if state.redirect.borrow().is_none() {
        shared.count(|c| c.error(kind));
    }
    SessionEnd::Lost
}

/// Reads until the connection ends, recording every message.
async fn read_loop(shared: Rc<Shared>, state: Rc<SessionState>, mut reader: Reader) {
    let codec = shared.plan.codec;
    loop {
        let frame = match reader.next_frame().await {
            Ok(frame) => frame,
            Err(err) => {
                if !state.leaving.get() {
                    let kind = match err {
                        ReadError::Eof | ReadError::Io(_) => "connection_lost",
                        ReadError::Frame(_) => "protocol_error",
                    };
                    shared.count(|c| c.error(kind));
                }
                return;
            }
        };
        match frame.kind {
            // The pong we owe goes out through the writer (this task never writes).
            Kind::Ping => {
                *state.pong_owed.borrow_mut() = Some(frame.payload.freeze());
                state.wake_writer.notify_one();
            }
            Kind::Pong => {}
            // tickrelay never fragments its messages.
            Kind::Continuation => {
                shared.count(|c| c.error("protocol_error"));
                return;
            }
            Kind::Binary | Kind::Text if !frame.fin => {
                shared.count(|c| c.error("protocol_error"));
                return;
            }
            Kind::Close => {
                // No code in the frame is reported as 1005, "no status received" (RFC 6455 7.1.5).
                let code = framing::close_code(&frame.payload).unwrap_or(1005);
                let leaving = state.leaving.get();
                let moved = state.redirect.borrow().is_some();
                shared.count(|c| {
                    *c.close_codes.entry(code).or_default() += 1;
                    let expected = (leaving && code == tickrelay_protocol::close::NORMAL)
                        || (moved && code == tickrelay_protocol::close::MOVED);
                    if !expected {
                        c.error(format!("closed:{code}"));
                    }
                });
                return;
            }
            Kind::Binary | Kind::Text => {
                let received_us = unix_micros();
                shared.count(|c| c.bytes_in += frame.payload.len() as u64);
                // Snapshots are nearly every message: summarise them without copying payloads.
                if let Some(summary) = codec.decode_snapshot_summary(&frame.payload) {
                    on_snapshot(&shared, &state, &summary, received_us);
                    continue;
                }
                match codec.decode_server(&frame.payload) {
                    Ok(message) => on_message(&shared, &state, message, received_us),
                    Err(_) => shared.count(|c| c.error("undecodable_message")),
                }
            }
        }
    }
}

fn on_snapshot(
    shared: &Shared,
    state: &SessionState,
    snapshot: &SnapshotSummary,
    received_us: u64,
) {
    let offset = if shared.correct_clock {
        state.clock.borrow().offset_us()
    } else {
        0.0
    };
    let sent_local_us = (snapshot.server_time_us as f64 - offset).max(0.0) as u64;
    let mut recorder = shared.recorder.borrow_mut();
    recorder
        .histograms
        .record_snapshot(&state.node, received_us.saturating_sub(sent_local_us));
    if state.replaying.take() {
        // Every replayed message came before this snapshot: what is still unechoed never
        // reached the lobby.
        state.resend_due.set(true);
        state.wake_writer.notify_one();
    }
    let counters = &mut recorder.counters;
    counters.snapshots_received += 1;
    if let Some(before) = state.moved_from.take() {
        counters.redirect_ticks_missed += snapshot.tick.saturating_sub(before + 1);
    }
    counters.keyframes += u64::from(snapshot.keyframe);
    match state.last_tick.get() {
        Some(previous) if snapshot.tick > previous => {
            counters.snapshots_expected += snapshot.tick - previous;
            counters.tick_gaps += snapshot.tick - previous - 1;
        }
        Some(_) => {}
        None => counters.snapshots_expected += 1,
    }
    state.last_tick.set(Some(snapshot.tick));
    if let Some(mine) = snapshot.players.iter().find(|p| p.id == state.player_id)
        && mine.seq > state.last_seen_seq.get()
    {
        state.last_seen_seq.set(mine.seq);
        let (slot_seq, intended_us) =
            state.intended.borrow()[(mine.seq % SEQ_WINDOW as u64) as usize];
        if slot_seq == mine.seq {
            recorder.histograms.record(
                Metric::InputToVisible,
                received_us.saturating_sub(intended_us),
            );
        }
    }
}

fn on_message(shared: &Shared, state: &SessionState, message: ServerMessage, received_us: u64) {
    match message {
        // Normally taken by the summary fast path; kept so both paths measure the same way.
        ServerMessage::Snapshot(snapshot) => {
            on_snapshot(
                shared,
                state,
                &SnapshotSummary::from(&snapshot),
                received_us,
            );
        }
        ServerMessage::Event { from, data, offset } => {
            saw_offset(state, offset);
            if from == state.player_id {
                let mut unechoed = state.unechoed.borrow_mut();
                // Echoes come in the order sent: the events before this one that never came
                // back were refused, and are not sent again.
                if let Some(at) = unechoed.iter().position(|sent| sent.0 == data.0) {
                    unechoed.drain(..=at);
                }
            }
            let mut recorder = shared.recorder.borrow_mut();
            recorder.counters.events_received += 1;
            if let Some(sent) = data.0.get(..8) {
                let sent_us = u64::from_be_bytes(sent.try_into().unwrap_or_default());
                recorder
                    .histograms
                    .record(Metric::Event, received_us.saturating_sub(sent_us));
            }
        }
        ServerMessage::Pong {
            client_time,
            server_time_us,
        } => {
            let rtt = received_us.saturating_sub(client_time as u64);
            state.clock.borrow_mut().add_sample(
                client_time,
                server_time_us as f64,
                received_us as f64,
            );
            let mut recorder = shared.recorder.borrow_mut();
            recorder.histograms.record(Metric::Rtt, rtt);
            recorder
                .clock
                .add_sample(client_time, server_time_us as f64, received_us as f64);
        }
        ServerMessage::Error { code, .. } => {
            shared.count(|c| c.error(format!("server_error:{}", code.as_str())))
        }
        ServerMessage::MemberJoined { offset, .. } | ServerMessage::MemberLeft { offset, .. } => {
            saw_offset(state, offset);
        }
        ServerMessage::MemberAway { offset, .. } | ServerMessage::MemberBack { offset, .. } => {
            saw_offset(state, Some(offset));
        }
        ServerMessage::Redirect { url, resume } => {
            *state.redirect.borrow_mut() = Some(Redirect { url, resume });
        }
        ServerMessage::Welcome { .. } => {}
    }
}

fn saw_offset(state: &SessionState, offset: Option<u64>) {
    if let Some(offset) = offset {
        state.offset.set(state.offset.get().max(offset));
    }
}
