//! `decode(encode(m)) == m` for every message, in both codecs.

use proptest::prelude::*;
use tickrelay_protocol::{ClientMessage, Codec, ServerMessage};

use crate::msgpack;
use crate::strategies::{client_examples, client_message, server_examples, server_message};

fn check_client(message: &ClientMessage) -> Result<(), TestCaseError> {
    check(message, Codec::decode_client)
}

fn check_server(message: &ServerMessage) -> Result<(), TestCaseError> {
    check(message, Codec::decode_server)
}

/// `decode(encode(m)) == m` in both codecs, the frame has the documented shape, and
/// `encode_into` appends exactly what `encode` returns.
fn check<M, E>(message: &M, decode: fn(Codec, &[u8]) -> Result<M, E>) -> Result<(), TestCaseError>
where
    M: serde::Serialize + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    for codec in Codec::ALL {
        let bytes = codec.encode(message).unwrap();
        prop_assert_eq!(&decode(codec, &bytes).unwrap(), message, "{}", codec.name());
        check_frame_shape(codec, &bytes)?;
        let mut buf = b"prefix".to_vec();
        codec.encode_into(message, &mut buf).unwrap();
        prop_assert_eq!(&buf[6..], &bytes[..]);
    }
    Ok(())
}

/// JSON must be valid UTF-8 (it travels in text frames) and a single object; msgpack must be one
/// map with `t` as its first key (so a streaming client can dispatch early).
fn check_frame_shape(codec: Codec, bytes: &[u8]) -> Result<(), TestCaseError> {
    match codec {
        Codec::Json => {
            let text = std::str::from_utf8(bytes);
            prop_assert!(text.is_ok(), "JSON encoding is not UTF-8");
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            prop_assert!(value.is_object());
            prop_assert!(value["t"].is_string());
        }
        Codec::MessagePack => {
            let value = msgpack::parse(bytes).map_err(TestCaseError::fail)?;
            prop_assert_eq!(value.keys().first().copied(), Some("t"));
        }
    }
    Ok(())
}

#[test]
fn fixed_examples_round_trip() {
    for message in client_examples() {
        check_client(&message).unwrap();
    }
    for message in server_examples() {
        check_server(&message).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        check_client(&message)?;
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        check_server(&message)?;
    }
}

/// Floats that a best-effort decimal parser gets wrong by one ulp (serde_json needs its
/// `float_roundtrip` feature for these): `pong` must echo `client_time` bit for bit.
#[test]
fn json_floats_round_trip_exactly() {
    for client_time in [
        9_007_199_254_740_991.0,
        0.1 + 0.2,
        5e-324,
        2.225_073_858_507_201e-308,
        f64::MAX,
        1_700_000_000_123.456_7,
    ] {
        let ping = ClientMessage::Ping { client_time };
        let bytes = Codec::Json.encode(&ping).unwrap();
        match Codec::Json.decode_client(&bytes).unwrap() {
            ClientMessage::Ping { client_time: back } => {
                assert_eq!(back.to_bits(), client_time.to_bits(), "{client_time:e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
