//! The connection's writer task: it drains the outbox and writes everything pending with as
//! few system calls as possible (one vectored write of all frames per wake-up), pings the
//! client periodically, and ends after writing the close frame. The only other writer is the
//! tick's direct write of a snapshot into an idle socket (`direct.rs`, `outbox.rs`).

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::OpCode;
use tickrelay_protocol::{Codec, close};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use super::FrameHead;
use crate::metrics::Metrics;
use crate::outbox::{Batch, Outbox};

/// Linux rejects a writev of more than IOV_MAX (1024) buffers.
const MAX_IOVECS: usize = 1024;

pub(crate) struct Writer<W> {
    pub(crate) socket: W,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) codec: Codec,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) ping_interval: Duration,
    /// A write blocked this long means the client stopped reading: close it as slow.
    pub(crate) write_timeout: Duration,
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The close frame was written.
    Closed,
    /// A write failed (peer gone).
    WriteFailed,
    /// A write made no progress for `write_timeout`.
    Stalled,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(crate) async fn run(mut self) -> WriterEnd {
        let mut batch = Batch::default();
        let mut heads: Vec<FrameHead> = Vec::new();
        let mut ping = interval(self.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let shutdown = self.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        loop {
            self.outbox.drain_into(&mut batch);
            if batch.is_empty() {
                tokio::select! {
                    () = self.outbox.wait() => {}
                    // Through the outbox, so the ping never interleaves with a direct write.
                    _ = ping.tick() => self.outbox.push_ping(),
                    () = &mut shutdown => self.outbox.close(close::GOING_AWAY),
                }
                continue;
            }
            let frames = self.frames(&batch);
            let partial = batch.partial.as_deref().unwrap_or_default();
            let written = timeout(
                self.write_timeout,
                self.write_all(partial, &frames, &mut heads),
            )
            .await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return WriterEnd::WriteFailed,
                Err(_) => {
                    self.outbox.close(close::SLOW_CONSUMER);
                    return WriterEnd::Stalled;
                }
            }
            let message_bytes: usize = batch.messages.iter().map(Bytes::len).sum();
            self.metrics
                .messages_out
                .inc_by(batch.messages.len() as u64);
            self.metrics.bytes_out.inc_by(message_bytes as u64);
            if batch.close.is_some() {
                // Half-close after the close frame; the reader keeps reading until the
                // client's close arrives so that the kernel never resets unread data.
                let _ = timeout(self.write_timeout, self.socket.shutdown()).await;
                return WriterEnd::Closed;
            }
            batch.clear();
        }
    }

    fn frames<'b>(&self, batch: &'b Batch) -> Vec<(OpCode, &'b [u8])> {
        let data_opcode = if self.codec.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let mut frames = Vec::with_capacity(batch.messages.len() + 3);
        if batch.ping {
            frames.push((OpCode::Ping, &[][..]));
        }
        frames.extend(batch.pong.iter().map(|p| (OpCode::Pong, &p[..])));
        frames.extend(batch.messages.iter().map(|m| (data_opcode, &m[..])));
        if let Some(close) = &batch.close {
            frames.push((OpCode::Close, &close[..]));
        }
        frames
    }

    /// Writes `partial` (raw bytes) then all frames: headers formatted by fastwebsockets,
    /// payloads the shared bytes themselves (no copy), everything in vectored writes.
    async fn write_all(
        &mut self,
        partial: &[u8],
        frames: &[(OpCode, &[u8])],
        heads: &mut Vec<FrameHead>,
    ) -> std::io::Result<()> {
        heads.clear();
        heads.extend(
            frames
                .iter()
                .map(|(opcode, payload)| FrameHead::new(*opcode, payload)),
        );
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
            let written = self.socket.write_vectored(&remaining[..window]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut remaining, written);
        }
        Ok(())
    }
}
