//! proptest strategies for every protocol message, biased towards the values most likely to
//! break a codec: empty and non-ASCII strings, empty payloads, payloads that cross the msgpack
//! `bin 8`/`bin 16` boundary, integer extremes and awkward floats.

use proptest::collection::vec;
use proptest::prelude::*;
use tickrelay_protocol::{
    ClientMessage, ErrorCode, Member, Payload, PlayerId, PlayerState, Role, ServerMessage, Snapshot,
};

/// Any string: empty, ASCII, control characters, multi-byte and astral-plane characters.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        vec(any::<char>(), 0..24).prop_map(String::from_iter),
        Just("ünïcödé 🎮 игрок 玩家 \u{0} \"quoted\" \\ \n".to_owned()),
    ]
}

pub(crate) fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        Just(Payload::default()),
        vec(any::<u8>(), 0..16).prop_map(Payload::from),
        // 255/256 bytes is where msgpack switches from bin 8 to bin 16.
        vec(any::<u8>(), 250..300).prop_map(Payload::from),
    ]
}

pub(crate) fn u64_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(127),
        Just(128),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just((1 << 53) - 1),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

pub(crate) fn u32_value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(127),
        Just(128),
        Just(u32::from(u16::MAX) + 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

/// Finite floats of every class and sign (JSON cannot carry NaN or infinities).
pub(crate) fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64 as f;
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(f64::EPSILON),
        Just(123_456.789),
        // Integral values: a JavaScript client's `performance.now()` may be one.
        u64_value().prop_map(|v| v as f64),
        f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO,
    ]
}

pub(crate) fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadMessage),
        Just(ErrorCode::UnknownMessage),
        Just(ErrorCode::NotJoined),
        Just(ErrorCode::AlreadyJoined),
        Just(ErrorCode::LobbyFull),
        Just(ErrorCode::TooManyLobbies),
        Just(ErrorCode::InvalidJoin),
        Just(ErrorCode::StateTooLarge),
        Just(ErrorCode::EventTooLarge),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::Overloaded),
        Just(ErrorCode::SeatExpired),
        Just(ErrorCode::WrongNode),
        Just(ErrorCode::Unknown),
    ]
}

pub(crate) fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Player), Just(Role::Spectator)]
}

pub(crate) fn player_id() -> impl Strategy<Value = PlayerId> {
    u32_value()
}

pub(crate) fn player_state() -> impl Strategy<Value = PlayerState> {
    (player_id(), u64_value(), payload()).prop_map(|(id, seq, data)| PlayerState { id, seq, data })
}

pub(crate) fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        u64_value(),
        u64_value(),
        any::<bool>(),
        vec(player_state(), 0..6),
        vec(player_id(), 0..6),
    )
        .prop_map(
            |(tick, server_time_us, keyframe, players, removed)| Snapshot {
                tick,
                server_time_us,
                keyframe,
                players,
                removed,
            },
        )
}

pub(crate) fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(role()),
            proptest::option::of((text(), u64_value()))
        )
            .prop_map(|(lobby, name, ticket, role, resume)| ClientMessage::Join {
                lobby,
                name,
                ticket,
                role,
                offset: resume.as_ref().map(|(_, offset)| *offset),
                resume: resume.map(|(token, _)| token),
            }),
        (u64_value(), payload()).prop_map(|(seq, data)| ClientMessage::State { seq, data }),
        payload().prop_map(|data| ClientMessage::Event { data }),
        Just(ClientMessage::Leave),
        finite_f64().prop_map(|client_time| ClientMessage::Ping { client_time }),
    ]
}

/// Boxed arms: inline, this union of strategies takes so much stack that a debug build's 2 MiB
/// test thread overflows generating one.
pub(crate) fn server_message() -> BoxedStrategy<ServerMessage> {
    prop_oneof![
        ((
            player_id(),
            text(),
            u32_value(),
            vec(
                (player_id(), text(), role(), any::<bool>()).prop_map(|(id, name, role, away)| {
                    Member {
                        id,
                        name,
                        role,
                        away,
                    }
                }),
                0..5
            ),
            (
                u64_value(),
                proptest::option::of(text()),
                any::<bool>(),
                u64_value()
            ),
        )
            .prop_map(
                |(player_id, lobby, tick_hz, members, (offset, resume, resumed, lost))| {
                    ServerMessage::Welcome {
                        player_id,
                        lobby,
                        tick_hz,
                        members,
                        offset,
                        resume,
                        resumed,
                        lost,
                    }
                }
            ))
        .boxed(),
        (snapshot().prop_map(ServerMessage::Snapshot)).boxed(),
        ((player_id(), payload(), proptest::option::of(u64_value()))
            .prop_map(|(from, data, offset)| ServerMessage::Event { from, data, offset }))
        .boxed(),
        ((
            player_id(),
            text(),
            role(),
            proptest::option::of(u64_value())
        )
            .prop_map(|(id, name, role, offset)| ServerMessage::MemberJoined {
                id,
                name,
                role,
                offset
            }))
        .boxed(),
        ((player_id(), proptest::option::of(u64_value()))
            .prop_map(|(id, offset)| ServerMessage::MemberLeft { id, offset }))
        .boxed(),
        ((player_id(), u64_value())
            .prop_map(|(id, offset)| ServerMessage::MemberAway { id, offset }))
        .boxed(),
        ((player_id(), u64_value())
            .prop_map(|(id, offset)| ServerMessage::MemberBack { id, offset }))
        .boxed(),
        ((finite_f64(), u64_value()).prop_map(|(client_time, server_time_us)| {
            ServerMessage::Pong {
                client_time,
                server_time_us,
            }
        }))
        .boxed(),
        (
            error_code(),
            text(),
            proptest::option::of(u64_value()),
            proptest::option::of(text())
        )
            .prop_map(
                |(code, message, retry_after_ms, url)| ServerMessage::Error {
                    code,
                    message,
                    retry_after_ms,
                    url,
                }
            )
            .boxed(),
        ((text(), proptest::option::of(text()))
            .prop_map(|(url, resume)| ServerMessage::Redirect { url, resume }))
        .boxed(),
    ]
    .boxed()
}

/// One fixed example of every message type, with non-trivial field values.
pub(crate) fn client_examples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Join {
            lobby: "arena".into(),
            name: "ann".into(),
            ticket: None,
            role: None,
            resume: None,
            offset: None,
        },
        ClientMessage::Join {
            lobby: "lobby 🎮".into(),
            name: "игрок".into(),
            ticket: Some("ticket".into()),
            role: Some(Role::Spectator),
            resume: Some("resume-token".into()),
            offset: Some(u64::MAX),
        },
        ClientMessage::State {
            seq: u64::MAX,
            data: Payload::from(vec![0xff; 300]),
        },
        ClientMessage::Event {
            data: Payload::from(&b"boom"[..]),
        },
        ClientMessage::Event {
            data: Payload::default(),
        },
        ClientMessage::Leave,
        ClientMessage::Ping {
            client_time: 1234.5678,
        },
    ]
}

pub(crate) fn server_examples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome {
            player_id: 7,
            lobby: "arena".into(),
            tick_hz: 30,
            members: vec![
                Member {
                    id: 3,
                    name: "bob".into(),
                    role: Role::Player,
                    away: false,
                },
                Member {
                    id: 4,
                    name: "eve".into(),
                    role: Role::Spectator,
                    away: true,
                },
            ],
            offset: 12,
            resume: Some("token".into()),
            resumed: true,
            lost: 2,
        },
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
        }),
        ServerMessage::Snapshot(Snapshot::default()),
        ServerMessage::Event {
            from: u32::MAX,
            data: Payload::from(&b"boom"[..]),
            offset: Some(13),
        },
        ServerMessage::MemberJoined {
            id: 9,
            name: "zoë".into(),
            role: Role::Spectator,
            offset: Some(14),
        },
        ServerMessage::MemberAway { id: 9, offset: 15 },
        ServerMessage::MemberBack { id: 9, offset: 16 },
        ServerMessage::MemberLeft {
            id: 9,
            offset: Some(17),
        },
        ServerMessage::Pong {
            client_time: -0.5,
            server_time_us: u64::MAX,
        },
        ServerMessage::Error {
            code: ErrorCode::LobbyFull,
            message: "lobby arena is full (16/16)".into(),
            retry_after_ms: None,
            url: None,
        },
        ServerMessage::Error {
            code: ErrorCode::Overloaded,
            message: "server full".into(),
            retry_after_ms: Some(1500),
            url: None,
        },
        ServerMessage::Error {
            code: ErrorCode::WrongNode,
            message: "lobby \"arena\" runs on node \"n2\": join there".into(),
            retry_after_ms: None,
            url: Some("ws://10.0.0.2:8080/ws".into()),
        },
        ServerMessage::Redirect {
            url: "ws://10.0.0.3:8080/ws".into(),
            resume: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
        },
    ]
}
