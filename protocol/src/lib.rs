//! tickrelay wire protocol v1: the message types clients and server exchange, and the two
//! codecs (MessagePack in binary frames, JSON in text frames) that put them on the wire.
//!
//! This crate does no I/O, knows no clock and no async runtime. It is the only place that calls
//! `rmp_serde` or `serde_json` for wire messages; see `PROTOCOL.md` for the byte-level contract.
//! `framing` is the WebSocket frame layer both the server and the load generator read with;
//! its async reader alone needs tokio, behind the `tokio` feature.

pub mod close;
mod codec;
mod fast;
pub mod framing;
mod handoff;
mod messages;
mod payload;
#[cfg(feature = "ticket")]
pub mod ticket;

pub use codec::{Codec, DecodeError, EncodeError, NegotiationError};
pub use fast::{PlayerSeq, SnapshotSummary};
pub use handoff::{HANDOFF_VERSION, Handoff, HandoffEntry, HandoffError, HandoffSeat};
pub use messages::{
    ClientMessage, ErrorCode, Member, PlayerId, PlayerState, Role, ServerMessage, Snapshot,
};
pub use payload::Payload;
