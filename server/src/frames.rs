//! Reads WebSocket frames holding no buffer between frames; shared by the server (client
//! frames) and the load generator (server frames).
//!
//! Why not fastwebsockets' read half: it allocates a fixed 8 KiB buffer per connection, the
//! largest single cost of an idle connection, and tickrelay holds tens of thousands of them.
//! Here each read lands in a scratch array on the stack (not in the connection's state) and
//! only the bytes read are copied out; a frame that arrived whole leaves with that copy as its
//! payload, so an idle connection keeps no buffer at all. Only a frame split across reads is
//! buffered, sized to the frame.
//! Header parsing is tungstenite's (`FrameHeader::parse`, which also rejects reserved
//! opcodes) and unmasking fastwebsockets' (`unmask`); this module owns only the buffer and
//! the RFC 6455 rules that depend on the role. Message reassembly stays with the caller.

use std::future::poll_fn;
use std::io::{self, Cursor};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::ready;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Size of the stack scratch array each read lands in. A frame being buffered with at least
/// this much room reserved is read straight into its buffer instead.
const SCRATCH: usize = 4096;
/// Largest control frame payload (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which end of the connection reads: frames from clients are masked, from servers not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close,
}

#[derive(Debug)]
pub struct InFrame {
    pub kind: Kind,
    /// Last frame of its message.
    pub fin: bool,
    /// Unmasked payload.
    pub payload: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed without a close frame")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
}

pub struct FrameReader<R> {
    io: R,
    role: Role,
    max_payload: usize,
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing frames with more than `max_payload` bytes (before buffering them).
    pub fn new(io: R, role: Role, max_payload: usize) -> Self {
        Self {
            io,
            role,
            max_payload,
            buffer: BytesMut::new(),
        }
    }

    /// The next whole frame. Not cancel-safe: a caller that drops the future mid-read must
    /// not read again.
    pub async fn next_frame(&mut self) -> Result<InFrame, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            let read = if self.buffer.capacity() - self.buffer.len() >= SCRATCH {
                // A large frame whose room `parse` reserved: no copy.
                self.io.read_buf(&mut self.buffer).await?
            } else {
                self.read_via_scratch().await?
            };
            if read == 0 {
                return Err(ReadError::Eof);
            }
        }
    }

    /// Reads into a stack array and appends what arrived to the buffer, so the buffer is
    /// exactly as large as the unparsed bytes (usually one whole frame).
    async fn read_via_scratch(&mut self) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            self.buffer.extend_from_slice(read.filled());
            std::task::Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }

    /// Takes one frame off the buffer if it is complete; reserves room for it if not.
    fn parse(&mut self) -> Result<Option<InFrame>, ReadError> {
        let mut cursor = Cursor::new(&self.buffer[..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(ReadError::Protocol("reserved opcode")),
        };
        let kind = match header.opcode {
            OpCode::Data(Data::Text) => Kind::Text,
            OpCode::Data(Data::Binary) => Kind::Binary,
            OpCode::Data(Data::Continue) => Kind::Continuation,
            OpCode::Control(Control::Ping) => Kind::Ping,
            OpCode::Control(Control::Pong) => Kind::Pong,
            OpCode::Control(Control::Close) => Kind::Close,
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(ReadError::Protocol("reserved opcode"));
            }
        };
        // Checked on the header alone, before any payload is buffered.
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => {
                return Err(ReadError::Protocol("unmasked frame from a client"));
            }
            (Role::Client, true) => return Err(ReadError::Protocol("masked frame from a server")),
            _ => {}
        }
        let control = matches!(kind, Kind::Ping | Kind::Pong | Kind::Close);
        if control && (!header.is_final || length > MAX_CONTROL_PAYLOAD as u64) {
            return Err(ReadError::Protocol("fragmented or oversized control frame"));
        }
        let length = usize::try_from(length)
            .ok()
            .filter(|&len| len <= self.max_payload)
            .ok_or(ReadError::TooLarge(length))?;
        let head = cursor.position() as usize;
        if self.buffer.len() < head + length {
            self.buffer.reserve(head + length - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(head);
        let mut payload = if self.buffer.len() == length {
            // The common case, one frame per read: the buffer becomes the payload whole (no
            // split, so no shared-ownership bookkeeping) and the reader keeps nothing.
            std::mem::take(&mut self.buffer)
        } else {
            self.buffer.split_to(length)
        };
        if let Some(mask) = header.mask {
            fastwebsockets::unmask(&mut payload, mask);
        }
        Ok(Some(InFrame {
            kind,
            fin: header.is_final,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame as a client (masked with `mask`) or a server (unmasked) would send it.
    fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n @ 0..=125 => out.push(masked | n as u8),
            n @ 126..=65535 => {
                out.push(masked | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(masked | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(mask) => {
                out.extend_from_slice(&mask);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    async fn read_all(role: Role, wire: Vec<u8>, max: usize) -> (Vec<InFrame>, ReadError, usize) {
        // Awkward chunk sizes through a small pipe: frames straddle reads.
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(37) {
                if tx.write_all(chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut reader = FrameReader::new(rx, role, max);
        let mut frames = Vec::new();
        let end = loop {
            match reader.next_frame().await {
                Ok(frame) => frames.push(frame),
                Err(err) => break err,
            }
        };
        writer.abort();
        (frames, end, reader.buffer.capacity())
    }

    #[tokio::test]
    async fn client_frames_are_unmasked_whole_and_no_buffer_is_kept() {
        let big = vec![7u8; 70_000];
        let mask = Some([1, 2, 3, 4]);
        let mut wire = Vec::new();
        wire.extend(frame(0x82, b"hello", mask));
        wire.extend(frame(0x89, b"p", mask));
        wire.extend(frame(0x02, &big[..40_000], mask));
        wire.extend(frame(0x80, &big[40_000..], mask));
        wire.extend(frame(0x81, b"{}", mask));
        wire.extend(frame(0x88, &[0x03, 0xe8], mask));
        let (frames, end, capacity) = read_all(Role::Server, wire, 1 << 20).await;
        let seen: Vec<_> = frames
            .iter()
            .map(|f| (f.kind, f.fin, f.payload.len()))
            .collect();
        assert_eq!(
            seen,
            [
                (Kind::Binary, true, 5),
                (Kind::Ping, true, 1),
                (Kind::Binary, false, 40_000),
                (Kind::Continuation, true, 30_000),
                (Kind::Text, true, 2),
                (Kind::Close, true, 2),
            ]
        );
        assert_eq!(&frames[0].payload[..], b"hello");
        assert!(frames[2].payload.iter().all(|&b| b == 7), "unmasked");
        assert!(matches!(end, ReadError::Eof));
        assert_eq!(capacity, 0, "nothing buffered once every frame is out");
    }

    #[tokio::test]
    async fn server_frames_are_read_unmasked() {
        let wire = [frame(0x82, b"snapshot", None), frame(0x89, b"", None)].concat();
        let (frames, end, _) = read_all(Role::Client, wire, 1 << 20).await;
        assert_eq!(&frames[0].payload[..], b"snapshot");
        assert_eq!(frames[1].kind, Kind::Ping);
        assert!(matches!(end, ReadError::Eof));
    }

    #[tokio::test]
    async fn violations_end_the_connection_with_the_right_error() {
        let mask = Some([9, 9, 9, 9]);
        let cases: Vec<(Role, Vec<u8>, &str)> = vec![
            (Role::Server, frame(0x82, b"x", None), "unmasked"),
            (Role::Client, frame(0x82, b"x", mask), "masked"),
            (Role::Server, frame(0xC2, b"x", mask), "reserved bits"),
            (Role::Server, frame(0x83, b"x", mask), "reserved opcode"),
            (Role::Server, frame(0x09, b"x", mask), "control"),
            (Role::Server, frame(0x89, &[0; 126], mask), "control"),
        ];
        for (role, wire, expected) in cases {
            let (frames, end, _) = read_all(role, wire, 1 << 20).await;
            assert!(frames.is_empty());
            assert!(
                end.to_string().contains(expected),
                "{end} should mention {expected}"
            );
        }
        // Too large is refused from the header, before the payload arrives.
        let header_only = frame(0x82, &[0; 2000], mask)[..8].to_vec();
        let (_, end, capacity) = read_all(Role::Server, header_only, 1000).await;
        assert!(matches!(end, ReadError::TooLarge(2000)));
        assert!(capacity < 2000, "nothing reserved for the refused payload");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a peer sends, in either role, the reader yields frames and then a typed
        /// error: it never panics, never hangs, and never buffers past its limit.
        #[test]
        fn arbitrary_bytes_never_panic(
            wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            server in proptest::prelude::any::<bool>(),
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (frames, _end, capacity) = runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), read_all(role, wire.clone(), 1024))
                    .await
                    .expect("reader finished")
            });
            let payload: usize = frames.iter().map(|f| f.payload.len()).sum();
            proptest::prop_assert!(payload <= wire.len());
            proptest::prop_assert!(capacity <= 4096, "buffer grew to {}", capacity);
        }
    }
}
