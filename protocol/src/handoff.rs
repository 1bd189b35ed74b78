//! A lobby handed from one fleet node to another (a drain): what the new owner needs to run
//! it on with the same seats, player ids and reliable history, so members resume there as if
//! they had only reconnected. It travels between nodes of one fleet through Redis, encoded
//! with MessagePack; it is not part of the client protocol, and `v` refuses a record another
//! version wrote.

use serde::{Deserialize, Serialize};

use crate::{PlayerId, PlayerState, Role, ServerMessage};

/// The handoff format this build writes and reads.
pub const HANDOFF_VERSION: u32 = 1;

/// A lobby as its old owner left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub v: u32,
    pub lobby: String,
    /// The lobby's instance: resume tokens name it, so the moved lobby keeps it.
    pub instance: u64,
    /// The last tick sent; the new owner's first is the next one, so members count the
    /// snapshots the move cost them as a gap.
    pub tick: u64,
    pub next_player_id: PlayerId,
    /// The offset of the last reliable message.
    pub offset: u64,
    pub seats: Vec<HandoffSeat>,
    /// The reliable history kept for resumes, oldest first.
    pub history: Vec<HandoffEntry>,
    /// Not handed over but rebuilt after its node died, from what that node last reported
    /// (instance, ids, offset, tick): no seats, no history. Members come back one by one
    /// with their resume tokens, which then create their seats.
    #[serde(default)]
    pub recovered: bool,
}

/// One seat, to be taken back by its member's resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffSeat {
    pub id: PlayerId,
    pub name: String,
    pub identity: Option<String>,
    pub role: Role,
    /// The connection that held the seat (the resume token names it).
    pub holder: u32,
    pub state: Option<PlayerState>,
    /// Already away on the old owner: milliseconds left of its grace (the others were told,
    /// so its return is announced). `None`: connected until the move.
    pub away_ms: Option<u64>,
}

/// One reliable message of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffEntry {
    pub offset: u64,
    /// How long before the handoff it was sent (the history's age bound goes on counting).
    pub age_ms: u64,
    /// The member it is about, who is not sent it on a resume.
    pub subject: Option<PlayerId>,
    /// What keeping it costs, as the history counts it.
    pub size: u64,
    pub message: ServerMessage,
}

/// A handoff record that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("undecodable handoff record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("handoff record of version {0}, this node reads version {HANDOFF_VERSION}")]
    Version(u32),
}

impl Handoff {
    pub fn encode(&self) -> Vec<u8> {
        // Invariant: every field is a type MessagePack represents (as for `ServerMessage`).
        rmp_serde::to_vec_named(self).expect("a handoff always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HandoffError> {
        let handoff: Self = rmp_serde::from_slice(bytes)?;
        if handoff.v != HANDOFF_VERSION {
            return Err(HandoffError::Version(handoff.v));
        }
        Ok(handoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;

    #[test]
    fn a_handoff_round_trips_and_another_version_is_refused() {
        let mut handoff = Handoff {
            v: HANDOFF_VERSION,
            lobby: "arena".into(),
            instance: 42,
            tick: 900,
            next_player_id: 3,
            offset: 7,
            seats: vec![HandoffSeat {
                id: 1,
                name: "ann".into(),
                identity: Some("user-1".into()),
                role: Role::Player,
                holder: 2,
                state: Some(PlayerState {
                    id: 1,
                    seq: 5,
                    data: Payload::from(vec![0, 159, 255]),
                }),
                away_ms: None,
            }],
            history: vec![HandoffEntry {
                offset: 7,
                age_ms: 120,
                subject: None,
                size: 67,
                message: ServerMessage::Event {
                    from: 1,
                    data: Payload::from(vec![1, 2, 3]),
                    offset: Some(7),
                },
            }],
            recovered: false,
        };
        assert_eq!(Handoff::decode(&handoff.encode()).unwrap(), handoff);
        handoff.v = HANDOFF_VERSION + 1;
        assert!(matches!(
            Handoff::decode(&handoff.encode()),
            Err(HandoffError::Version(_))
        ));
        assert!(Handoff::decode(b"\x93garbage").is_err());
    }
}
