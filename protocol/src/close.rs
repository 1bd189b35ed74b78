//! WebSocket close codes the server sends, and what each means. Codes 4000–4999 are
//! tickrelay's own; PROTOCOL.md lists the same table.

/// Normal closure: the client sent `leave`, or closed first.
pub const NORMAL: u16 = 1000;
/// The server is shutting down (or restarting); reconnect later.
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol (bad frame, bad fragmentation, invalid close).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A frame of the wrong kind for the negotiated codec (text on msgpack, binary on json).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A message that could not be decoded as a protocol v1 message.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A message larger than the server's maximum message size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server hit an unexpected internal error on this connection.
pub const INTERNAL_ERROR: u16 = 1011;
/// The server is at its connection limit; retry later (possibly on another node).
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The client sent `state` messages, or `event`, `ping`, `join`, unknown messages and ping or
/// pong frames, faster than the server's per-connection limits.
pub const RATE_LIMITED: u16 = 4001;
/// The client did not read fast enough: its reliable queue (events, joins, leaves) overflowed,
/// or its socket took no byte for the write timeout.
pub const SLOW_CONSUMER: u16 = 4002;
/// Nothing was received for longer than the idle timeout (pings went unanswered).
pub const IDLE_TIMEOUT: u16 = 4003;
/// No `join` arrived within the handshake timeout after the WebSocket opened.
pub const JOIN_TIMEOUT: u16 = 4004;

/// The join's ticket was refused (preceded by `error` `unauthorized` with the reason).
pub const UNAUTHORIZED: u16 = 4005;
/// Another connection joined with the same identity (ticket `sub`) and took this seat over.
pub const REPLACED: u16 = 4006;
/// In a fleet, this node lost the lobby's lease (it was cut off from Redis, or paused, for
/// longer than the lease): it stopped the lobby so that two nodes never run it. Route again
/// (`GET /route`) and resume the seat where the route points.
pub const LEASE_LOST: u16 = 4007;
/// In a fleet, the lobby moved to another node (a drain): the `redirect` message sent just
/// before says where, with the seat's resume token.
pub const MOVED: u16 = 4008;

/// The short reason sent with a close code (fits the 123-byte limit of a close frame).
pub fn reason(code: u16) -> &'static str {
    match code {
        NORMAL => "bye",
        GOING_AWAY => "server shutting down",
        PROTOCOL_ERROR => "websocket protocol error",
        UNSUPPORTED_DATA => "wrong frame type for negotiated subprotocol",
        INVALID_PAYLOAD => "undecodable message",
        MESSAGE_TOO_BIG => "message too big",
        INTERNAL_ERROR => "internal error",
        TRY_AGAIN_LATER => "server full",
        RATE_LIMITED => "message rate limit exceeded",
        SLOW_CONSUMER => "client reads too slowly",
        IDLE_TIMEOUT => "idle timeout",
        JOIN_TIMEOUT => "no join within handshake timeout",
        UNAUTHORIZED => "ticket refused",
        REPLACED => "seat taken over by a newer connection",
        LEASE_LOST => "lobby lease lost: route again",
        MOVED => "lobby moved: follow the redirect",
        _ => "",
    }
}
