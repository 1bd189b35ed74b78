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
        // What decodes re-encodes and decodes to the same message.
        if let Ok(message) = general {
            let again = codec.encode(&message).expect("a decoded message encodes");
            assert_eq!(codec.decode_client(&again), Ok(message));
        }
    }
});
