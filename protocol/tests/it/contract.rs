//! The documented contract: `t` tags, field names, value types, forward compatibility, error
//! and close codes. Field names are checked on the JSON encoding and, with the independent
//! reader in `msgpack.rs`, on the MessagePack encoding too: both codecs carry the same maps.

use serde_json::{Value, json};
use tickrelay_protocol::{
    ClientMessage, Codec, DecodeError, ErrorCode, Payload, Role, ServerMessage, close,
};

use crate::msgpack;
use crate::strategies::{client_examples, server_examples};

/// `t` and the top-level keys, in wire order. Exhaustive matches: a new variant must be added
/// here (and to PROTOCOL.md) before this compiles.
fn client_contract(message: &ClientMessage) -> (&'static str, Vec<&'static str>) {
    match message {
        ClientMessage::Join {
            ticket,
            role,
            resume,
            offset,
            ..
        } => {
            let mut keys = vec!["t", "lobby", "name"];
            keys.extend(ticket.as_ref().map(|_| "ticket"));
            keys.extend(role.as_ref().map(|_| "role"));
            keys.extend(resume.as_ref().map(|_| "resume"));
            keys.extend(offset.as_ref().map(|_| "offset"));
            ("join", keys)
        }
        ClientMessage::State { .. } => ("state", vec!["t", "seq", "data"]),
        ClientMessage::Event { .. } => ("event", vec!["t", "data"]),
        ClientMessage::Leave => ("leave", vec!["t"]),
        ClientMessage::Ping { .. } => ("ping", vec!["t", "client_time"]),
    }
}

fn server_contract(message: &ServerMessage) -> (&'static str, Vec<&'static str>) {
    match message {
        ServerMessage::Welcome { resume, .. } => {
            let mut keys = vec!["t", "player_id", "lobby", "tick_hz", "members", "offset"];
            keys.extend(resume.as_ref().map(|_| "resume"));
            keys.extend(["resumed", "lost"]);
            ("welcome", keys)
        }
        ServerMessage::Snapshot(_) => (
            "snapshot",
            vec![
                "t",
                "tick",
                "server_time_us",
                "keyframe",
                "players",
                "removed",
            ],
        ),
        ServerMessage::Event { offset, .. } => {
            ("event", with_offset(vec!["t", "from", "data"], offset))
        }
        ServerMessage::MemberJoined { offset, .. } => (
            "member_joined",
            with_offset(vec!["t", "id", "name", "role"], offset),
        ),
        ServerMessage::MemberLeft { offset, .. } => {
            ("member_left", with_offset(vec!["t", "id"], offset))
        }
        ServerMessage::MemberAway { .. } => ("member_away", vec!["t", "id", "offset"]),
        ServerMessage::MemberBack { .. } => ("member_back", vec!["t", "id", "offset"]),
        ServerMessage::Pong { .. } => ("pong", vec!["t", "client_time", "server_time_us"]),
        ServerMessage::Error {
            retry_after_ms,
            url,
            ..
        } => {
            let mut keys = vec!["t", "code", "message"];
            keys.extend(retry_after_ms.as_ref().map(|_| "retry_after_ms"));
            keys.extend(url.as_ref().map(|_| "url"));
            ("error", keys)
        }
        ServerMessage::Redirect { resume, .. } => {
            let mut keys = vec!["t", "url"];
            keys.extend(resume.as_ref().map(|_| "resume"));
            ("redirect", keys)
        }
    }
}

fn with_offset(mut keys: Vec<&'static str>, offset: &Option<u64>) -> Vec<&'static str> {
    keys.extend(offset.as_ref().map(|_| "offset"));
    keys
}

fn json_of<T: serde::Serialize>(message: &T) -> Value {
    serde_json::from_slice(&Codec::Json.encode(message).unwrap()).unwrap()
}

fn json_keys(value: &Value) -> Vec<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
    keys.sort_unstable();
    keys
}

fn msgpack_of<T: serde::Serialize>(message: &T) -> msgpack::Value {
    msgpack::parse(&Codec::MessagePack.encode(message).unwrap()).unwrap()
}

#[test]
fn client_tags_and_field_names() {
    let mut seen = Vec::new();
    for message in client_examples() {
        let (tag, keys) = client_contract(&message);
        let value = json_of(&message);
        assert_eq!(value["t"], tag);
        // serde_json::Map is sorted (no preserve_order feature): compare as sets here, and the
        // wire order on the msgpack side.
        assert_eq!(sorted(json_keys(&value)), sorted(keys.clone()), "{tag}");
        let packed = msgpack_of(&message);
        assert_eq!(packed.keys(), keys, "{tag}");
        assert_eq!(packed.get("t"), &msgpack::Value::Str(tag.into()));
        seen.push(tag);
    }
    seen.dedup();
    assert_eq!(seen, ClientMessage::TYPES);
    assert_eq!(seen, ["join", "state", "event", "leave", "ping"]);
}

#[test]
fn server_tags_and_field_names() {
    let mut seen = Vec::new();
    for message in server_examples() {
        let (tag, keys) = server_contract(&message);
        let value = json_of(&message);
        assert_eq!(value["t"], tag);
        assert_eq!(sorted(json_keys(&value)), sorted(keys.clone()), "{tag}");
        let packed = msgpack_of(&message);
        assert_eq!(packed.keys(), keys, "{tag}");
        assert_eq!(packed.get("t"), &msgpack::Value::Str(tag.into()));
        seen.push(tag);
    }
    seen.dedup();
    assert_eq!(
        seen,
        [
            "welcome",
            "snapshot",
            "event",
            "member_joined",
            "member_away",
            "member_back",
            "member_left",
            "pong",
            "error",
            "redirect"
        ]
    );
}

#[test]
fn nested_objects_and_value_types() {
    let welcome = server_examples().remove(0);
    let value = json_of(&welcome);
    assert_eq!(
        value["members"],
        json!([
            {"id": 3, "name": "bob", "role": "player"},
            {"id": 4, "name": "eve", "role": "spectator", "away": true}
        ])
    );
    assert_eq!(value["player_id"], 7);
    assert_eq!(value["tick_hz"], 30);
    let packed = msgpack_of(&welcome);
    match packed.get("members") {
        msgpack::Value::Array(members) => assert_eq!(members[0].keys(), ["id", "name", "role"]),
        other => panic!("members is {other:?}"),
    }

    let snapshot = server_examples().remove(1);
    let value = json_of(&snapshot);
    assert_eq!(json_keys(&value["players"][0]), ["data", "id", "seq"]);
    assert_eq!(value["keyframe"], false);
    assert_eq!(value["removed"], json!([3]));
    let packed = msgpack_of(&snapshot);
    match packed.get("players") {
        msgpack::Value::Array(players) => {
            assert_eq!(players[0].keys(), ["id", "seq", "data"]);
            assert!(matches!(players[0].get("data"), msgpack::Value::Bin(_)));
        }
        other => panic!("players is {other:?}"),
    }
    assert_eq!(packed.get("keyframe"), &msgpack::Value::Bool(false));

    // Times: client_time is always a float 64 in msgpack, even when integral; microsecond
    // timestamps are unsigned integers.
    let ping = ClientMessage::Ping { client_time: 2.0 };
    assert_eq!(
        msgpack_of(&ping).get("client_time"),
        &msgpack::Value::F64(2.0)
    );
    let pong = ServerMessage::Pong {
        client_time: 2.0,
        server_time_us: 5,
    };
    let packed = msgpack_of(&pong);
    assert_eq!(packed.get("client_time"), &msgpack::Value::F64(2.0));
    assert_eq!(packed.get("server_time_us"), &msgpack::Value::UInt(5));
    assert_eq!(json_of(&pong)["client_time"], 2.0);

    // Error codes are snake_case strings.
    let error = ServerMessage::Error {
        code: ErrorCode::TooManyLobbies,
        message: "m".into(),
        retry_after_ms: None,
        url: None,
    };
    assert_eq!(json_of(&error)["code"], "too_many_lobbies");
    assert_eq!(
        msgpack_of(&error).get("code"),
        &msgpack::Value::Str("too_many_lobbies".into())
    );
}

#[test]
fn error_code_wire_names() {
    let all = [
        (ErrorCode::BadMessage, "bad_message"),
        (ErrorCode::UnknownMessage, "unknown_message"),
        (ErrorCode::NotJoined, "not_joined"),
        (ErrorCode::AlreadyJoined, "already_joined"),
        (ErrorCode::LobbyFull, "lobby_full"),
        (ErrorCode::TooManyLobbies, "too_many_lobbies"),
        (ErrorCode::InvalidJoin, "invalid_join"),
        (ErrorCode::StateTooLarge, "state_too_large"),
        (ErrorCode::EventTooLarge, "event_too_large"),
        (ErrorCode::Unauthorized, "unauthorized"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::Overloaded, "overloaded"),
        (ErrorCode::SeatExpired, "seat_expired"),
        (ErrorCode::WrongNode, "wrong_node"),
        (ErrorCode::Unknown, "unknown"),
    ];
    for (code, name) in all {
        assert_eq!(code.as_str(), name);
        assert_eq!(serde_json::to_value(code).unwrap(), name);
    }
}

/// Adds `"zz": [1, "x", {}]` to an encoded map (fixmap with fewer than 15 pairs).
fn with_unknown_field(codec: Codec, bytes: &[u8]) -> Vec<u8> {
    match codec {
        Codec::MessagePack => {
            assert!((0x80..0x8f).contains(&bytes[0]));
            let mut out = vec![bytes[0] + 1];
            out.extend_from_slice(&bytes[1..]);
            out.extend_from_slice(&[0xa2, b'z', b'z', 0x93, 0x01, 0xa1, b'x', 0x80]);
            out
        }
        Codec::Json => {
            let mut value: Value = serde_json::from_slice(bytes).unwrap();
            value["zz"] = json!([1, "x", {}]);
            serde_json::to_vec(&value).unwrap()
        }
    }
}

#[test]
fn unknown_fields_are_ignored() {
    for codec in Codec::ALL {
        for message in client_examples() {
            let bytes = with_unknown_field(codec, &codec.encode(&message).unwrap());
            assert_eq!(codec.decode_client(&bytes).unwrap(), message);
        }
        for message in server_examples() {
            let bytes = with_unknown_field(codec, &codec.encode(&message).unwrap());
            assert_eq!(codec.decode_server(&bytes).unwrap(), message);
        }
    }
}

#[test]
fn field_order_does_not_matter() {
    let json = br#"{"data":"AQID","seq":9,"t":"state"}"#;
    let expected = ClientMessage::State {
        seq: 9,
        data: Payload::from(&b"\x01\x02\x03"[..]),
    };
    assert_eq!(Codec::Json.decode_client(json).unwrap(), expected);
    // Same in msgpack: {"seq": 9, "data": bin[1,2,3], "t": "state"}
    let packed = [
        0x83, 0xa3, b's', b'e', b'q', 0x09, 0xa4, b'd', b'a', b't', b'a', 0xc4, 0x03, 1, 2, 3,
        0xa1, b't', 0xa5, b's', b't', b'a', b't', b'e',
    ];
    assert_eq!(Codec::MessagePack.decode_client(&packed).unwrap(), expected);
}

#[test]
fn unknown_types_are_reported_as_such() {
    let json = br#"{"t":"teleport","x":1}"#;
    let packed = [
        0x82, 0xa1, b't', 0xa8, b't', b'e', b'l', b'e', b'p', b'o', b'r', b't', 0xa1, b'x', 0x01,
    ];
    for (codec, bytes) in [(Codec::Json, &json[..]), (Codec::MessagePack, &packed[..])] {
        let teleport = Err(DecodeError::UnknownType("teleport".into()));
        assert_eq!(codec.decode_client(bytes).map(drop), teleport);
        assert_eq!(codec.decode_server(bytes).map(drop), teleport);
    }
    // A server message sent to the server is an unknown type too, not garbage.
    let welcome = Codec::Json.encode(&server_examples()[0]).unwrap();
    assert_eq!(
        Codec::Json.decode_client(&welcome),
        Err(DecodeError::UnknownType("welcome".into()))
    );
    // A known type with a bad field is malformed.
    for bytes in [
        &br#"{"t":"state","seq":-1,"data":""}"#[..],
        br#"{"t":"state","seq":1}"#,
        br#"{"t":"event","data":[1,2,3]}"#,
        br#"{"t":"event","data":"not base64!"}"#,
        // Unpadded and URL-safe base64 are not the standard alphabet with padding.
        br#"{"t":"event","data":"AQI"}"#,
        br#"{"t":"event","data":"-_8A"}"#,
        // Payloads are bin in msgpack and strings in JSON, never arrays of integers.
        br#"{"t":"state","seq":1,"data":[1,2]}"#,
        br#"{"lobby":"a","name":"b"}"#,
        br#"{"t":7}"#,
    ] {
        assert!(
            matches!(
                Codec::Json.decode_client(bytes),
                Err(DecodeError::Malformed { .. })
            ),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// JavaScript msgpack encoders write integral numbers as integers: a `ping` whose
/// `performance.now()` happened to be integral must still decode.
#[test]
fn integral_client_time_is_accepted() {
    let expected = ClientMessage::Ping {
        client_time: 1500.0,
    };
    assert_eq!(
        Codec::Json
            .decode_client(br#"{"t":"ping","client_time":1500}"#)
            .unwrap(),
        expected
    );
    // {"t":"ping","client_time": uint 16 1500}
    let mut packed = vec![0x82, 0xa1, b't', 0xa4, b'p', b'i', b'n', b'g', 0xab];
    packed.extend_from_slice(b"client_time");
    packed.extend_from_slice(&[0xcd, 0x05, 0xdc]);
    assert_eq!(Codec::MessagePack.decode_client(&packed).unwrap(), expected);
}

#[test]
fn join_ticket_role_and_the_token_alias() {
    let with = ClientMessage::Join {
        lobby: "a".into(),
        name: "b".into(),
        ticket: Some("tok".into()),
        role: Some(Role::Spectator),
        resume: None,
        offset: None,
    };
    assert_eq!(json_of(&with)["ticket"], "tok");
    assert_eq!(json_of(&with)["role"], "spectator");
    let decode = |json: &str| Codec::Json.decode_client(json.as_bytes());
    let join = |ticket: Option<&str>| ClientMessage::Join {
        lobby: "a".into(),
        name: "b".into(),
        ticket: ticket.map(Into::into),
        role: None,
        resume: None,
        offset: None,
    };
    assert_eq!(
        decode(r#"{"t":"join","lobby":"a","name":"b","token":null}"#).unwrap(),
        join(None)
    );
    // v1's reserved `token` is an alias of `ticket`.
    assert_eq!(
        decode(r#"{"t":"join","lobby":"a","name":"b","token":"tok"}"#).unwrap(),
        join(Some("tok"))
    );
    assert!(matches!(
        decode(r#"{"t":"join","lobby":"a","name":"b","token":"x","ticket":"y"}"#),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        decode(r#"{"t":"join","lobby":"a","name":"b","role":"admin"}"#),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn members_from_older_servers_are_players() {
    let old = br#"{"t":"member_joined","id":3,"name":"bob"}"#;
    assert_eq!(
        Codec::Json.decode_server(old).unwrap(),
        ServerMessage::MemberJoined {
            id: 3,
            name: "bob".into(),
            role: Role::Player,
            offset: None,
        }
    );
}

#[test]
fn subprotocols_and_negotiation() {
    assert_eq!(Codec::MessagePack.subprotocol(), "tickrelay.v1.msgpack");
    assert_eq!(Codec::Json.subprotocol(), "tickrelay.v1.json");
    assert!(Codec::Json.is_text());
    assert!(!Codec::MessagePack.is_text());
    assert_eq!(Codec::negotiate(None), Ok(Codec::MessagePack));
    assert_eq!(Codec::negotiate(Some("tickrelay.v1.json")), Ok(Codec::Json));
    assert_eq!(
        Codec::negotiate(Some("tickrelay.v1.msgpack,tickrelay.v1.json")),
        Ok(Codec::MessagePack)
    );
    assert_eq!(
        Codec::negotiate(Some("graphql-ws ,  tickrelay.v1.json")),
        Ok(Codec::Json)
    );
    let refused = Codec::negotiate(Some("tickrelay.v2.msgpack")).unwrap_err();
    let text = refused.to_string();
    assert!(text.contains("tickrelay.v1.msgpack") && text.contains("tickrelay.v1.json"));
}

#[test]
fn close_codes_and_reasons() {
    let table = [
        (close::NORMAL, 1000),
        (close::GOING_AWAY, 1001),
        (close::PROTOCOL_ERROR, 1002),
        (close::UNSUPPORTED_DATA, 1003),
        (close::INVALID_PAYLOAD, 1007),
        (close::MESSAGE_TOO_BIG, 1009),
        (close::INTERNAL_ERROR, 1011),
        (close::TRY_AGAIN_LATER, 1013),
        (close::RATE_LIMITED, 4001),
        (close::SLOW_CONSUMER, 4002),
        (close::IDLE_TIMEOUT, 4003),
        (close::JOIN_TIMEOUT, 4004),
        (close::UNAUTHORIZED, 4005),
        (close::REPLACED, 4006),
        (close::LEASE_LOST, 4007),
        (close::MOVED, 4008),
    ];
    for (code, number) in table {
        assert_eq!(code, number);
        let reason = close::reason(code);
        assert!(!reason.is_empty(), "{code} has no reason");
        // A close frame's payload is the 2-byte code plus at most 123 bytes of reason.
        assert!(reason.len() <= 123, "{code}: reason too long");
    }
    assert_eq!(close::reason(4999), "");
}
