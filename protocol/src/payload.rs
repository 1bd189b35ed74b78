//! `Payload`: opaque application bytes (player states, event bodies).
//!
//! On the wire it is a MessagePack `bin` in the binary codec and a standard base64 string in
//! JSON, never an array of integers. It wraps `Bytes` so the server can hand one received state
//! to every snapshot without copying it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Opaque bytes carried by `state` and `event` messages.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Bytes);

impl Payload {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(bytes: &'static [u8]) -> Self {
        Self(Bytes::from_static(bytes))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // JSON cannot carry raw bytes; serde_json reports itself human readable, rmp-serde not.
        if serializer.is_human_readable() {
            serializer.serialize_str(&BASE64.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Accept both shapes whatever the deserializer claims: messages with an internal `t`
        // tag are buffered by serde before they reach this visitor, which hides the format.
        deserializer.deserialize_any(PayloadVisitor)
    }
}

struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("binary data (MessagePack bin, or a base64 string in JSON)")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload(Bytes::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        BASE64
            .decode(v)
            .map(Payload::from)
            .map_err(|err| E::custom(format_args!("invalid base64 payload: {err}")))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Payload, A::Error> {
        Err(de::Error::custom(
            "payload must be binary (MessagePack bin or base64 string), not an array",
        ))
    }
}
