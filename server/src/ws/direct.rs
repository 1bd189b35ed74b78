//! The TCP write half shared by a connection's writer and its lobby's tick.
//!
//! The tick writes a snapshot straight into the socket with a non-blocking `try_write` when
//! nothing else is pending for that connection (no task wake-up, no queueing behind other
//! tasks); otherwise it queues in the outbox and the connection's writer writes. The outbox's lock and
//! its `writer_busy` flag make sure the two never interleave bytes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// Largest header of a frame the server sends (never masked).
const MAX_HEAD: usize = 14;

/// A WebSocket frame header, formatted by fastwebsockets.
#[derive(Clone, Copy)]
pub(crate) struct FrameHead {
    bytes: [u8; MAX_HEAD],
    len: usize,
}

impl FrameHead {
    pub(crate) fn new(opcode: OpCode, payload: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_HEAD];
        let len = Frame::new(true, opcode, None, Payload::Borrowed(payload)).fmt_head(&mut bytes);
        Self { bytes, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The shared write half.
#[derive(Clone)]
pub(crate) struct SharedTcpWrite(pub(crate) Arc<OwnedWriteHalf>);

impl SharedTcpWrite {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// Writes one whole frame if the socket takes it without blocking. Returns how many bytes
    /// went out (the caller keeps the rest), or the error (`WouldBlock`: nothing went out).
    pub(crate) fn try_write_frame(
        &self,
        opcode: OpCode,
        payload: &[u8],
    ) -> io::Result<(FrameHead, usize)> {
        let head = FrameHead::new(opcode, payload);
        let written = self
            .stream()
            .try_write_vectored(&[IoSlice::new(head.as_slice()), IoSlice::new(payload)])?;
        Ok((head, written))
    }
}

impl AsyncWrite for SharedTcpWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
            // try_write clears the readiness on WouldBlock, so the next poll waits for it.
            match self.stream().try_write_vectored(bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.stream()).shutdown(std::net::Shutdown::Write))
    }
}
