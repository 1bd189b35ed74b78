//! The connection's write side: drains the outbox and writes everything pending with as few
//! system calls as possible (one vectored write of all frames per flush). It is not a task of
//! its own: the connection's task runs a flush only when the outbox has something the tick
//! could not write directly (`direct.rs`, `outbox.rs`), so an idle connection holds no writer
//! state beyond this struct.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tickrelay_protocol::close;
use tickrelay_protocol::framing::{FrameHead, Kind};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::context::ServerContext;
use crate::outbox::{Batch, Outbox};

/// Linux rejects a writev of more than IOV_MAX (1024) buffers.
const MAX_IOVECS: usize = 1024;

pub(crate) struct Writer<W> {
    pub(crate) socket: W,
    pub(crate) outbox: Arc<Outbox>,
    /// The metrics it counts into, and `--write-timeout`: no byte written for this long means
    /// the client stopped reading, and it is closed as slow. (The context rather than those
    /// two: one pointer, and the writer sits in every connection's task.)
    pub(crate) ctx: Arc<ServerContext>,
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The close frame was written.
    Closed,
    /// A write failed (peer gone).
    WriteFailed,
    /// The socket took no byte for `write_timeout`.
    Stalled,
}

/// Why `write_all` stopped.
enum WriteFailure {
    /// The socket failed (the peer is gone).
    Io,
    /// The socket took no byte for `write_timeout`.
    Stalled,
}

/// A flush in progress. It owns the writer and hands it back, so the connection's task can
/// keep it in a plain field between flushes and box only the rare flush itself.
pub(crate) type Flush<W> = Pin<Box<dyn Future<Output = (Writer<W>, Option<WriterEnd>)> + Send>>;

impl<W: AsyncWrite + Unpin + Send + 'static> Writer<W> {
    /// Starts writing everything pending, batch after batch, until the outbox is drained.
    pub(crate) fn flush(mut self) -> Flush<W> {
        Box::pin(async move {
            let end = self.flush_pending().await;
            (self, end)
        })
    }

    /// `None` once the outbox is drained with the connection still open; otherwise why the
    /// writer is done (close frame written, socket failed or stalled).
    async fn flush_pending(&mut self) -> Option<WriterEnd> {
        let mut batch = Batch::default();
        loop {
            self.outbox.drain_into(&mut batch);
            if batch.is_empty() {
                return None;
            }
            let frames = self.frames(&batch);
            let partial = batch.partial.as_deref().unwrap_or_default();
            match self.write_all(partial, &frames).await {
                Ok(()) => {}
                Err(WriteFailure::Io) => return Some(WriterEnd::WriteFailed),
                Err(WriteFailure::Stalled) => {
                    self.outbox.close(close::SLOW_CONSUMER);
                    return Some(WriterEnd::Stalled);
                }
            }
            let message_bytes: usize = batch.messages.iter().map(|(_, m)| m.len()).sum();
            self.ctx
                .metrics
                .messages_out
                .inc_by(batch.messages.len() as u64);
            self.ctx.metrics.bytes_out.inc_by(message_bytes as u64);
            if batch.close.is_some() {
                // Half-close after the close frame; the reader keeps reading until the
                // client's close arrives so that the kernel never resets unread data.
                let write_timeout = self.write_timeout();
                let _ = timeout(write_timeout, self.socket.shutdown()).await;
                return Some(WriterEnd::Closed);
            }
            batch.clear();
        }
    }

    fn write_timeout(&self) -> Duration {
        self.ctx.config.write_timeout
    }

    fn frames<'b>(&self, batch: &'b Batch) -> Vec<(Kind, &'b [u8])> {
        let mut frames = Vec::with_capacity(batch.messages.len() + 3);
        if batch.ping {
            frames.push((Kind::Ping, &[][..]));
        }
        frames.extend(batch.pongs.iter().map(|p| (Kind::Pong, &p[..])));
        frames.extend(batch.messages.iter().map(|(kind, m)| (*kind, &m[..])));
        if let Some(close) = &batch.close {
            frames.push((Kind::Close, &close[..]));
        }
        frames
    }

    /// Writes `partial` (raw bytes) then all frames: headers from the framing layer, payloads
    /// the shared bytes themselves (no copy), everything in vectored writes. Each write must
    /// make progress within `write_timeout`; a long batch to a slow but moving reader is fine.
    async fn write_all(
        &mut self,
        partial: &[u8],
        frames: &[(Kind, &[u8])],
    ) -> Result<(), WriteFailure> {
        let heads: Vec<FrameHead> = frames
            .iter()
            .map(|(kind, payload)| FrameHead::new(*kind, payload.len()))
            .collect();
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2 + 1);
        if !partial.is_empty() {
            slices.push(IoSlice::new(partial));
        }
        for (head, (_, payload)) in heads.iter().zip(frames) {
            slices.push(IoSlice::new(head.as_slice()));
            if !payload.is_empty() {
                slices.push(IoSlice::new(payload));
            }
        }
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            let window = remaining.len().min(MAX_IOVECS);
            let write_timeout = self.write_timeout();
            let write = self.socket.write_vectored(&remaining[..window]);
            let written = match timeout(write_timeout, write).await {
                Err(_) => return Err(WriteFailure::Stalled),
                Ok(Err(_) | Ok(0)) => return Err(WriteFailure::Io),
                Ok(Ok(written)) => written,
            };
            IoSlice::advance_slices(&mut remaining, written);
        }
        // TLS keeps records the socket has not taken yet (at most one write's worth); plain
        // TCP holds nothing and returns at once.
        let write_timeout = self.write_timeout();
        match timeout(write_timeout, self.socket.flush()).await {
            Err(_) => Err(WriteFailure::Stalled),
            Ok(Err(_)) => Err(WriteFailure::Io),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// The connection's writer as its task holds it: idle (no allocation), flushing (the boxed
/// flush), or done.
pub(crate) struct WriteSide<W> {
    idle: Option<Writer<W>>,
    flushing: Option<Flush<W>>,
    ended: Option<WriterEnd>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> WriteSide<W> {
    pub(crate) fn new(writer: Writer<W>) -> Self {
        Self {
            idle: Some(writer),
            flushing: None,
            ended: None,
        }
    }

    pub(crate) fn is_flushing(&self) -> bool {
        self.flushing.is_some()
    }

    /// Starts a flush of whatever is pending, unless one runs or the writer is done.
    pub(crate) fn start(&mut self) {
        if let Some(writer) = self.idle.take() {
            self.flushing = Some(writer.flush());
        }
    }

    /// Drives the running flush to its end (pending forever if none runs, so it can sit in a
    /// `select!` branch guarded by [`is_flushing`](Self::is_flushing)). Returns why the writer
    /// is done, or `None` if it drained the outbox and stays usable.
    pub(crate) async fn progress(&mut self) -> Option<WriterEnd> {
        let Some(flush) = self.flushing.as_mut() else {
            return std::future::pending().await;
        };
        let (writer, end) = flush.await;
        self.flushing = None;
        match end {
            None => self.idle = Some(writer),
            Some(end) => self.ended = Some(end),
        }
        end
    }

    /// Writes what is left, the close frame included (the caller has decided the close), and
    /// returns how the writer ended.
    pub(crate) async fn finish(&mut self) -> Option<WriterEnd> {
        if self.is_flushing() {
            self.progress().await;
        }
        if self.ended.is_none() {
            self.start();
            if self.is_flushing() {
                self.progress().await;
            }
        }
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn writer(
        socket: tokio::io::DuplexStream,
        outbox: &Arc<Outbox>,
    ) -> Writer<tokio::io::DuplexStream> {
        let config = crate::Config {
            write_timeout: Duration::from_millis(100),
            ..crate::Config::default()
        };
        Writer {
            socket,
            outbox: outbox.clone(),
            ctx: ServerContext::new(config, CancellationToken::new()).unwrap(),
        }
    }

    /// The write timeout measures progress: a batch that takes far longer than the timeout to
    /// drain is fine while every write moves; a reader that stops reading is cut after it.
    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_reader_is_never_cut_and_a_stopped_one_is() {
        let (server, mut client) = tokio::io::duplex(256);
        let outbox = Arc::new(Outbox::new(
            64,
            1 << 20,
            Kind::Binary,
            None,
            CancellationToken::new(),
        ));
        for _ in 0..10 {
            outbox.push_reliable(Bytes::from(vec![1u8; 1000])).unwrap();
        }
        // 10 frames of 1,004 bytes at 200 bytes per 50 ms: about 2.5 s, 25 write timeouts.
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = [0u8; 200];
            while total < 10 * 1004 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                total += client.read(&mut chunk).await.unwrap();
            }
            client
        });
        let started = tokio::time::Instant::now();
        let (writer, end) = writer(server, &outbox).flush().await;
        assert_eq!(end, None, "drained, still open");
        assert!(
            started.elapsed() > Duration::from_secs(2),
            "the batch took many timeouts"
        );
        let _client = reader.await.unwrap();

        // Now the reader stops: the socket fills and takes nothing for the timeout.
        for _ in 0..10 {
            outbox.push_reliable(Bytes::from(vec![2u8; 1000])).unwrap();
        }
        let started = tokio::time::Instant::now();
        let (_, end) = writer.flush().await;
        assert_eq!(end, Some(WriterEnd::Stalled));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(outbox.close_code(), Some(close::SLOW_CONSUMER));
    }
}
