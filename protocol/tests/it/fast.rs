//! The fast decoders (`Codec::decode_state`, `Codec::decode_snapshot_summary`) against the
//! general decoder: what a fast path accepts, the general decoder must decode to the same
//! message; what it declines (unusual encodings, malformed input) is left to the fallback.
//! The MessagePack snapshot summary walks the bytes itself, so its edge cases are handmade
//! byte vectors here.

use proptest::collection::vec;
use proptest::prelude::*;
use tickrelay_protocol::{
    ClientMessage, Codec, Payload, PlayerSeq, PlayerState, ServerMessage, Snapshot, SnapshotSummary,
};

use crate::strategies::snapshot;

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

/// The summary of what the general decoder makes of `bytes`, if it is a snapshot.
fn full_summary(codec: Codec, bytes: &[u8]) -> Option<SnapshotSummary> {
    match codec.decode_server(bytes) {
        Ok(ServerMessage::Snapshot(s)) => Some(SnapshotSummary::from(&s)),
        _ => None,
    }
}

/// The fast path may decline anything, but what it accepts the general decoder must
/// decode to the same snapshot.
fn checked_summary(bytes: &[u8]) -> Option<SnapshotSummary> {
    let summary = Codec::MessagePack.decode_snapshot_summary(bytes);
    if summary.is_some() {
        assert_eq!(
            summary,
            full_summary(Codec::MessagePack, bytes),
            "{bytes:02x?}"
        );
    }
    summary
}

/// A map's entries: string keys, already encoded values.
type Entries = Vec<(&'static str, Vec<u8>)>;

fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, entries.len() as u32).unwrap();
    for (key, value) in entries {
        rmp::encode::write_str(&mut out, key).unwrap();
        out.extend_from_slice(value);
    }
    out
}

fn fixstr(s: &str) -> Vec<u8> {
    [&[0xa0 | s.len() as u8], s.as_bytes()].concat()
}

fn set(entries: &mut Entries, name: &str, value: Vec<u8>) {
    entries.iter_mut().find(|(key, _)| *key == name).unwrap().1 = value;
}

fn remove(entries: &mut Entries, name: &str) {
    entries.retain(|(key, _)| *key != name);
}

/// A handmade snapshot, its entries then its one player's passed through the edits:
/// `{"t":"snapshot","tick":7,"server_time_us":256,"keyframe":true,
/// "players":[{"id":3,"seq":30,"data":<bin 01 02>}],"removed":[8]}` unedited.
fn handmade(edit: impl FnOnce(&mut Entries), edit_player: impl FnOnce(&mut Entries)) -> Vec<u8> {
    let mut player: Entries = vec![
        ("id", vec![3]),
        ("seq", vec![30]),
        ("data", vec![0xc4, 2, 1, 2]),
    ];
    edit_player(&mut player);
    let mut entries: Entries = vec![
        ("t", fixstr("snapshot")),
        ("tick", vec![7]),
        ("server_time_us", vec![0xcd, 1, 0]),
        ("keyframe", vec![0xc3]),
        ("players", [vec![0x91], map(&player)].concat()),
        ("removed", vec![0x91, 8]),
    ];
    edit(&mut entries);
    map(&entries)
}

fn snapshot_with(edit: impl FnOnce(&mut Entries)) -> Vec<u8> {
    handmade(edit, |_| {})
}

fn player_with(edit: impl FnOnce(&mut Entries)) -> Vec<u8> {
    handmade(|_| {}, edit)
}

fn handmade_summary() -> SnapshotSummary {
    SnapshotSummary {
        tick: 7,
        server_time_us: 256,
        keyframe: true,
        players: vec![PlayerSeq { id: 3, seq: 30 }],
    }
}

/// One encoding of every MessagePack format, in each of its widths.
fn every_kind_of_value() -> Vec<Vec<u8>> {
    let mut values: Vec<Vec<u8>> = vec![
        vec![0xc0],
        vec![0xc2],
        vec![0xc3],
        vec![0x7f],
        vec![0xe0],
        vec![0xcc, 0xff],
        vec![0xcd, 0xff, 0xff],
        vec![0xce, 0xff, 0xff, 0xff, 0xff],
        vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0xd0, 0x80],
        vec![0xd1, 0x80, 0],
        vec![0xd2, 0x80, 0, 0, 0],
        vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
        vec![0xca, 0x3f, 0x80, 0, 0],
        vec![0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
        fixstr("players"),
        // Invalid UTF-8: rmp-serde hands it over as bytes, which an unknown field takes.
        vec![0xa2, 0xff, 0xfe],
        [&[0xd9, 3][..], b"tic"].concat(),
        [&[0xda, 0, 4][..], b"tick"].concat(),
        [&[0xdb, 0, 0, 0, 1][..], b"t"].concat(),
        vec![0xc4, 0],
        vec![0xc5, 0, 2, 1, 2],
        vec![0xc6, 0, 0, 0, 1, 9],
        vec![0x90],
        vec![0x92, 0xc0, 0x91, 0x01],
        vec![0xdc, 0, 1, 0xc3],
        vec![0xdd, 0, 0, 0, 2, 0x01, 0xa1, b'x'],
        vec![0x80],
        // Keys of any type, `players` included: nested, none is a snapshot field.
        [
            &[0x83, 0x01, 0xc0, 0x91, 0x02, 0x90][..],
            &fixstr("players"),
            &[0x90],
        ]
        .concat(),
        vec![0xde, 0, 1, 0xa1, b'k', 0xc2],
        vec![0xdf, 0, 0, 0, 1, 0xc0, 0xc0],
        vec![0xd4, 1, 0xaa],
        vec![0xd5, 1, 0xaa, 0xbb],
        vec![0xd6, 1, 0, 0, 0, 0],
        vec![0xd7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
        [&[0xd8, 1][..], &[0; 16]].concat(),
        vec![0xc7, 0, 5],
        vec![0xc8, 0, 2, 1, 7, 7],
        vec![0xc9, 0, 0, 0, 1, 1, 7],
    ];
    // All of the above at once, in an array 32.
    let all = [&[0xdd, 0, 0, 0, values.len() as u8][..], &values.concat()].concat();
    values.push(all);
    values
}

/// `depth` nested arrays around a nil.
fn nested(depth: usize) -> Vec<u8> {
    let mut value = vec![0x91; depth];
    value.push(0xc0);
    value
}

#[test]
fn unknown_fields_of_every_format_are_skipped() {
    for value in every_kind_of_value() {
        let cases = [
            snapshot_with(|e| e.push(("zz", value.clone()))),
            // Before `t`, too.
            snapshot_with(|e| e.insert(0, ("", value.clone()))),
            player_with(|p| p.push(("zz", value.clone()))),
        ];
        for bytes in cases {
            assert_eq!(
                checked_summary(&bytes),
                Some(handmade_summary()),
                "{bytes:02x?}"
            );
        }
    }
    // A key that is not UTF-8 is just another unknown key.
    let mut bytes = snapshot_with(|_| {});
    bytes[0] += 1;
    bytes.extend([0xa2, 0xff, 0xfe, 0xc0]);
    assert_eq!(checked_summary(&bytes), Some(handmade_summary()));
}

/// The `players` allocation is bounded by the smallest possible player; one that small,
/// last in the message, still decodes.
#[test]
fn smallest_players_decode() {
    let smallest = map(&[("id", vec![0]), ("seq", vec![0]), ("data", vec![0xc4, 0])]);
    // `MIN_PLAYER_LEN` in src/fast.rs: the bound on what a length prefix may claim.
    assert_eq!(smallest.len(), 17);
    for count in [1u8, 2, 15] {
        let players = [vec![0x90 | count], smallest.repeat(count.into())].concat();
        let bytes = snapshot_with(|e| {
            remove(e, "players");
            e.push(("players", players));
        });
        let summary = checked_summary(&bytes).unwrap();
        assert_eq!(
            summary.players,
            vec![PlayerSeq { id: 0, seq: 0 }; count.into()]
        );
    }
}

/// serde takes any integer format for an unsigned field, as long as the value fits.
#[test]
fn integers_of_every_format_are_read_as_the_general_decoder_reads_them() {
    let ff = |n| vec![0xff; n];
    let values = [
        vec![0x05],
        vec![0xe0],
        vec![0xff],
        vec![0xcc, 0xc8],
        vec![0xcd, 1, 0],
        [vec![0xce], ff(4)].concat(),
        [vec![0xcf], ff(8)].concat(),
        vec![0xcf, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0],
        vec![0xd0, 0x7f],
        vec![0xd0, 0x80],
        vec![0xd1, 0x7f, 0xff],
        vec![0xd1, 0x80, 0],
        vec![0xd2, 0x7f, 0xff, 0xff, 0xff],
        [vec![0xd2], ff(4)].concat(),
        [vec![0xd3, 0x7f], ff(7)].concat(),
        vec![0xd3, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        vec![0xd3, 0, 0, 0, 1, 0, 0, 0, 0],
        [vec![0xd3], ff(8)].concat(),
        vec![0xca, 0, 0, 0, 0],
        vec![0xc0],
        vec![0xc2],
        vec![0xd0],
    ];
    let mut accepted = 0;
    for value in values {
        let cases = [
            snapshot_with(|e| set(e, "tick", value.clone())),
            snapshot_with(|e| set(e, "removed", [vec![0x91], value.clone()].concat())),
            player_with(|p| set(p, "id", value.clone())),
            player_with(|p| set(p, "seq", value.clone())),
        ];
        for bytes in cases {
            let summary = Codec::MessagePack.decode_snapshot_summary(&bytes);
            assert_eq!(
                summary,
                full_summary(Codec::MessagePack, &bytes),
                "{bytes:02x?}"
            );
            accepted += usize::from(summary.is_some());
        }
    }
    // Not all declined: 9 of the values fit a u32 (`removed`, `id`), 13 a u64.
    assert_eq!(accepted, 2 * 9 + 2 * 13);
}

/// PROTOCOL.md: at most 127 nested containers, the message's map included. An unknown
/// field's value is at level 2 in the message, at level 4 in a player.
#[test]
fn unknown_fields_nest_exactly_as_deep_as_the_general_decoder_allows() {
    let outer = |value: Vec<u8>| snapshot_with(|e| e.push(("x", value)));
    let inner = |value: Vec<u8>| player_with(|p| p.push(("x", value)));
    // An ext is a level of its own.
    let ext = |depth| [vec![0x91; depth], vec![0xd4, 1, 0]].concat();
    for (bytes, ok) in [
        (outer(nested(126)), true),
        (outer(nested(127)), false),
        (inner(nested(124)), true),
        (inner(nested(125)), false),
        (outer(ext(125)), true),
        (outer(ext(126)), false),
    ] {
        let expected = ok.then(handmade_summary);
        assert_eq!(full_summary(Codec::MessagePack, &bytes), expected);
        assert_eq!(Codec::MessagePack.decode_snapshot_summary(&bytes), expected);
    }
    // Far deeper: declined, without overflowing the stack.
    assert_eq!(checked_summary(&outer(nested(100_000))), None);
}

#[test]
fn malformed_snapshots_are_declined() {
    let mut trailing = snapshot_with(|_| {});
    trailing.push(0xc0);
    let u64_above_u32 = vec![0xcf, 0, 0, 0, 1, 0, 0, 0, 0];
    let mut cases = vec![
        ("trailing byte", trailing),
        (
            "wrong tag",
            snapshot_with(|e| set(e, "t", fixstr("snapshoT"))),
        ),
        ("other type", snapshot_with(|e| set(e, "t", fixstr("pong")))),
        (
            "duplicate tag",
            snapshot_with(|e| e.push(("t", fixstr("snapshot")))),
        ),
        (
            "duplicate tick",
            snapshot_with(|e| e.push(("tick", vec![7]))),
        ),
        (
            "duplicate players",
            snapshot_with(|e| e.push(("players", vec![0x90]))),
        ),
        (
            "duplicate removed",
            snapshot_with(|e| e.push(("removed", vec![0x90]))),
        ),
        (
            "negative tick",
            snapshot_with(|e| set(e, "tick", vec![0xff])),
        ),
        (
            "float time",
            snapshot_with(|e| set(e, "server_time_us", vec![0xca, 0, 0, 0, 0])),
        ),
        (
            "integer keyframe",
            snapshot_with(|e| set(e, "keyframe", vec![1])),
        ),
        (
            "players a map",
            snapshot_with(|e| set(e, "players", vec![0x80])),
        ),
        (
            "removed id above u32",
            snapshot_with(|e| set(e, "removed", [vec![0x91], u64_above_u32.clone()].concat())),
        ),
        (
            "removed nil",
            snapshot_with(|e| set(e, "removed", vec![0x91, 0xc0])),
        ),
        (
            "reserved marker",
            snapshot_with(|e| e.push(("x", vec![0xc1]))),
        ),
        (
            "truncated ext",
            snapshot_with(|e| e.push(("x", vec![0xc7, 2, 1, 0]))),
        ),
        (
            "lying length",
            snapshot_with(|e| e.push(("x", vec![0xdd, 0xff, 0xff, 0xff, 0xff]))),
        ),
        (
            "lying players",
            snapshot_with(|e| set(e, "players", vec![0xdd, 0xff, 0xff, 0xff, 0xff])),
        ),
        (
            "player id above u32",
            player_with(|p| set(p, "id", u64_above_u32.clone())),
        ),
        (
            "negative seq",
            player_with(|p| set(p, "seq", vec![0xd0, 0xff])),
        ),
        (
            "data an array",
            player_with(|p| set(p, "data", vec![0x91, 1])),
        ),
        (
            "duplicate data",
            player_with(|p| p.push(("data", vec![0xc4, 0]))),
        ),
        ("duplicate seq", player_with(|p| p.push(("seq", vec![1])))),
        ("not a map", vec![0x96]),
        ("empty", vec![]),
    ];
    for name in [
        "t",
        "tick",
        "server_time_us",
        "keyframe",
        "players",
        "removed",
    ] {
        cases.push((name, snapshot_with(|e| remove(e, name))));
    }
    for name in ["id", "seq", "data"] {
        cases.push((name, player_with(|p| remove(p, name))));
    }
    for (case, bytes) in cases {
        assert_eq!(
            Codec::MessagePack.decode_snapshot_summary(&bytes),
            None,
            "{case}"
        );
        assert_eq!(full_summary(Codec::MessagePack, &bytes), None, "{case}");
    }
}

/// Encodings our server never produces but the general decoder takes: declined by the fast
/// path, so the caller's fallback still gets them right.
#[test]
fn unusual_encodings_are_left_to_the_general_decoder() {
    let named = snapshot_with(|_| {});
    let at = named.windows(5).position(|w| w == fixstr("tick")).unwrap();
    let cases = [
        (
            "tick keyed by its field index",
            [&named[..at], &[0], &named[at + 5..]].concat(),
        ),
        (
            "tag as bin",
            snapshot_with(|e| set(e, "t", [&[0xc4, 8][..], b"snapshot"].concat())),
        ),
        (
            "data as base64",
            player_with(|p| set(p, "data", fixstr("AQI="))),
        ),
        (
            "player as an array",
            snapshot_with(|e| set(e, "players", vec![0x91, 0x93, 3, 30, 0xc4, 2, 1, 2])),
        ),
    ];
    for (case, bytes) in cases {
        assert_eq!(
            Codec::MessagePack.decode_snapshot_summary(&bytes),
            None,
            "{case}"
        );
        assert_eq!(
            full_summary(Codec::MessagePack, &bytes),
            Some(handmade_summary()),
            "{case}"
        );
    }
}

/// A valid snapshot's first bytes, to get random input past the first marker.
fn snapshot_prefix() -> impl Strategy<Value = Vec<u8>> {
    let full = snapshot_with(|_| {});
    (0..full.len()).prop_map(move |end| full[..end].to_vec())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in snapshot_prefix(),
        tail in vec(any::<u8>(), 0..256),
    ) {
        checked_summary(&tail);
        checked_summary(&[prefix, tail].concat());
    }

    #[test]
    fn summary_matches_the_full_decoder(snapshot in snapshot()) {
        let expected = SnapshotSummary::from(&snapshot);
        let message = ServerMessage::Snapshot(snapshot);
        for codec in Codec::ALL {
            let bytes = codec.encode(&message).unwrap();
            prop_assert_eq!(codec.decode_snapshot_summary(&bytes), Some(expected.clone()));
        }
    }

    #[test]
    fn every_truncation_is_declined(snapshot in snapshot()) {
        let bytes = Codec::MessagePack.encode(&ServerMessage::Snapshot(snapshot)).unwrap();
        for end in 0..bytes.len() {
            prop_assert_eq!(Codec::MessagePack.decode_snapshot_summary(&bytes[..end]), None);
        }
    }
}
