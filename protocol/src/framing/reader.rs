//! The async frame reader (feature `tokio`): a thin loop over [`Decoder`] that keeps no buffer
//! between frames.
//!
//! Why not fastwebsockets' read half: it allocates a fixed 8 KiB buffer per connection, the
//! largest single cost of an idle connection, and tickrelay holds tens of thousands of them.
//! Here each read lands in a scratch array on the stack (not in the connection's state) and
//! only the bytes read are copied out; a frame that arrived whole leaves with that copy as its
//! payload, so an idle connection keeps no buffer at all. Only a frame split across reads is
//! buffered, sized to the frame.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::{Decoder, Frame, FrameError, Role};

/// Size of the stack scratch array each read lands in. A frame being buffered with at least
/// this much room reserved is read straight into its buffer instead.
const SCRATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed without a close frame")]
    Eof,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

pub struct FrameReader<R> {
    io: R,
    decoder: Decoder,
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing frames with more than `max_payload` bytes (before buffering them).
    pub fn new(io: R, role: Role, max_payload: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(role, max_payload),
            buffer: BytesMut::new(),
        }
    }

    /// The next whole frame. Cancel-safe: bytes land in the reader's buffer in the same poll
    /// that reads them, so dropping the future loses nothing and the next call resumes the
    /// frame (unlike fastwebsockets' `read_frame`).
    pub async fn next_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buffer)? {
                return Ok(frame);
            }
            let read = if self.buffer.capacity() - self.buffer.len() >= SCRATCH {
                // A large frame whose room the decoder reserved: no copy.
                self.io.read_buf(&mut self.buffer).await?
            } else {
                self.read_via_scratch().await?
            };
            if read == 0 {
                return Err(ReadError::Eof);
            }
        }
    }

    /// Bytes held for a frame not complete yet (0 between frames).
    pub fn buffered_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Reads into a stack array and appends what arrived to the buffer, so the buffer is
    /// exactly as large as the unparsed bytes (usually one whole frame).
    async fn read_via_scratch(&mut self) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut scratch = [MaybeUninit::<u8>::uninit(); SCRATCH];
            let mut read = ReadBuf::uninit(&mut scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            self.buffer.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, encode_frame};
    use super::*;

    async fn read_all(role: Role, wire: Vec<u8>, max: usize) -> (Vec<Frame>, ReadError, usize) {
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
        (frames, end, reader.buffered_capacity())
    }

    #[tokio::test]
    async fn frames_split_across_reads_come_out_whole_and_no_buffer_is_kept() {
        let big = vec![7u8; 70_000];
        let mask = Some([1, 2, 3, 4]);
        let mut wire = Vec::new();
        wire.extend(encode_frame(0x82, b"hello", mask));
        wire.extend(encode_frame(0x89, b"p", mask));
        wire.extend(encode_frame(0x02, &big[..40_000], mask));
        wire.extend(encode_frame(0x80, &big[40_000..], mask));
        wire.extend(encode_frame(0x81, b"{}", mask));
        wire.extend(encode_frame(0x88, &[0x03, 0xe8], mask));
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
    async fn a_read_dropped_mid_frame_loses_nothing() {
        use tokio::io::AsyncWriteExt;
        let wire = encode_frame(0x82, &[5u8; 3000], Some([1, 2, 3, 4]));
        let (mut tx, rx) = tokio::io::duplex(8192);
        let mut reader = FrameReader::new(rx, Role::Server, 1 << 20);
        tx.write_all(&wire[..1000]).await.unwrap();
        // The read has taken the first 1,000 bytes and waits for more when it is dropped.
        let dropped =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.next_frame());
        assert!(dropped.await.is_err(), "the frame is not complete yet");
        tx.write_all(&wire[1000..]).await.unwrap();
        let frame = reader.next_frame().await.unwrap();
        assert_eq!(frame.payload.len(), 3000);
        assert!(frame.payload.iter().all(|&b| b == 5));
    }

    #[tokio::test]
    async fn a_refused_frame_ends_the_stream_with_its_error() {
        let wire = encode_frame(0x82, &[0; 2000], Some([9, 9, 9, 9]))[..8].to_vec();
        let (_, end, capacity) = read_all(Role::Server, wire, 1000).await;
        assert!(matches!(end, ReadError::Frame(FrameError::TooLarge(2000))));
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
