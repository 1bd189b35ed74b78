//! The two codecs and subprotocol negotiation. MessagePack (binary frames) is the default; JSON
//! (text frames) exists so a developer can read the traffic in the browser's devtools.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ClientMessage, ServerMessage};

/// Maximum container nesting accepted when decoding MessagePack (v1 messages need 3); the
/// fast snapshot decoder (`fast.rs`) enforces the same: containers, ext values included, nest
/// at most 127 deep, the message's own map counting as level 1.
pub(crate) const MAX_NESTING: usize = 128;

/// A wire codec, chosen per connection by WebSocket subprotocol negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `tickrelay.v1.msgpack`: MessagePack maps with named fields, in binary frames.
    MessagePack,
    /// `tickrelay.v1.json`: JSON objects in text frames, payloads as base64 strings.
    Json,
}

/// Encoding failed; only possible for values serde cannot represent (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("msgpack encode: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
    #[error("json encode: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why bytes received from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Well-formed, but its `t` names a message type this version does not know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Not a valid message: bad encoding, missing or mistyped field, truncated input.
    #[error("malformed {codec} message: {detail}")]
    Malformed { codec: &'static str, detail: String },
}

/// The client offered subprotocols, none of which this server speaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported websocket subprotocol {offered:?}: this server speaks tickrelay.v1.msgpack and tickrelay.v1.json"
)]
pub struct NegotiationError {
    pub offered: String,
}

impl Codec {
    pub const ALL: [Self; 2] = [Self::MessagePack, Self::Json];

    /// The `Sec-WebSocket-Protocol` token for this codec.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Self::MessagePack => "tickrelay.v1.msgpack",
            Self::Json => "tickrelay.v1.json",
        }
    }

    /// Short name used in logs, metrics labels and command lines.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MessagePack => "msgpack",
            Self::Json => "json",
        }
    }

    /// Whether messages travel in text frames (JSON) rather than binary frames.
    pub const fn is_text(self) -> bool {
        matches!(self, Self::Json)
    }

    /// The WebSocket frame kind its messages travel in.
    pub const fn frame_kind(self) -> crate::framing::Kind {
        match self {
            Self::MessagePack => crate::framing::Kind::Binary,
            Self::Json => crate::framing::Kind::Text,
        }
    }

    /// Small dense index (0 or 1) for per-codec arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::MessagePack => 0,
            Self::Json => 1,
        }
    }

    /// Picks the codec from a `Sec-WebSocket-Protocol` request header value (a comma-separated
    /// list in the client's order of preference). No header means MessagePack.
    pub fn negotiate(offered: Option<&str>) -> Result<Self, NegotiationError> {
        let Some(offered) = offered else {
            return Ok(Self::MessagePack);
        };
        offered
            .split(',')
            .map(str::trim)
            .find_map(|token| Self::ALL.into_iter().find(|c| c.subprotocol() == token))
            .ok_or_else(|| NegotiationError {
                offered: offered.to_owned(),
            })
    }

    /// Encodes any protocol value (normally a [`ServerMessage`] or [`ClientMessage`]).
    pub fn encode<T: Serialize>(self, message: &T) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(message, &mut out)?;
        Ok(out)
    }

    /// Encodes a server message into the shared bytes every recipient's frame carries.
    pub fn encode_server(self, message: &ServerMessage) -> bytes::Bytes {
        // Invariant: every `ServerMessage` field is a type both serializers represent (strings,
        // integers, bools, byte payloads, sequences and string-keyed structs) and the writer
        // is a Vec, which never fails; the protocol tests encode every variant in both codecs.
        let encoded = self
            .encode(message)
            .expect("every ServerMessage encodes in both codecs");
        bytes::Bytes::from(encoded)
    }

    /// Encodes into `out` (appending), so hot paths can reuse a buffer.
    pub fn encode_into<T: Serialize>(
        self,
        message: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        match self {
            // `with_struct_map`: structs as maps with field names, never positional arrays.
            Self::MessagePack => {
                message.serialize(&mut rmp_serde::Serializer::new(&mut *out).with_struct_map())?
            }
            Self::Json => serde_json::to_writer(&mut *out, message)?,
        }
        Ok(())
    }

    /// Decodes a message a client sent.
    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
        self.decode_tagged(bytes, ClientMessage::TYPES)
    }

    /// Decodes a message the server sent (for clients: the load generator, tests).
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerMessage, DecodeError> {
        self.decode_tagged(bytes, ServerMessage::TYPES)
    }

    fn decode_tagged<T: DeserializeOwned>(
        self,
        bytes: &[u8],
        known_types: &[&str],
    ) -> Result<T, DecodeError> {
        let err = match self.decode_raw::<T>(bytes) {
            Ok(message) => return Ok(message),
            Err(err) => err,
        };
        // Only on the error path: tell "valid message of an unknown type" (forward compatible,
        // ignorable) from garbage (the peer is broken).
        #[derive(Deserialize)]
        struct TagOnly {
            t: String,
        }
        match self.decode_raw::<TagOnly>(bytes) {
            Ok(TagOnly { t }) if !known_types.contains(&t.as_str()) => {
                Err(DecodeError::UnknownType(t))
            }
            _ => Err(err),
        }
    }

    pub(crate) fn decode_raw<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        match self {
            Self::MessagePack => {
                let malformed = |detail: String| DecodeError::Malformed {
                    codec: "msgpack",
                    detail,
                };
                // A cursor, not `from_slice`, so trailing bytes can be rejected as JSON does.
                let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
                // rmp's default limit (1024 levels) lets a ~1 KiB message overflow a 2 MiB
                // thread stack (at ~500 levels in a debug build); cap it like serde_json's
                // fixed recursion limit of 128.
                de.set_max_depth(MAX_NESTING);
                let message = T::deserialize(&mut de).map_err(|err| malformed(err.to_string()))?;
                match bytes.len() as u64 - de.position() {
                    0 => Ok(message),
                    n => Err(malformed(format!("{n} trailing bytes after the message"))),
                }
            }
            Self::Json => {
                let malformed = |detail: String| DecodeError::Malformed {
                    codec: "json",
                    detail,
                };
                // JSON is UTF-8 text. Checked up front because serde_json checks only the
                // strings it keeps: the fast path skipped a non-UTF-8 unknown field that the
                // general decoder (which buffers every field) refused. Found by the
                // client_messages fuzz target (seeds/regression-non-utf8-unknown-field).
                let text = std::str::from_utf8(bytes)
                    .map_err(|err| malformed(format!("not UTF-8 text: {err}")))?;
                serde_json::from_str(text).map_err(|err| malformed(err.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    // The rest of the codec's behaviour (bytes, field names, unknown types, malformed input)
    // is pinned by the integration tests in `tests/it/`; these are what they do not check.
    #[test]
    fn a_ping_with_a_nan_client_time_decodes_and_encodes_stably() {
        // Found by fuzz/fuzz_targets/client_messages.rs (seeds/regression-nan-ping): MessagePack
        // can carry a NaN float, which never equals itself.
        let mut bytes = vec![0x82, 0xa1, b't', 0xa4];
        bytes.extend_from_slice(b"ping");
        bytes.push(0xab);
        bytes.extend_from_slice(b"client_time");
        bytes.extend_from_slice(&[0xcb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
        let codec = Codec::MessagePack;
        let Ok(ClientMessage::Ping { client_time }) = codec.decode_client(&bytes) else {
            panic!("a ping");
        };
        assert!(client_time.is_nan());
        let once = codec.encode(&ClientMessage::Ping { client_time }).unwrap();
        let again = codec.decode_client(&once).unwrap();
        assert_eq!(codec.encode(&again).unwrap(), once);
    }

    #[test]
    fn json_that_is_not_utf8_is_refused_by_the_fast_path_too() {
        // Found by the client_messages fuzz target (seeds/regression-non-utf8-unknown-field):
        // the invalid bytes sit in an unknown field, which the fast path used to skip.
        let bytes = b"{\"t\":\"state\",\"seq\":42,\"data\":\"AQID\",\"x\":\"\x9c\"}";
        assert_eq!(Codec::Json.decode_state(bytes), None);
        let err = Codec::Json.decode_client(bytes).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let valid = br#"{"t":"state","seq":42,"data":"AQID","x":"\u009c"}"#;
        assert!(Codec::Json.decode_state(valid).is_some());
    }

    #[test]
    fn error_codes_from_a_newer_server_decode_as_unknown() {
        let newer = br#"{"t":"error","code":"banned","message":"x"}"#;
        assert_eq!(
            Codec::Json.decode_server(newer).unwrap(),
            ServerMessage::Error {
                code: ErrorCode::Unknown,
                message: "x".into(),
                retry_after_ms: None,
                url: None,
            }
        );
    }
}
