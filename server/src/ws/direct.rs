//! The TCP write half shared by a connection's writer and its lobby's tick: plain TCP's
//! implementation of the outbox's [`DirectSink`] seam.
//!
//! The tick writes a snapshot straight into the socket with a non-blocking `try_write` when
//! nothing else is pending for that connection (no task wake-up, no queueing behind other
//! tasks); otherwise it queues in the outbox and the connection's writer writes. The outbox's
//! lock and its `writer_busy` flag make sure the two never interleave bytes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::outbox::{DirectSink, Taken};

/// The TCP write half as the connection's writer uses it (`AsyncWrite`); the tick's direct
/// writes use the same `Arc` as the outbox's [`DirectSink`].
#[derive(Clone)]
pub(crate) struct SharedTcpWrite(pub(crate) Arc<OwnedWriteHalf>);

impl SharedTcpWrite {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }
}

impl DirectSink for OwnedWriteHalf {
    fn try_write(&self, head: &[u8], payload: &[u8]) -> io::Result<Taken> {
        let stream: &TcpStream = self.as_ref();
        let written = stream.try_write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])?;
        Ok(if written == head.len() + payload.len() {
            Taken::All
        } else {
            Taken::Part(written)
        })
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
