//! Fast decoding of the two hottest messages: a client's `state` (the server decodes one per
//! input) and a snapshot summary (a measuring client decodes one per delivery).
//!
//! The general decoders go through serde's internally tagged enums, which buffer every field
//! of every message before choosing the variant (an allocation per field). These decode
//! straight into plain structs and check the `t` tag without allocating; anything they do not
//! recognise falls back to the general decoder, which owns the error reporting.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::{Codec, Payload, PlayerId};

/// The parts of a `snapshot` that a client measuring latency needs: no payloads, no copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub tick: u64,
    pub server_time_us: u64,
    pub keyframe: bool,
    /// Every player in the snapshot, without its data.
    pub players: Vec<PlayerSeq>,
}

/// A player in a snapshot: who, and which of its inputs the data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PlayerSeq {
    pub id: PlayerId,
    pub seq: u64,
}

trait TagName {
    const NAME: &'static str;
}

/// Accepts only the tag `N::NAME`, comparing in place.
struct Tag<N>(PhantomData<N>);

impl<'de, N: TagName> Deserialize<'de> for Tag<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expect<N>(PhantomData<N>);
        impl<N: TagName> Visitor<'_> for Expect<N> {
            type Value = Tag<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the tag {:?}", N::NAME)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag<N>, E> {
                self.visit_bytes(v.as_bytes())
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Tag<N>, E> {
                if v == N::NAME.as_bytes() {
                    Ok(Tag(PhantomData))
                } else {
                    Err(E::custom("another message type"))
                }
            }
        }
        deserializer.deserialize_str(Expect(PhantomData))
    }
}

struct StateTag;
impl TagName for StateTag {
    const NAME: &'static str = "state";
}

struct SnapshotTag;
impl TagName for SnapshotTag {
    const NAME: &'static str = "snapshot";
}

#[derive(Deserialize)]
struct StateWire {
    #[serde(rename = "t")]
    _tag: Tag<StateTag>,
    seq: u64,
    data: Payload,
}

// Fields spelled out rather than `#[serde(flatten)]`: flattening buffers like the enum does.
#[derive(Deserialize)]
struct SnapshotWire {
    #[serde(rename = "t")]
    _tag: Tag<SnapshotTag>,
    tick: u64,
    server_time_us: u64,
    keyframe: bool,
    players: Vec<PlayerSeq>,
}

impl Codec {
    /// Decodes a `state` message (`seq`, `data`) without the general decoder's buffering.
    /// None means "not a well-formed state": decode it with [`Codec::decode_client`] instead.
    pub fn decode_state(self, bytes: &[u8]) -> Option<(u64, Payload)> {
        self.decode_raw::<StateWire>(bytes)
            .ok()
            .map(|s| (s.seq, s.data))
    }

    /// Decodes the summary of a `snapshot` message, skipping payloads. None means "not a
    /// well-formed snapshot": decode it with [`Codec::decode_server`] instead.
    pub fn decode_snapshot_summary(self, bytes: &[u8]) -> Option<SnapshotSummary> {
        self.decode_raw::<SnapshotWire>(bytes)
            .ok()
            .map(|s| SnapshotSummary {
                tick: s.tick,
                server_time_us: s.server_time_us,
                keyframe: s.keyframe,
                players: s.players,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientMessage, PlayerState, ServerMessage, Snapshot};

    #[test]
    fn state_fast_path_agrees_with_the_general_decoder() {
        for codec in Codec::ALL {
            let state = ClientMessage::State {
                seq: 99,
                data: Payload::from(vec![1, 2, 3, 250]),
            };
            let bytes = codec.encode(&state).unwrap();
            let (seq, data) = codec.decode_state(&bytes).unwrap();
            assert_eq!(
                ClientMessage::State { seq, data },
                codec.decode_client(&bytes).unwrap()
            );
            // Other messages, even with a `seq` field, are not states.
            let event = codec
                .encode(&ClientMessage::Event {
                    data: Payload::from(vec![1]),
                })
                .unwrap();
            assert_eq!(codec.decode_state(&event), None);
            assert_eq!(codec.decode_state(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(
            Codec::Json.decode_state(br#"{"t":"event","seq":1,"data":""}"#),
            None
        );
    }

    #[test]
    fn snapshot_summary_matches_the_full_snapshot() {
        let snapshot = Snapshot {
            tick: 7,
            server_time_us: 1_700_000_000_000_001,
            keyframe: true,
            players: vec![
                PlayerState {
                    id: 3,
                    seq: 30,
                    data: Payload::from(vec![9; 40]),
                },
                PlayerState {
                    id: 4,
                    seq: 41,
                    data: Payload::default(),
                },
            ],
            removed: vec![8],
        };
        for codec in Codec::ALL {
            let bytes = codec
                .encode(&ServerMessage::Snapshot(snapshot.clone()))
                .unwrap();
            let summary = codec.decode_snapshot_summary(&bytes).unwrap();
            assert_eq!(
                (summary.tick, summary.server_time_us, summary.keyframe),
                (7, snapshot.server_time_us, true)
            );
            assert_eq!(
                summary.players,
                [PlayerSeq { id: 3, seq: 30 }, PlayerSeq { id: 4, seq: 41 }]
            );
            let pong = codec
                .encode(&ServerMessage::Pong {
                    client_time: 1.0,
                    server_time_us: 2,
                })
                .unwrap();
            assert_eq!(codec.decode_snapshot_summary(&pong), None);
        }
    }
}
