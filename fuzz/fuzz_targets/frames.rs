//! The sans-I/O WebSocket frame decoder and the message reassembler, on arbitrary bytes, in
//! both roles: no panic, no frame over the limit, no message over the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tickrelay_protocol::framing::{Decoder, Kind, Reassembler, Role, check_close};

const MAX: usize = 4096;

fuzz_target!(|bytes: &[u8]| {
    for role in [Role::Server, Role::Client] {
        let decoder = Decoder::new(role, MAX);
        let mut messages = Reassembler::new(None, MAX);
        let mut buffer = BytesMut::from(bytes);
        // Every frame the bytes hold, until they run out or break the protocol.
        while let Ok(Some(frame)) = decoder.decode(&mut buffer) {
            assert!(frame.payload.len() <= MAX);
            match frame.kind {
                Kind::Close => {
                    let _ = check_close(&frame.payload);
                    break;
                }
                Kind::Ping | Kind::Pong => {}
                kind => match messages.push(kind, frame.fin, frame.payload) {
                    Ok(Some(message)) => {
                        assert!(message.payload.len() <= MAX);
                        if message.kind == Kind::Text {
                            assert!(std::str::from_utf8(&message.payload).is_ok());
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                },
            }
        }
    }
});
