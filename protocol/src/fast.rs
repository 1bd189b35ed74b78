//! Fast decoding of the two hottest messages: a client's `state` (the server decodes one per
//! input) and a snapshot summary (a measuring client decodes one per delivery).
//!
//! The general decoders go through serde's internally tagged enums, which buffer every field
//! of every message before choosing the variant (an allocation per field). These decode
//! straight into plain structs and check the `t` tag without allocating; anything they do not
//! recognise falls back to the general decoder, which owns the error reporting.
//!
//! The MessagePack snapshot summary skips serde altogether and walks the bytes with `rmp`:
//! through rmp-serde, most of its time went on plumbing (a UTF-8 check per key, a visitor per
//! integer) for values it then dropped.

use std::fmt;
use std::marker::PhantomData;

use rmp::Marker;
use rmp::decode::{
    read_array_len, read_bin_len, read_bool, read_int, read_map_len, read_marker, read_str_len,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::codec::MAX_NESTING;
use crate::{Codec, Payload, PlayerId, Snapshot};

/// The parts of a `snapshot` that a client measuring latency needs: no payloads, no copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub tick: u64,
    pub server_time_us: u64,
    pub keyframe: bool,
    /// Every player in the snapshot, without its data.
    pub players: Vec<PlayerSeq>,
}

impl From<&Snapshot> for SnapshotSummary {
    fn from(snapshot: &Snapshot) -> Self {
        Self {
            tick: snapshot.tick,
            server_time_us: snapshot.server_time_us,
            keyframe: snapshot.keyframe,
            players: snapshot
                .players
                .iter()
                .map(|p| PlayerSeq {
                    id: p.id,
                    seq: p.seq,
                })
                .collect(),
        }
    }
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
        match self {
            Self::MessagePack => msgpack_snapshot_summary(bytes),
            Self::Json => self
                .decode_raw::<SnapshotWire>(bytes)
                .ok()
                .map(|s| SnapshotSummary {
                    tick: s.tick,
                    server_time_us: s.server_time_us,
                    keyframe: s.keyframe,
                    players: s.players,
                }),
        }
    }
}

/// The smallest well-formed player, `{"id":0,"seq":0,"data":<empty bin 8>}`: what bounds the
/// `players` allocation whatever its length prefix claims.
const MIN_PLAYER_LEN: usize = 17;

/// Accepts a subset of what `decode_server` takes for a snapshot: every required field once
/// with its exact type, any unknown field, no trailing bytes. Shapes the server never sends
/// (non-string keys, which serde would read as field indices; `data` as base64 `str`; players
/// as arrays) are left to the general decoder.
fn msgpack_snapshot_summary(mut bytes: &[u8]) -> Option<SnapshotSummary> {
    let rd = &mut bytes;
    let mut tag = None;
    let mut tick = None;
    let mut server_time_us = None;
    let mut keyframe = None;
    let mut players = None;
    let mut removed = None;
    for _ in 0..read_map_len(rd).ok()? {
        match read_str(rd)? {
            // The server writes `t` first, so other message types stop here.
            b"t" => set_once(&mut tag, read_str(rd).filter(|t| *t == b"snapshot"))?,
            b"tick" => set_once(&mut tick, read_int(rd).ok())?,
            b"server_time_us" => set_once(&mut server_time_us, read_int(rd).ok())?,
            b"keyframe" => set_once(&mut keyframe, read_bool(rd).ok())?,
            b"players" => set_once(&mut players, read_players(rd))?,
            // Not part of the summary, but `decode_server` rejects a snapshot without it.
            b"removed" => set_once(&mut removed, check_ids(rd))?,
            _ => skip_value(rd, 2)?,
        }
    }
    if !rd.is_empty() || tag.is_none() || removed.is_none() {
        return None;
    }
    Some(SnapshotSummary {
        tick: tick?,
        server_time_us: server_time_us?,
        keyframe: keyframe?,
        players: players?,
    })
}

/// Fills a field's slot; None (not a snapshot) when the value is missing or mistyped, or the
/// field came before, which serde rejects as a duplicate.
fn set_once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

/// The next `len` bytes, borrowed.
fn take<'a>(rd: &mut &'a [u8], len: u32) -> Option<&'a [u8]> {
    let (head, rest) = rd.split_at_checked(usize::try_from(len).ok()?)?;
    *rd = rest;
    Some(head)
}

/// A big-endian length of `width` bytes.
fn read_len(rd: &mut &[u8], width: u32) -> Option<u32> {
    let bytes = take(rd, width)?;
    Some(bytes.iter().fold(0, |len, &b| len << 8 | u32::from(b)))
}

/// A `str`'s raw bytes: names are compared as bytes, so no UTF-8 check.
fn read_str<'a>(rd: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_str_len(rd).ok()?;
    take(rd, len)
}

/// The players, allocated for no more than the remaining bytes can hold.
fn read_players(rd: &mut &[u8]) -> Option<Vec<PlayerSeq>> {
    let len = usize::try_from(read_array_len(rd).ok()?).ok()?;
    if len > rd.len() / MIN_PLAYER_LEN {
        return None;
    }
    let mut players = Vec::with_capacity(len);
    for _ in 0..len {
        players.push(read_player(rd)?);
    }
    Some(players)
}

/// A player's map (nesting level 3), its `data` skipped in place.
fn read_player(rd: &mut &[u8]) -> Option<PlayerSeq> {
    let mut id = None;
    let mut seq = None;
    let mut data = None;
    for _ in 0..read_map_len(rd).ok()? {
        match read_str(rd)? {
            b"id" => set_once(&mut id, read_int(rd).ok())?,
            b"seq" => set_once(&mut seq, read_int(rd).ok())?,
            b"data" => set_once(&mut data, read_bin_len(rd).ok().and_then(|n| take(rd, n)))?,
            _ => skip_value(rd, 4)?,
        }
    }
    data?;
    Some(PlayerSeq { id: id?, seq: seq? })
}

/// Checks an array of player ids without keeping them.
fn check_ids(rd: &mut &[u8]) -> Option<()> {
    for _ in 0..read_array_len(rd).ok()? {
        read_int::<PlayerId, _>(rd).ok()?;
    }
    Some(())
}

/// What follows a MessagePack marker.
enum Body {
    Bytes(u32),
    /// Nested values: an array's elements, or a map's keys and values.
    Values(u64),
    /// A type byte, then this many bytes. rmp-serde counts it as a nesting level.
    Ext(u32),
}

/// Skips one value of any type; `level` is the nesting level a container would have here.
fn skip_value(rd: &mut &[u8], level: usize) -> Option<()> {
    let body = match read_marker(rd).ok()? {
        Marker::Null | Marker::True | Marker::False | Marker::FixPos(_) | Marker::FixNeg(_) => {
            Body::Bytes(0)
        }
        Marker::U8 | Marker::I8 => Body::Bytes(1),
        Marker::U16 | Marker::I16 => Body::Bytes(2),
        Marker::U32 | Marker::I32 | Marker::F32 => Body::Bytes(4),
        Marker::U64 | Marker::I64 | Marker::F64 => Body::Bytes(8),
        Marker::FixStr(len) => Body::Bytes(len.into()),
        Marker::Str8 | Marker::Bin8 => Body::Bytes(read_len(rd, 1)?),
        Marker::Str16 | Marker::Bin16 => Body::Bytes(read_len(rd, 2)?),
        Marker::Str32 | Marker::Bin32 => Body::Bytes(read_len(rd, 4)?),
        Marker::FixArray(len) => Body::Values(len.into()),
        Marker::Array16 => Body::Values(read_len(rd, 2)?.into()),
        Marker::Array32 => Body::Values(read_len(rd, 4)?.into()),
        Marker::FixMap(len) => Body::Values(2 * u64::from(len)),
        Marker::Map16 => Body::Values(2 * u64::from(read_len(rd, 2)?)),
        Marker::Map32 => Body::Values(2 * u64::from(read_len(rd, 4)?)),
        Marker::FixExt1 => Body::Ext(1),
        Marker::FixExt2 => Body::Ext(2),
        Marker::FixExt4 => Body::Ext(4),
        Marker::FixExt8 => Body::Ext(8),
        Marker::FixExt16 => Body::Ext(16),
        Marker::Ext8 => Body::Ext(read_len(rd, 1)?),
        Marker::Ext16 => Body::Ext(read_len(rd, 2)?),
        Marker::Ext32 => Body::Ext(read_len(rd, 4)?),
        Marker::Reserved => return None,
    };
    match body {
        Body::Bytes(len) => take(rd, len).map(drop),
        _ if level >= MAX_NESTING => None,
        // Each value takes at least a byte, so a lying count runs out of input, not time.
        Body::Values(count) => (0..count).try_for_each(|_| skip_value(rd, level + 1)),
        Body::Ext(len) => take(rd, 1).and_then(|_| take(rd, len)).map(drop),
    }
}
