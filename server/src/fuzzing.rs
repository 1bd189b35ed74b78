//! Entry points for the fuzz targets in `fuzz/` (hidden from the docs): one connection's
//! session driven by arbitrary frames over an in-memory stream, and resume-token parsing.
//! Nothing here opens a socket; time is tokio's paused clock, so every deadline a session
//! waits for passes at once.

use std::io;
use std::net::SocketAddr;

use tickrelay_protocol::Codec;
use tickrelay_protocol::framing::reader::{FrameReader, ReadError};
use tickrelay_protocol::framing::{self, Kind, encode_frame};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::ServerContext;
use crate::resume::ResumeKeys;
use crate::ws::{Endpoint, session};

/// Opcodes a fuzzed frame may carry: every defined one, and two reserved ones.
const OPCODES: [u8; 8] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB];

/// Serves one connection whose client sends the frames `input` describes (first byte: codec
/// and endpoint; then, per frame, a flags byte — FIN, reserved bit, opcode — a length byte and
/// that many payload bytes, masked as a client must), then closes its side. Panics if the
/// session panics, or if anything the server sends is not a well-formed frame, or a data
/// message that does not decode with the connection's codec (except on the echo endpoint,
/// which sends back what it got).
#[doc(hidden)]
pub fn session(input: &[u8]) {
    let Some((&mode, mut rest)) = input.split_first() else {
        return;
    };
    let codec = if mode & 1 == 0 {
        Codec::MessagePack
    } else {
        Codec::Json
    };
    let endpoint = if mode & 2 == 0 {
        Endpoint::Relay
    } else {
        Endpoint::Echo
    };
    let mut wire = Vec::new();
    while let [flags, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, after) = tail.split_at(len);
        let opcode = OPCODES[usize::from(flags & 0x07)];
        // FIN and the first reserved bit as given; the opcode from the table.
        let first = (flags & 0xC0) | opcode;
        wire.extend(encode_frame(first, payload, Some([0x37, 0xfa, 0x21, 0x3d])));
        rest = after;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let config = Config {
            max_message_size: 4096,
            echo_endpoint: true,
            ..Config::default()
        };
        let ctx = ServerContext::new(config, CancellationToken::new()).expect("the defaults");
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(server);
        let setup = session::Setup {
            codec,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            refuse: None,
            endpoint,
        };
        let served = session::serve(ctx.clone(), read, write, None, setup);
        let (client_read, mut client_write) = tokio::io::split(client);
        let feed = async move {
            // The server may close first: what it does not read is not an error.
            let _ = client_write.write_all(&wire).await;
            let _ = client_write.shutdown().await;
        };
        let check = check_output(client_read, codec, endpoint);
        tokio::join!(served, feed, check);
        ctx.shutdown.cancel();
    });
}

/// Reads what the server sent until it ends: frames must be well formed, and data messages
/// decodable with `codec` on the relay endpoint.
async fn check_output(read: impl tokio::io::AsyncRead + Unpin, codec: Codec, endpoint: Endpoint) {
    let mut frames = FrameReader::new(read, framing::Role::Client, 1 << 20);
    loop {
        match frames.next_frame().await {
            Ok(frame) => {
                if matches!(frame.kind, Kind::Text | Kind::Binary) && endpoint == Endpoint::Relay {
                    assert_eq!(frame.kind, codec.frame_kind(), "a frame of the wrong kind");
                    if let Err(err) = codec.decode_server(&frame.payload) {
                        panic!("the server sent an undecodable message: {err}");
                    }
                }
            }
            Err(ReadError::Eof) => return,
            Err(ReadError::Io(err)) if err.kind() == io::ErrorKind::BrokenPipe => return,
            Err(err) => panic!("the server sent a malformed frame: {err:?}"),
        }
    }
}

/// Resume tokens: `input` verified as a token never panics and is never accepted (only what
/// the key signed is, and arbitrary bytes are not that); and claims made of `input`'s bytes
/// come back from a token issued for them exactly as they went in.
#[doc(hidden)]
pub fn resume_token(input: &[u8]) {
    let keys = ResumeKeys::new(Some(b"fuzzing-resume-secret-0123456789abcdef"));
    if let Ok(token) = std::str::from_utf8(input) {
        assert!(
            keys.verify(token).is_none(),
            "an arbitrary token verified: {token:?}"
        );
    }
    let number = |at: usize| {
        let mut bytes = [0u8; 8];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = input.get(at + i).copied().unwrap_or(0);
        }
        u64::from_le_bytes(bytes)
    };
    let lobby = String::from_utf8_lossy(input.get(16..).unwrap_or_default()).into_owned();
    let (instance, player_id, holder) = (number(0), number(8) as u32, (number(8) >> 32) as u32);
    let now_secs = crate::clock::unix_micros() / 1_000_000;
    let token = keys.issue(
        crate::resume::SeatClaims {
            lobby: &lobby,
            instance,
            player_id,
            holder,
            name: &lobby,
            role: tickrelay_protocol::Role::Player,
            identity: None,
        },
        now_secs,
    );
    let claims = keys.verify(&token).expect("a token just issued verifies");
    assert_eq!(
        (
            claims.lobby,
            claims.instance,
            claims.player_id,
            claims.holder
        ),
        (lobby, instance, player_id, holder)
    );
}
