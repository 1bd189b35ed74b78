//! The messages of protocol v1. Every message is a map whose `t` field names its type in
//! snake_case; field names here are the wire names and must not be renamed.

use serde::{Deserialize, Serialize};

use crate::Payload;

/// A player's id, assigned by the server, unique within its lobby for the lobby's lifetime.
pub type PlayerId = u32;

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Join (and create if needed) a lobby. Must be the first message on a connection.
    Join {
        lobby: String,
        name: String,
        /// A signed join ticket (a JWT), required when the server verifies tickets. `token`,
        /// the name v1 reserved for it, is accepted as an alias.
        #[serde(default, alias = "token", skip_serializing_if = "Option::is_none")]
        ticket: Option<String>,
        /// Join as a spectator. Without tickets the client chooses; with tickets the ticket's
        /// `role` decides, and a player may only ask to watch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// Take back a seat this client held: the `resume` token of its last `welcome`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// With `resume`: the `offset` of the last reliable message received (or of the
        /// `welcome`, if none came after it); the server replays what came after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// This player's latest state; supersedes the previous one. `seq` is chosen by the client
    /// (normally increasing) and echoed in snapshots so it can measure input-to-visible time.
    State { seq: u64, data: Payload },
    /// Broadcast reliably and immediately to every member of the lobby, the sender included.
    Event { data: Payload },
    /// Leave the lobby; the server then closes the connection with 1000.
    Leave,
    /// Clock probe; echoed back in a `pong` with the server's time.
    Ping { client_time: f64 },
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Reply to `join`: who you are and who is already there.
    Welcome {
        player_id: PlayerId,
        lobby: String,
        tick_hz: u32,
        members: Vec<Member>,
        /// The lobby's reliable-message offset now: the next reliable message carries more.
        #[serde(default)]
        offset: u64,
        /// A single-use token to take this seat back after a dropped connection (absent when
        /// the server does not resume seats).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
        /// True when this `welcome` answers a resume: same `player_id`, and the reliable
        /// messages missed follow.
        #[serde(default)]
        resumed: bool,
        /// On a resume: reliable messages that could not be replayed (0 normally).
        #[serde(default)]
        lost: u64,
    },
    /// One lobby tick. See [`Snapshot`].
    Snapshot(Snapshot),
    /// An `event` sent by lobby member `from`.
    Event {
        from: PlayerId,
        data: Payload,
        /// The lobby's reliable-message offset (absent from older servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    MemberJoined {
        id: PlayerId,
        name: String,
        /// Absent from older servers' messages: a player.
        #[serde(default)]
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    MemberLeft {
        id: PlayerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// A member's connection dropped; its seat waits for it to resume (it stays in snapshots
    /// with its last state). `member_back` or `member_left` follows.
    MemberAway { id: PlayerId, offset: u64 },
    /// An away member resumed its seat.
    MemberBack { id: PlayerId, offset: u64 },
    Pong {
        client_time: f64,
        server_time_us: u64,
    },
    /// A request was refused; the connection stays open unless a close frame follows.
    Error {
        code: ErrorCode,
        message: String,
        /// With `overloaded`: how long to wait before trying again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// With `wrong_node`: the WebSocket URL of the node that runs the lobby.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// In a fleet, the lobby moved to another node (this one is draining): connect to `url`
    /// and `join` there with `resume` and the offset of the last reliable message received.
    /// The seat, its player id and the reliable messages not yet received wait there. Close
    /// 4008 follows.
    Redirect {
        url: String,
        /// The seat's resume token (absent when the server does not resume seats: join
        /// afresh there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
}

/// One lobby tick as seen by one member.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Lobby tick counter; increases by one per tick, so a gap means missed snapshots.
    pub tick: u64,
    /// Microseconds since the Unix epoch when the tick was sent.
    pub server_time_us: u64,
    /// True when `players` holds every player (replace your view); false for a delta.
    pub keyframe: bool,
    /// Players whose state changed since the last snapshot delivered to this member, or every
    /// player with a state on a keyframe.
    pub players: Vec<PlayerState>,
    /// Players that left since the last snapshot (always empty on a keyframe).
    pub removed: Vec<PlayerId>,
}

/// A player's latest state inside a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerState {
    pub id: PlayerId,
    /// The `seq` of the `state` message this data came from.
    pub seq: u64,
    pub data: Payload,
}

/// A lobby member as listed in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: PlayerId,
    pub name: String,
    /// Absent from older servers' messages: a player.
    #[serde(default)]
    pub role: Role,
    /// Its connection dropped and its seat waits for it to resume (sent only when true).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub away: bool,
}

/// What a member does in its lobby.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends states and events and appears in snapshots.
    #[default]
    Player,
    /// Receives snapshots and events, never appears in `players`, may send neither.
    Spectator,
}

impl Role {
    /// The wire name, e.g. `spectator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Player => "player",
            Self::Spectator => "spectator",
        }
    }
}

/// Stable machine-readable reason carried by an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A message could not be decoded; the connection is closed right after (close 1007).
    BadMessage,
    /// A well-formed message of a type this server does not know; it was ignored.
    UnknownMessage,
    /// `state` or `event` before `join` (a `leave` before `join` just closes with 1000).
    NotJoined,
    /// A second `join` on the same connection.
    AlreadyJoined,
    /// The lobby already has the maximum number of members.
    LobbyFull,
    /// The server already runs the maximum number of lobbies.
    TooManyLobbies,
    /// Lobby or player name empty, too long or with control characters.
    InvalidJoin,
    /// A `state` whose data is larger than the server's state size limit; it was dropped.
    StateTooLarge,
    /// An `event` whose data is larger than the server's event size limit; it was dropped.
    EventTooLarge,
    /// A join without a valid ticket while the server requires one (missing, forged, expired,
    /// not yet valid, for another lobby); the connection is closed right after (close 4005).
    Unauthorized,
    /// A request the member's role does not allow (a spectator sending `state` or `event`);
    /// the message was dropped.
    Forbidden,
    /// The server (or the lobby) is over a budget; `retry_after_ms` says when to come back. A
    /// close follows when the connection itself was shed (close 1013).
    Overloaded,
    /// A `join` with `resume` whose seat cannot be taken back (expired, already used, forged,
    /// for another lobby, or the lobby is gone). The connection stays: join afresh.
    SeatExpired,
    /// In a fleet (`--redis`), the lobby runs on another node: `url` names it. Connect there
    /// and join again (the connection stays open, unjoined).
    WrongNode,
    /// Any code added by a newer server; clients should treat it as a generic error.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name, e.g. `lobby_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::UnknownMessage => "unknown_message",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::LobbyFull => "lobby_full",
            Self::TooManyLobbies => "too_many_lobbies",
            Self::InvalidJoin => "invalid_join",
            Self::StateTooLarge => "state_too_large",
            Self::EventTooLarge => "event_too_large",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Overloaded => "overloaded",
            Self::SeatExpired => "seat_expired",
            Self::WrongNode => "wrong_node",
            Self::Unknown => "unknown",
        }
    }
}

impl ClientMessage {
    /// Every `t` value this version understands, used to tell unknown types from malformed ones.
    pub const TYPES: &'static [&'static str] = &["join", "state", "event", "leave", "ping"];
}

impl ServerMessage {
    /// Every `t` value this version sends, used to tell unknown types from malformed ones.
    pub const TYPES: &'static [&'static str] = &[
        "welcome",
        "snapshot",
        "event",
        "member_joined",
        "member_left",
        "member_away",
        "member_back",
        "pong",
        "error",
        "redirect",
    ];
}
