//! Reads the server's WebSocket frames with a small buffer that grows only for large frames
//! and shrinks back afterwards.
//!
//! Why not fastwebsockets' read half: it allocates a fixed 8 KiB buffer per connection, about
//! half of what a simulated client costs, and a load generator holds tens of thousands of
//! them. Header parsing is tungstenite's (`FrameHeader::parse`); this module only owns the
//! buffer and the client-side rules (server frames are unmasked and, from tickrelay, final). Server frames are never fragmented by tickrelay, so
//! continuation frames are reported as a protocol error rather than reassembled.

use std::io::{self, Cursor};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Buffer size a connection starts with and shrinks back to.
const INITIAL_CAPACITY: usize = 512;
/// Spare room reserved before each read.
const READ_CHUNK: usize = 256;
/// Largest frame accepted (the load generator only reads snapshots and small messages).
pub const MAX_FRAME: usize = 16 << 20;

/// What a frame is, for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

#[derive(Debug)]
pub struct InFrame {
    pub kind: Kind,
    pub payload: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed without a close frame")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("websocket protocol error: {0}")]
    Protocol(String),
}

pub struct FrameReader<R> {
    io: R,
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            buffer: BytesMut::with_capacity(INITIAL_CAPACITY),
        }
    }

    /// The next whole frame. Not cancel-safe: bytes already read stay buffered, but a caller
    /// that drops the future mid-read must not read again.
    pub async fn next_frame(&mut self) -> Result<InFrame, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            // A large frame grew the buffer; once it is drained, give the memory back.
            if self.buffer.is_empty() && self.buffer.capacity() > 4 * INITIAL_CAPACITY {
                self.buffer = BytesMut::with_capacity(INITIAL_CAPACITY);
            }
            self.buffer.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buffer).await? == 0 {
                return Err(ReadError::Eof);
            }
        }
    }

    /// Takes one frame off the buffer if it is complete; reserves room for it if not.
    fn parse(&mut self) -> Result<Option<InFrame>, ReadError> {
        let mut cursor = Cursor::new(&self.buffer[..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(err) => return Err(ReadError::Protocol(err.to_string())),
        };
        let head = cursor.position() as usize;
        let length = usize::try_from(length)
            .ok()
            .filter(|&len| len <= MAX_FRAME)
            .ok_or_else(|| {
                ReadError::Protocol(format!("frame of {length} bytes exceeds {MAX_FRAME}"))
            })?;
        if self.buffer.len() < head + length {
            self.buffer.reserve(head + length - self.buffer.len());
            return Ok(None);
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol("reserved bits set".into()));
        }
        // RFC 6455 5.1: a client must fail the connection on a masked frame from the server.
        if header.mask.is_some() {
            return Err(ReadError::Protocol("masked frame from the server".into()));
        }
        let kind = match header.opcode {
            OpCode::Data(Data::Text) => Kind::Text,
            OpCode::Data(Data::Binary) => Kind::Binary,
            OpCode::Control(Control::Ping) => Kind::Ping,
            OpCode::Control(Control::Pong) => Kind::Pong,
            OpCode::Control(Control::Close) => Kind::Close,
            other => return Err(ReadError::Protocol(format!("unexpected opcode {other}"))),
        };
        if !header.is_final {
            return Err(ReadError::Protocol(
                "fragmented frame from the server".into(),
            ));
        }
        self.buffer.advance(head);
        let payload = self.buffer.split_to(length);
        Ok(Some(InFrame { kind, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=65535 => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_sizes_come_out_whole() {
        let big = vec![7u8; 70_000];
        let mut wire = Vec::new();
        wire.extend(frame(0x2, b"hello"));
        wire.extend(frame(0x9, b"p"));
        wire.extend(frame(0x2, &big));
        wire.extend(frame(0x1, b"{}"));
        wire.extend(frame(0x8, &[0x03, 0xe8]));
        // Feed the bytes in awkward pieces through a pipe.
        let (mut tx, rx) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in wire.chunks(37) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx);
        let expect = [
            (Kind::Binary, b"hello".to_vec()),
            (Kind::Ping, b"p".to_vec()),
            (Kind::Binary, big.clone()),
            (Kind::Text, b"{}".to_vec()),
            (Kind::Close, vec![0x03, 0xe8]),
        ];
        for (kind, payload) in expect {
            let frame = reader.next_frame().await.unwrap();
            assert_eq!((frame.kind, &frame.payload[..]), (kind, &payload[..]));
        }
        assert!(matches!(reader.next_frame().await, Err(ReadError::Eof)));
        writer.await.unwrap();
        assert!(
            reader.buffer.capacity() <= 4 * INITIAL_CAPACITY,
            "shrunk after the big frame"
        );
    }

    #[tokio::test]
    async fn protocol_violations_are_errors() {
        for wire in [
            vec![0x02, 0x01, 0x00],          // not final (fragmented)
            vec![0xC2, 0x00],                // rsv1 set
            vec![0x83, 0x00],                // reserved opcode
            vec![0x82, 0x81, 1, 2, 3, 4, 0], // masked frame from a server
        ] {
            let mut reader = FrameReader::new(&wire[..]);
            assert!(
                matches!(reader.next_frame().await, Err(ReadError::Protocol(_))),
                "{wire:?}"
            );
        }
    }
}
