//! Decoding hostile or broken input returns an error; it never panics, never overflows the
//! stack and never allocates what a length prefix claims.

use proptest::collection::vec;
use proptest::prelude::*;
use tickrelay_protocol::{ClientMessage, Codec, DecodeError, ServerMessage, SnapshotSummary};

use crate::strategies::{client_examples, client_message, server_examples, server_message};

/// Feeds `bytes` to every decoder. Any outcome but a panic is fine here, except that a
/// MessagePack snapshot summary must only come from a snapshot the general decoder accepts.
fn decode_everything(bytes: &[u8]) {
    for codec in Codec::ALL {
        let _ = codec.decode_client(bytes);
        let _ = codec.decode_server(bytes);
        let _ = codec.decode_snapshot_summary(bytes);
    }
    if let Some(summary) = Codec::MessagePack.decode_snapshot_summary(bytes) {
        let Ok(ServerMessage::Snapshot(snapshot)) = Codec::MessagePack.decode_server(bytes) else {
            panic!("summary of a non-snapshot {bytes:02x?}");
        };
        assert_eq!(summary, SnapshotSummary::from(&snapshot), "{bytes:02x?}");
    }
}

/// Every strict prefix of a valid encoding is an error, for the decoder the message is meant
/// for; the other decoders just must not panic.
fn check_prefixes(codec: Codec, bytes: &[u8], for_client: bool) -> Result<(), TestCaseError> {
    for end in 0..bytes.len() {
        let prefix = &bytes[..end];
        let result = if for_client {
            codec.decode_client(prefix).map(drop)
        } else {
            codec.decode_server(prefix).map(drop)
        };
        prop_assert!(
            result.is_err(),
            "{} prefix of {} of {} bytes decoded",
            codec.name(),
            end,
            bytes.len()
        );
        decode_everything(prefix);
    }
    Ok(())
}

#[test]
fn every_truncation_of_the_examples_is_an_error() {
    for codec in Codec::ALL {
        for message in client_examples() {
            check_prefixes(codec, &codec.encode(&message).unwrap(), true).unwrap();
        }
        for message in server_examples() {
            check_prefixes(codec, &codec.encode(&message).unwrap(), false).unwrap();
        }
    }
}

#[test]
fn empty_input_is_malformed() {
    for codec in Codec::ALL {
        assert!(matches!(
            codec.decode_client(b""),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            codec.decode_server(b""),
            Err(DecodeError::Malformed { .. })
        ));
    }
}

/// `{"t":"leave","x":[[[…null…]]]}` with `depth` nested arrays, in JSON and in msgpack: an
/// unknown field is ignored, but the decoder still has to walk it.
fn nested(depth: usize) -> (Vec<u8>, Vec<u8>) {
    let mut json = br#"{"t":"leave","x":"#.to_vec();
    json.extend(std::iter::repeat_n(b'[', depth));
    json.extend_from_slice(b"null");
    json.extend(std::iter::repeat_n(b']', depth));
    json.push(b'}');
    let mut packed = vec![
        0x82, 0xa1, b't', 0xa5, b'l', b'e', b'a', b'v', b'e', 0xa1, b'x',
    ];
    packed.extend(std::iter::repeat_n(0x91, depth));
    packed.push(0xc0);
    (json, packed)
}

/// PROTOCOL.md: at most 127 nested containers (the message's own map included), in both codecs.
#[test]
fn nesting_limit_is_127_levels_in_both_codecs() {
    let (json, packed) = nested(126);
    assert_eq!(Codec::Json.decode_client(&json), Ok(ClientMessage::Leave));
    assert_eq!(
        Codec::MessagePack.decode_client(&packed),
        Ok(ClientMessage::Leave)
    );
    let (json, packed) = nested(127);
    assert!(matches!(
        Codec::Json.decode_client(&json),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        Codec::MessagePack.decode_client(&packed),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    // Half the 2 MiB default of Rust and tokio worker threads, in an unoptimised build.
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            for depth in [200, 1_000, 100_000] {
                let (json, packed) = nested(depth);
                assert!(Codec::Json.decode_client(&json).is_err());
                assert!(Codec::MessagePack.decode_client(&packed).is_err());
                decode_everything(&json);
                decode_everything(&packed);
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// One WebSocket message carries exactly one protocol message, in both codecs.
#[test]
fn trailing_bytes_are_rejected() {
    for codec in Codec::ALL {
        for message in client_examples() {
            let mut two = codec.encode(&message).unwrap();
            codec.encode_into(&ClientMessage::Leave, &mut two).unwrap();
            assert!(
                matches!(
                    codec.decode_client(&two),
                    Err(DecodeError::Malformed { .. })
                ),
                "{} accepted two messages in one frame",
                codec.name()
            );
            let mut garbage = codec.encode(&message).unwrap();
            garbage.push(0xc1);
            assert!(codec.decode_client(&garbage).is_err());
        }
        for message in server_examples() {
            let mut bytes = codec.encode(&message).unwrap();
            bytes.push(b'x');
            assert!(codec.decode_server(&bytes).is_err());
        }
    }
    // Trailing whitespace is still fine in JSON.
    assert_eq!(
        Codec::Json.decode_client(b"{\"t\":\"leave\"}\n"),
        Ok(ClientMessage::Leave)
    );
}

#[test]
fn huge_length_prefixes_are_rejected_without_allocating() {
    let cases: &[&[u8]] = &[
        // map 32 / array 32 / str 32 / bin 32 claiming 4 GiB of content
        &[0xdf, 0xff, 0xff, 0xff, 0xff],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xdb, 0xff, 0xff, 0xff, 0xff],
        &[0xc6, 0xff, 0xff, 0xff, 0xff],
        // {"t":"state","seq":1,"data":<bin 32 of 4 GiB>}
        &[
            0x83, 0xa1, b't', 0xa5, b's', b't', b'a', b't', b'e', 0xa3, b's', b'e', b'q', 0x01,
            0xa4, b'd', b'a', b't', b'a', 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00,
        ],
        // {"t":"snapshot", "players": <array 32 of 4G elements>}
        &[
            0x82, 0xa1, b't', 0xa8, b's', b'n', b'a', b'p', b's', b'h', b'o', b't', 0xa7, b'p',
            b'l', b'a', b'y', b'e', b'r', b's', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ],
    ];
    for bytes in cases {
        assert!(Codec::MessagePack.decode_client(bytes).is_err());
        assert!(Codec::MessagePack.decode_server(bytes).is_err());
        decode_everything(bytes);
    }
}

/// Mutations of a valid encoding: overwrite, insert or delete single bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        match *edit {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            Edit::Insert(i, b) => {
                let i = i % (bytes.len() + 1);
                bytes.insert(i, b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes.remove(i);
            }
            _ => {}
        }
    }
    bytes
}

/// Text built from JSON's own tokens, so the parser gets past the first byte.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(":"),
        Just(","),
        Just("\"t\""),
        Just("\"join\""),
        Just("\"state\""),
        Just("\"snapshot\""),
        Just("\"data\""),
        Just("\"seq\""),
        Just("\"AQID\""),
        Just("\"=\""),
        Just("-1"),
        Just("18446744073709551616"),
        Just("1e999"),
        Just("0.5"),
        Just("null"),
        Just("true"),
        Just("\"\\ud800\""),
    ];
    vec(token, 0..40).prop_map(|tokens| tokens.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn jsonish_text_never_panics(bytes in jsonish()) {
        decode_everything(&bytes);
    }

    #[test]
    fn truncated_client_messages_are_errors(message in client_message()) {
        for codec in Codec::ALL {
            check_prefixes(codec, &codec.encode(&message).unwrap(), true)?;
        }
    }

    #[test]
    fn truncated_server_messages_are_errors(message in server_message()) {
        for codec in Codec::ALL {
            check_prefixes(codec, &codec.encode(&message).unwrap(), false)?;
        }
    }

    #[test]
    fn mutated_client_messages_never_panic(
        message in client_message(),
        edits in vec(edit(), 1..8),
    ) {
        for codec in Codec::ALL {
            decode_everything(&apply(codec.encode(&message).unwrap(), &edits));
        }
    }

    #[test]
    fn mutated_server_messages_never_panic(
        message in server_message(),
        edits in vec(edit(), 1..8),
    ) {
        for codec in Codec::ALL {
            decode_everything(&apply(codec.encode(&message).unwrap(), &edits));
        }
    }
}
