//! Exact bytes on the wire. These are the vectors PROTOCOL.md shows; a change here is a breaking
//! protocol change. `cargo test -p tickrelay-protocol --test it golden -- --nocapture` prints
//! the annotated dumps.

use tickrelay_protocol::{ClientMessage, Codec, Payload, PlayerState, ServerMessage, Snapshot};

use crate::msgpack;

const PROTOCOL_MD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md"));

pub(crate) fn golden_join() -> ClientMessage {
    ClientMessage::Join {
        lobby: "arena".into(),
        name: "ann".into(),
        ticket: None,
        role: None,
        resume: None,
        offset: None,
    }
}

pub(crate) fn golden_snapshot() -> ServerMessage {
    ServerMessage::Snapshot(Snapshot {
        tick: 42,
        server_time_us: 1_700_000_000_000_000,
        keyframe: false,
        players: vec![PlayerState {
            id: 1,
            seq: 7,
            data: Payload::from(&b"\x01\x02\x03\x04"[..]),
        }],
        removed: vec![3],
    })
}

#[rustfmt::skip]
const JOIN_MSGPACK: &[u8] = &[
    0x83,                                           // fixmap, 3 pairs
    0xa1, b't',                                     // "t"
    0xa4, b'j', b'o', b'i', b'n',                   // "join"
    0xa5, b'l', b'o', b'b', b'b', b'y',             // "lobby"
    0xa5, b'a', b'r', b'e', b'n', b'a',             // "arena"
    0xa4, b'n', b'a', b'm', b'e',                   // "name"
    0xa3, b'a', b'n', b'n',                         // "ann"
];

#[rustfmt::skip]
const SNAPSHOT_MSGPACK: &[u8] = &[
    0x86,                                           // fixmap, 6 pairs
    0xa1, b't',                                     // "t"
    0xa8, b's', b'n', b'a', b'p', b's', b'h', b'o', b't',
    0xa4, b't', b'i', b'c', b'k',                   // "tick"
    0x2a,                                           // 42
    0xae, b's', b'e', b'r', b'v', b'e', b'r', b'_', b't', b'i', b'm', b'e', b'_', b'u', b's',
    0xcf, 0x00, 0x06, 0x0a, 0x24, 0x18, 0x1e, 0x40, 0x00, // uint 64: 1700000000000000
    0xa8, b'k', b'e', b'y', b'f', b'r', b'a', b'm', b'e',
    0xc2,                                           // false
    0xa7, b'p', b'l', b'a', b'y', b'e', b'r', b's',
    0x91,                                           // fixarray, 1 element
    0x83,                                           // fixmap, 3 pairs
    0xa2, b'i', b'd',
    0x01,
    0xa3, b's', b'e', b'q',
    0x07,
    0xa4, b'd', b'a', b't', b'a',
    0xc4, 0x04, 0x01, 0x02, 0x03, 0x04,             // bin 8, 4 bytes
    0xa7, b'r', b'e', b'm', b'o', b'v', b'e', b'd',
    0x91,                                           // fixarray, 1 element
    0x03,
];

const JOIN_JSON: &str = r#"{"t":"join","lobby":"arena","name":"ann"}"#;
const SNAPSHOT_JSON: &str = r#"{"t":"snapshot","tick":42,"server_time_us":1700000000000000,"keyframe":false,"players":[{"id":1,"seq":7,"data":"AQIDBA=="}],"removed":[3]}"#;

fn encode<T: serde::Serialize>(codec: Codec, message: &T) -> Vec<u8> {
    codec.encode(message).unwrap()
}

#[test]
fn join_msgpack_bytes() {
    let bytes = encode(Codec::MessagePack, &golden_join());
    assert_eq!(msgpack::hex(&bytes), msgpack::hex(JOIN_MSGPACK));
    assert_eq!(
        Codec::MessagePack.decode_client(JOIN_MSGPACK).unwrap(),
        golden_join()
    );
}

#[test]
fn snapshot_msgpack_bytes() {
    let bytes = encode(Codec::MessagePack, &golden_snapshot());
    assert_eq!(msgpack::hex(&bytes), msgpack::hex(SNAPSHOT_MSGPACK));
    assert_eq!(
        Codec::MessagePack.decode_server(SNAPSHOT_MSGPACK).unwrap(),
        golden_snapshot()
    );
}

#[test]
fn join_and_snapshot_json_text() {
    assert_eq!(
        String::from_utf8(encode(Codec::Json, &golden_join())).unwrap(),
        JOIN_JSON
    );
    assert_eq!(
        String::from_utf8(encode(Codec::Json, &golden_snapshot())).unwrap(),
        SNAPSHOT_JSON
    );
    assert_eq!(
        Codec::Json.decode_client(JOIN_JSON.as_bytes()).unwrap(),
        golden_join()
    );
    assert_eq!(
        Codec::Json.decode_server(SNAPSHOT_JSON.as_bytes()).unwrap(),
        golden_snapshot()
    );
}

/// The data field of a `state` message, as the msgpack reader sees it, and as JSON text.
fn state_data(data: Vec<u8>) -> (msgpack::Value, serde_json::Value) {
    let message = ClientMessage::State {
        seq: 1,
        data: Payload::from(data),
    };
    let packed = msgpack::parse(&encode(Codec::MessagePack, &message)).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&encode(Codec::Json, &message)).unwrap();
    (packed.get("data").clone(), json["data"].clone())
}

#[test]
fn payloads_are_msgpack_bin_and_json_base64() {
    // Empty payload: bin 8 of length 0, and the empty base64 string.
    let bytes = encode(
        Codec::MessagePack,
        &ClientMessage::Event {
            data: Payload::default(),
        },
    );
    assert!(bytes.ends_with(&[0xa4, b'd', b'a', b't', b'a', 0xc4, 0x00]));
    assert_eq!(state_data(vec![]), (msgpack::Value::Bin(vec![]), "".into()));

    let (packed, json) = state_data(vec![0xfb, 0xff, 0x00]);
    assert_eq!(packed, msgpack::Value::Bin(vec![0xfb, 0xff, 0x00]));
    // Standard alphabet (+ and /), with padding.
    assert_eq!(json, "+/8A");
    let (_, json) = state_data(vec![0xff]);
    assert_eq!(json, "/w==");

    // 255 bytes still fit bin 8; 256 need bin 16 (0xc5, big-endian u16 length).
    let bytes = encode(
        Codec::MessagePack,
        &ClientMessage::Event {
            data: Payload::from(vec![7; 255]),
        },
    );
    assert!(bytes.windows(3).any(|w| w == [0xc4, 0xff, 7]));
    let bytes = encode(
        Codec::MessagePack,
        &ClientMessage::Event {
            data: Payload::from(vec![7; 256]),
        },
    );
    assert!(bytes.windows(4).any(|w| w == [0xc5, 0x01, 0x00, 7]));
}

/// Hex, 16 bytes per line, as in PROTOCOL.md's code blocks.
fn hex_block(bytes: &[u8]) -> String {
    let lines: Vec<String> = bytes.chunks(16).map(msgpack::hex).collect();
    format!("```text\n{}\n```\n", lines.join("\n"))
}

#[test]
fn print_golden_dumps() {
    for (name, bytes, json) in [
        (
            "join",
            encode(Codec::MessagePack, &golden_join()),
            JOIN_JSON,
        ),
        (
            "snapshot",
            encode(Codec::MessagePack, &golden_snapshot()),
            SNAPSHOT_JSON,
        ),
    ] {
        println!("== {name}: {} bytes msgpack", bytes.len());
        print!("{}", hex_block(&bytes));
        println!("{}", msgpack::annotate(&bytes));
        println!("{json}\n");
    }
}

/// PROTOCOL.md's hex dumps and JSON examples are the real encoder output, not hand-written.
#[test]
fn protocol_md_shows_the_real_bytes() {
    let doc = PROTOCOL_MD.replace("\r\n", "\n");
    for bytes in [
        encode(Codec::MessagePack, &golden_join()),
        encode(Codec::MessagePack, &golden_snapshot()),
    ] {
        let dump = msgpack::annotate(&bytes);
        assert!(
            doc.contains(&dump),
            "PROTOCOL.md lacks this dump (regenerate with --nocapture):\n{dump}"
        );
        let block = hex_block(&bytes);
        assert!(doc.contains(&block), "PROTOCOL.md lacks this hex:\n{block}");
    }
    assert!(doc.contains(JOIN_JSON), "PROTOCOL.md lacks {JOIN_JSON}");
    assert!(
        doc.contains(SNAPSHOT_JSON),
        "PROTOCOL.md lacks {SNAPSHOT_JSON}"
    );
}
