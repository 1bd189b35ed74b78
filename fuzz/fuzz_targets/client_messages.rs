//! What a client sends: both codecs' decoders on arbitrary bytes, and the server's fast path
//! for `state` checked against the general decoder (differential).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickrelay_protocol::{ClientMessage, Codec};

fuzz_target!(|bytes: &[u8]| {
    for codec in Codec::ALL {
        let general = codec.decode_client(bytes);
        if let Some((seq, data)) = codec.decode_state(bytes) {
            // Whatever the fast path accepts, the general decoder reads the same way.
            assert_eq!(
                general,
                Ok(ClientMessage::State { seq, data }),
                "{bytes:02x?}"
            );
        }
        // What decodes re-encodes, and that encoding is stable: decoding it and encoding again
        // gives the same bytes. (Bytes, not messages: a `ping` may carry a NaN `client_time`,
        // which never equals itself; found by this target, kept in seeds/regression-nan-ping.)
        if let Ok(message) = general {
            let once = codec.encode(&message).expect("a decoded message encodes");
            let again = codec.decode_client(&once).expect("what was encoded decodes");
            assert_eq!(codec.encode(&again).expect("encodes"), once, "{bytes:02x?}");
        }
    }
});
