//! One WebSocket connection after the upgrade: reads frames, reassembles and decodes
//! messages, enforces the per-connection limits, puts states into the member's input slot and
//! turns other messages into lobby commands. It never mutates lobby state itself and never
//! writes to the socket itself: the tick writes directly, and the read loop runs the writer's
//! flush when the outbox holds more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tickrelay_protocol::framing::reader::{FrameReader, ReadError};
use tickrelay_protocol::framing::{self, CloseCheck, Kind, Reassembler, check_close};
use tickrelay_protocol::{
    ClientMessage, Codec, DecodeError, ErrorCode, Payload, Role, ServerMessage, close,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use super::Endpoint;
use super::rate::RateLimit;
use super::writer::{WriteSide, Writer, WriterEnd};
use crate::clock::unix_micros;
use crate::config::Config;
use crate::context::ServerContext;
use crate::lobby::{
    Command, InputSlot, JoinAccepted, JoinRefusal, JoinRequest, Joiner, LobbyStopped, Seat,
};
use crate::outbox::{DirectSink, Outbox};

/// How long, after the server decided to close, the reader waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why a connection ended, as logged and counted in `tickrelay_disconnects{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The client sent a close frame with this code (1000 for an empty one).
    PeerClosed(u16),
    /// The socket ended without a close frame (crash, network loss).
    PeerVanished,
    /// The server closed with this code.
    ServerClosed(u16),
    /// The client stopped reading and a write stalled.
    WriteStalled,
}

impl EndReason {
    /// Whether the connection ended in a way its client did not choose and may resume from.
    fn keeps_seat(self) -> bool {
        match self {
            Self::PeerVanished | Self::WriteStalled => true,
            Self::PeerClosed(code) => code != close::NORMAL,
            Self::ServerClosed(code) => matches!(code, close::IDLE_TIMEOUT | close::SLOW_CONSUMER),
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::PeerClosed(_) => "peer_closed",
            Self::PeerVanished => "peer_vanished",
            Self::WriteStalled => "write_stalled",
            Self::ServerClosed(code) => match code {
                close::NORMAL => "leave",
                close::GOING_AWAY => "shutdown",
                close::PROTOCOL_ERROR => "protocol_error",
                close::UNSUPPORTED_DATA => "unsupported_data",
                close::INVALID_PAYLOAD => "bad_message",
                close::MESSAGE_TOO_BIG => "message_too_big",
                close::TRY_AGAIN_LATER => "server_full",
                close::RATE_LIMITED => "rate_limited",
                close::SLOW_CONSUMER => "slow_consumer",
                close::IDLE_TIMEOUT => "idle_timeout",
                close::JOIN_TIMEOUT => "join_timeout",
                close::UNAUTHORIZED => "unauthorized",
                close::REPLACED => "replaced",
                _ => "internal_error",
            },
        }
    }
}

/// What the upgrade decided about a connection.
pub(crate) struct Setup {
    pub(crate) codec: Codec,
    pub(crate) peer: SocketAddr,
    /// Close at once with this code (the server is full).
    pub(crate) refuse: Option<u16>,
    pub(crate) endpoint: Endpoint,
}

/// Serves one upgraded connection to its end. `read`/`write` are the two halves of the
/// stream (plain TCP, or TLS over it); `direct` is the socket again (TCP's write half, or the
/// TLS session) when the tick may write snapshots straight into it.
pub(crate) async fn serve<R, W>(
    ctx: Arc<ServerContext>,
    read: R,
    write: W,
    direct: Option<Arc<dyn DirectSink>>,
    setup: Setup,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Setup {
        codec,
        peer,
        refuse,
        endpoint,
    } = setup;
    let config = &ctx.config;
    // A child of the server's shutdown token: shutdown stops the read loop like a close
    // decision, and the loop turns it into 1001.
    let outbox = Arc::new(Outbox::new(
        config.max_queued_messages,
        config.max_queued_bytes,
        codec.frame_kind(),
        direct,
        ctx.shutdown.child_token(),
    ));
    let mut writer = WriteSide::new(Writer {
        socket: write,
        outbox: outbox.clone(),
        ctx: ctx.clone(),
    });

    // Frames larger than a whole message are refused from their header; messages reassembled
    // from several frames are checked by the session's `Reassembler`.
    let mut ws = FrameReader::new(read, framing::Role::Server, config.max_message_size);

    let mut session = Session::new(&ctx, outbox.clone(), codec, endpoint);
    if let Some(code) = refuse {
        // Shed after the upgrade (a browser cannot read an HTTP status): say when to return.
        session.send_error_retry(
            ErrorCode::Overloaded,
            "server full: no connection slot free".into(),
            Some(super::FULL_RETRY_AFTER),
        );
        outbox.close(code);
    }
    let mut end = session.read_loop(&mut ws, &mut writer).await;
    let player = session.player_id();
    if let Some(joined) = session.joined.take() {
        let seat = joined.seat;
        // A connection that ends without meaning to (dropped, timed out, too slow) leaves its
        // seat away for a resume; `leave`, a normal close and misbehaviour leave it for good.
        let command = if end.keeps_seat() {
            Command::Away { seat }
        } else {
            Command::Leave { seat }
        };
        let _ = Box::pin(joined.lobby.send(command)).await;
    }
    // Write what is left, ending with the close frame. After a server-side close, meanwhile
    // keep reading (and discarding) until the client answers it, so the kernel does not reset
    // the connection with our close frame still unread by the client.
    outbox.close(close::NORMAL);
    let linger = async {
        if matches!(end, EndReason::ServerClosed(_)) {
            while let Ok(frame) = ws.next_frame().await {
                if frame.kind == Kind::Close {
                    break;
                }
            }
        }
    };
    let (_, written) = Box::pin(async {
        tokio::join!(
            timeout(CLOSE_LINGER, linger),
            timeout(CLOSE_LINGER, writer.finish())
        )
    })
    .await;
    if let Ok(Some(WriterEnd::Stalled)) = written {
        end = EndReason::WriteStalled;
    }
    // Whatever the lobby did not take (or all of it, if the connection never joined).
    let counts = session.input.take_counts();
    ctx.metrics.messages_in.inc_by(counts.messages);
    ctx.metrics.bytes_in.inc_by(counts.bytes);
    ctx.metrics.disconnect(end.label());
    info!(
        %peer,
        player,
        reason = end.label(),
        messages_in = session.messages_in,
        "connection closed"
    );
}

struct Joined {
    lobby: crate::lobby::LobbyHandle,
    seat: Seat,
    role: Role,
}

struct Session<'a> {
    ctx: &'a Arc<ServerContext>,
    outbox: Arc<Outbox>,
    /// Where this player's states go once joined (the lobby takes the newest at each tick).
    input: Arc<InputSlot>,
    codec: Codec,
    joined: Option<Joined>,
    /// The echo endpoint: messages go back to the peer, not to a lobby.
    echo: bool,
    state_limit: RateLimit,
    event_limit: RateLimit,
    messages: Reassembler,
    /// Messages received in all (for the log line; the metrics count them through `input`).
    messages_in: u64,
}

/// What [`Session::on_message`] did with a message.
enum Handled {
    Done(Flow),
    /// It waits for the lobby.
    ForLobby(LobbyRequest),
}

enum LobbyRequest {
    /// Boxed: the largest variant sets the size of what the read loop holds.
    Join(Box<JoinMessage>),
    Event(Payload),
}

/// A `join`'s fields.
struct JoinMessage {
    lobby: String,
    name: String,
    ticket: Option<String>,
    role: Option<Role>,
    resume: Option<String>,
    offset: Option<u64>,
}

/// What to do after one message.
enum Flow {
    Continue,
    End(EndReason),
}

impl<'a> Session<'a> {
    fn new(
        ctx: &'a Arc<ServerContext>,
        outbox: Arc<Outbox>,
        codec: Codec,
        endpoint: Endpoint,
    ) -> Self {
        let now = std::time::Instant::now();
        let echo = endpoint == Endpoint::Echo;
        // The relay takes the codec's frame kind only; the echo endpoint takes both.
        let kind = (!echo).then(|| codec.frame_kind());
        Self {
            ctx,
            outbox,
            input: Arc::default(),
            codec,
            joined: None,
            echo,
            state_limit: RateLimit::new(ctx.config.max_state_rate, now),
            event_limit: RateLimit::new(ctx.config.max_event_rate, now),
            messages: Reassembler::new(kind, ctx.config.max_message_size),
            messages_in: 0,
        }
    }

    fn player_id(&self) -> Option<u32> {
        self.joined.as_ref().map(|joined| joined.seat.id)
    }

    /// Decides to close with `code`. The first decision wins (an overflow in the lobby's
    /// fan-out may have come first), and the reason reported is the code actually sent.
    fn close(&self, code: u16) -> Flow {
        Flow::End(close_with(&self.outbox, code))
    }

    /// Reads and handles messages until the connection ends, and meanwhile flushes the outbox
    /// whenever it holds what the tick could not write directly, and sends keep-alive pings.
    async fn read_loop<R, W>(
        &mut self,
        ws: &mut FrameReader<R>,
        writer: &mut WriteSide<W>,
    ) -> EndReason
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        // Durations are read from the configuration where used, not copied into locals: every
        // local that lives across an await widens every connection's task.
        let ctx: &'a Arc<ServerContext> = self.ctx;
        let config = &ctx.config;
        let join_deadline = Instant::now() + config.handshake_timeout;
        let mut next_ping = Instant::now() + config.ping_interval;
        let outbox = self.outbox.clone();
        // One timer, one cancellation future and one outbox waiter for the connection's whole
        // life: creating them per frame costs a timer-wheel insert and removal and a waiter
        // registration for every message. The timer serves the join, idle and ping deadlines
        // and is checked lazily: when it fires early it is re-armed.
        let closing = outbox.closing().clone().cancelled_owned();
        tokio::pin!(closing);
        let deadline = tokio::time::sleep_until(join_deadline.min(next_ping));
        tokio::pin!(deadline);
        let pushed = outbox.notified();
        tokio::pin!(pushed);
        let mut last_activity = Instant::now();
        loop {
            // The echo endpoint never joins: it is held to the idle timeout from the start.
            let joined = self.joined.is_some() || self.echo;
            let read = {
                // One read future stays alive across timer checks and flushes (creating one per
                // wake-up would cost more); it is cancel-safe, so the close linger after the
                // loop resumes whatever frame it had begun.
                let read = ws.next_frame();
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut closing => {
                            // A close was decided elsewhere (the lobby's fan-out: that code
                            // stands), or the server is shutting down (1001).
                            return close_with(&outbox, close::GOING_AWAY);
                        }
                        read = &mut read => break read,
                        () = &mut pushed, if !writer.is_flushing() => {
                            pushed.set(outbox.notified());
                            writer.start();
                        }
                        end = writer.progress(), if writer.is_flushing() => match end {
                            None | Some(WriterEnd::Closed) => {}
                            Some(WriterEnd::WriteFailed) => return EndReason::PeerVanished,
                            Some(WriterEnd::Stalled) => return EndReason::WriteStalled,
                        },
                        () = &mut deadline => {
                            let now = Instant::now();
                            if now >= next_ping {
                                // Through the outbox, so the ping never interleaves with a
                                // direct write.
                                outbox.push_ping();
                                next_ping = now + config.ping_interval;
                            }
                            let (due, code) = if joined {
                                (last_activity + config.idle_timeout, close::IDLE_TIMEOUT)
                            } else {
                                (join_deadline, close::JOIN_TIMEOUT)
                            };
                            if now >= due {
                                return close_with(&outbox, code);
                            }
                            deadline.as_mut().reset(due.min(next_ping));
                        }
                    }
                }
            };
            last_activity = Instant::now();
            let frame = match read {
                Err(err) => return self.on_read_error(err),
                Ok(frame) => frame,
            };
            let flow = match frame.kind {
                Kind::Close => self.on_close(frame.payload.freeze()),
                // Pings cost a pong write each; unsolicited pongs are legal and free to send.
                Kind::Ping => self.over_event_rate().unwrap_or_else(|| {
                    self.outbox.push_pong(frame.payload.freeze());
                    Flow::Continue
                }),
                Kind::Pong => self.over_event_rate().unwrap_or(Flow::Continue),
                Kind::Text | Kind::Binary | Kind::Continuation => {
                    match self.messages.push(frame.kind, frame.fin, frame.payload) {
                        Ok(Some(message)) if self.echo => self.on_echo(message),
                        Ok(Some(message)) => match self.on_message(&message.payload) {
                            Handled::Done(flow) => flow,
                            // Boxed: joins and events are rare, and awaiting them inline
                            // would size every connection's task for them.
                            Handled::ForLobby(message) => {
                                Box::pin(self.on_lobby_message(message)).await
                            }
                        },
                        Ok(None) => Flow::Continue,
                        Err(code) => self.close(code),
                    }
                }
            };
            if let Flow::End(reason) = flow {
                return reason;
            }
            if !joined && self.joined.is_some() {
                deadline
                    .as_mut()
                    .reset((last_activity + config.idle_timeout).min(next_ping));
            }
        }
    }

    fn on_read_error(&self, err: ReadError) -> EndReason {
        match err {
            ReadError::Eof | ReadError::Io(_) => EndReason::PeerVanished,
            ReadError::Frame(err) => close_with(&self.outbox, err.close_code()),
        }
    }

    /// The client closes: echo its close (RFC 6455 5.5.1), or answer an invalid one with 1002
    /// (bad code or one-byte payload) or 1007 (reason not UTF-8).
    fn on_close(&self, payload: Bytes) -> Flow {
        match check_close(&payload) {
            CloseCheck::Valid(code) => {
                self.outbox.close_with_payload(code, payload);
                Flow::End(EndReason::PeerClosed(code))
            }
            CloseCheck::Invalid(code) => self.close(code),
        }
    }

    /// The echo endpoint: the message goes back as it came, charged to the event rate like
    /// anything else that costs a write.
    fn on_echo(&mut self, message: framing::Message) -> Flow {
        self.messages_in += 1;
        self.input.count(message.payload.len());
        self.over_event_rate().unwrap_or_else(|| {
            // Refused only when closing, or on overflow (closing with 4002).
            let _ = self.outbox.push_message(message.kind, message.payload);
            Flow::Continue
        })
    }

    /// Handles a message that needs no waiting (states, pings, errors); joins and events go
    /// back to the caller for [`on_lobby_message`](Self::on_lobby_message).
    fn on_message(&mut self, message: &[u8]) -> Handled {
        self.messages_in += 1;
        // Most messages are states: decode those without the general decoder's buffering.
        let decoded = match self.codec.decode_state(message) {
            Some((seq, data)) => Ok(ClientMessage::State { seq, data }),
            None => self.codec.decode_client(message),
        };
        // Every message is counted in the member's input slot, which the tick empties into
        // the metrics: states when they are put there, everything else here.
        if !matches!(decoded, Ok(ClientMessage::State { .. })) {
            self.input.count(message.len());
        }
        let bytes = message.len();
        let message = match decoded {
            Ok(message) => message,
            Err(DecodeError::UnknownType(t)) => {
                // Each answer costs a write: charged like an event.
                if let Some(flow) = self.over_event_rate() {
                    return Handled::Done(flow);
                }
                self.send_error(
                    ErrorCode::UnknownMessage,
                    format!("unknown message type {t:?}, ignored"),
                );
                return Handled::Done(Flow::Continue);
            }
            Err(err @ DecodeError::Malformed { .. }) => {
                self.send_error(ErrorCode::BadMessage, err.to_string());
                return Handled::Done(self.close(close::INVALID_PAYLOAD));
            }
        };
        let now = std::time::Instant::now();
        let flow = match message {
            ClientMessage::Join {
                lobby,
                name,
                ticket,
                role,
                resume,
                offset,
            } => {
                // A refused join costs a token too: verifying a ticket is CPU an attacker
                // could otherwise spend at will.
                if let Some(flow) = self.over_event_rate() {
                    return Handled::Done(flow);
                }
                return Handled::ForLobby(LobbyRequest::Join(Box::new(JoinMessage {
                    lobby,
                    name,
                    ticket,
                    role,
                    resume,
                    offset,
                })));
            }
            ClientMessage::Event { data } => {
                if let Some(flow) = self.over_event_rate() {
                    return Handled::Done(flow);
                }
                if self.spectating("event") {
                    return Handled::Done(Flow::Continue);
                }
                if self.over_size(
                    ErrorCode::EventTooLarge,
                    "event",
                    &data,
                    self.ctx.config.max_event_size,
                ) {
                    return Handled::Done(Flow::Continue);
                }
                return Handled::ForLobby(LobbyRequest::Event(data));
            }
            ClientMessage::State { seq, data } => match self.refuse_state(now, &data) {
                Some(flow) => {
                    self.input.count(bytes);
                    flow
                }
                None => {
                    self.input.put(seq, data, bytes);
                    Flow::Continue
                }
            },
            ClientMessage::Ping { client_time } => self.over_event_rate().unwrap_or_else(|| {
                let pong = ServerMessage::Pong {
                    client_time,
                    server_time_us: unix_micros(),
                };
                self.send(&pong);
                Flow::Continue
            }),
            ClientMessage::Leave => self.close(close::NORMAL),
        };
        Handled::Done(flow)
    }

    /// Charges one message or control frame (everything but a `state`) to the event rate:
    /// `Some` (closing with 4001) when over it.
    fn over_event_rate(&mut self) -> Option<Flow> {
        let allowed = self
            .event_limit
            .allow(std::time::Instant::now(), self.ctx.config.max_event_rate);
        (!allowed).then(|| self.close(close::RATE_LIMITED))
    }

    /// Why a `state` does not go into the input slot, if it does not: over the rate (closes),
    /// before `join`, from a spectator or over the size limit (dropped).
    fn refuse_state(&mut self, now: std::time::Instant, data: &Payload) -> Option<Flow> {
        if !self.state_limit.allow(now, self.ctx.config.max_state_rate) {
            Some(self.close(close::RATE_LIMITED))
        } else if self.joined.is_none() {
            Some(self.not_joined())
        } else if self.spectating("state")
            || self.over_size(
                ErrorCode::StateTooLarge,
                "state",
                data,
                self.ctx.config.max_state_size,
            )
        {
            Some(Flow::Continue)
        } else {
            None
        }
    }

    /// Refuses (`forbidden`) a `state` or `event` from a spectator; the message is dropped.
    fn spectating(&self, kind: &str) -> bool {
        let spectator = self
            .joined
            .as_ref()
            .is_some_and(|joined| joined.role == Role::Spectator);
        if spectator {
            self.send_error(
                ErrorCode::Forbidden,
                format!("spectators may not send {kind}; dropped"),
            );
        }
        spectator
    }

    /// Refuses (with `code`) a `state` or `event` whose data is over its size limit; the
    /// message is dropped and the connection stays.
    fn over_size(&self, code: ErrorCode, kind: &str, data: &Payload, limit: usize) -> bool {
        let over = data.len() > limit;
        if over {
            let size = data.len();
            self.send_error(
                code,
                format!("{kind} of {size} bytes is over the limit of {limit}; dropped"),
            );
        }
        over
    }

    /// Joins and events: both wait for the lobby.
    async fn on_lobby_message(&mut self, request: LobbyRequest) -> Flow {
        match request {
            LobbyRequest::Join(join) => self.on_join(*join).await,
            LobbyRequest::Event(data) => {
                self.forward_to_lobby(|seat| Command::Event { seat, data })
                    .await
            }
        }
    }

    async fn on_join(&mut self, join: JoinMessage) -> Flow {
        let JoinMessage {
            lobby,
            name,
            ticket,
            role,
            resume,
            offset,
        } = join;
        if self.joined.is_some() {
            self.send_error(
                ErrorCode::AlreadyJoined,
                "this connection already joined a lobby".into(),
            );
            return Flow::Continue;
        }
        if let Err(problem) = validate_name("lobby", &lobby, Config::MAX_LOBBY_NAME) {
            self.send_error(ErrorCode::InvalidJoin, problem);
            return Flow::Continue;
        }
        // A resume token proves the seat: no ticket needed.
        let (joiner, resume) = match resume {
            Some(token) => match self.resume_request(&lobby, &token, offset) {
                Some((joiner, resume)) => (joiner, Some(resume)),
                None => return Flow::Continue,
            },
            None => match self.joiner(&lobby, name, ticket, role) {
                Ok(joiner) => (joiner, None),
                Err(flow) => return flow,
            },
        };
        let request = JoinRequest {
            lobby,
            joiner,
            codec: self.codec,
            outbox: self.outbox.clone(),
            input: self.input.clone(),
            resume,
        };
        match self.ctx.directory.join(request).await {
            Ok(JoinAccepted { lobby, seat, role }) => {
                self.joined = Some(Joined { lobby, seat, role });
            }
            Err(JoinRefusal {
                code,
                message,
                retry_after,
                url,
            }) => {
                if code == ErrorCode::SeatExpired {
                    self.ctx.metrics.resume("expired");
                }
                self.send_refusal(code, message, retry_after, url);
            }
        }
        Flow::Continue
    }

    /// The seat a resume token names, and who holds it, for a join to `lobby`; refused
    /// (`seat_expired`, the connection stays) when the token is not this server's or is for
    /// another lobby.
    fn resume_request(
        &self,
        lobby: &str,
        token: &str,
        offset: Option<u64>,
    ) -> Option<(Joiner, crate::lobby::ResumeRequest)> {
        let claims = self
            .ctx
            .resume_keys
            .verify(token)
            .filter(|claims| claims.lobby == lobby);
        let Some(claims) = claims else {
            self.ctx.metrics.resume("expired");
            self.send_error(
                ErrorCode::SeatExpired,
                "this resume token is not valid for this lobby: join afresh".into(),
            );
            return None;
        };
        let resume = crate::lobby::ResumeRequest {
            instance: claims.instance,
            player_id: claims.player_id,
            holder: claims.holder,
            // Without an offset, everything the history still holds.
            offset: offset.unwrap_or(0),
        };
        let joiner = Joiner {
            name: claims.name,
            identity: claims.identity,
            role: claims.role,
        };
        Some((joiner, resume))
    }

    /// Who joins: from the ticket when the server requires one (a refused ticket closes the
    /// connection with 4005), else as the client says.
    fn joiner(
        &self,
        lobby: &str,
        name: String,
        ticket: Option<String>,
        asked: Option<Role>,
    ) -> Result<Joiner, Flow> {
        let Some(verifier) = &self.ctx.tickets else {
            if let Err(problem) = validate_name("name", &name, Config::MAX_PLAYER_NAME) {
                self.send_error(ErrorCode::InvalidJoin, problem);
                return Err(Flow::Continue);
            }
            return Ok(Joiner {
                name,
                identity: None,
                role: asked.unwrap_or_default(),
            });
        };
        let now_secs = unix_micros() / 1_000_000;
        let verified = verifier
            .verify(ticket.as_deref(), lobby, now_secs)
            .and_then(|ticket| {
                validate_name("name", &ticket.name, Config::MAX_PLAYER_NAME)
                    .map(|()| ticket)
                    .map_err(tickrelay_protocol::ticket::TicketRefusal::BadClaims)
            });
        let ticket = match verified {
            Ok(ticket) => ticket,
            Err(refused) => {
                self.ctx.metrics.ticket_refused(refused.reason());
                self.send_error(ErrorCode::Unauthorized, refused.to_string());
                return Err(self.close(close::UNAUTHORIZED));
            }
        };
        self.ctx.metrics.tickets_accepted.inc();
        // A player may choose to watch; a spectator's ticket never makes a player.
        let role = match (ticket.role, asked) {
            (Role::Spectator, Some(Role::Player)) => {
                self.send_error(
                    ErrorCode::Forbidden,
                    "this ticket admits a spectator, not a player".into(),
                );
                return Err(Flow::Continue);
            }
            (role, None) => role,
            (_, Some(asked)) => asked,
        };
        Ok(Joiner {
            name: ticket.name,
            identity: Some(ticket.sub),
            role,
        })
    }

    async fn forward_to_lobby(&mut self, command: impl FnOnce(Seat) -> Command) -> Flow {
        let Some(joined) = &self.joined else {
            return self.not_joined();
        };
        match joined.lobby.send(command(joined.seat)).await {
            Ok(()) => Flow::Continue,
            // The lobby stops first when the server shuts down: that is a shutdown (1001),
            // not an internal error.
            Err(LobbyStopped) if self.ctx.shutdown.is_cancelled() => self.close(close::GOING_AWAY),
            Err(LobbyStopped) => self.close(close::INTERNAL_ERROR),
        }
    }

    fn not_joined(&self) -> Flow {
        self.send_error(ErrorCode::NotJoined, "send join first".into());
        Flow::Continue
    }

    fn send(&self, message: &ServerMessage) {
        // Refused only when closing (nothing more goes out) or on overflow (closing with 4002).
        let _ = self.outbox.push_reliable(self.codec.encode_server(message));
    }

    /// Refuses one request. Logged at debug only: `tickrelay_errors_sent` counts these, and a
    /// misbehaving client must not be able to flood the log.
    fn send_error(&self, code: ErrorCode, message: String) {
        self.send_error_retry(code, message, None);
    }

    /// [`send_error`](Self::send_error) telling the client when to try again.
    fn send_error_retry(&self, code: ErrorCode, message: String, retry_after: Option<Duration>) {
        self.send_refusal(code, message, retry_after, None);
    }

    /// [`send_error_retry`](Self::send_error_retry), with `url` for `wrong_node`.
    fn send_refusal(
        &self,
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
        url: Option<String>,
    ) {
        debug!(player = self.player_id(), code = code.as_str(), %message, "refused client request");
        self.ctx.metrics.error_sent(code.as_str());
        self.send(&ServerMessage::Error {
            code,
            message,
            retry_after_ms: retry_after.map(|wait| wait.as_millis() as u64),
            url,
        });
    }
}

/// Decides to close with `code` and returns the reason to report: the code the close frame
/// carries, which is an earlier decision's if there was one.
fn close_with(outbox: &Outbox, code: u16) -> EndReason {
    outbox.close(code);
    EndReason::ServerClosed(outbox.close_code().unwrap_or(code))
}

pub(crate) fn validate_name(what: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes long"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(())
}
