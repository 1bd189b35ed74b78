//! The connection's writer task: the only code that writes to the socket. It drains the
//! outbox and writes everything pending with as few system calls as possible (one vectored
//! write of all frames per wake-up), pings the client periodically, and ends after writing
//! the close frame.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload};
use tickrelay_protocol::{Codec, close};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::{Batch, Outbox};

/// Linux rejects a writev of more than IOV_MAX (1024) buffers.
const MAX_IOVECS: usize = 1024;
/// Largest WebSocket frame header a server writes (no mask).
const MAX_HEAD: usize = 10;

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
        let mut heads: Vec<[u8; MAX_HEAD]> = Vec::new();
        let mut ping = interval(self.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping.reset();
        let mut send_ping = false;
        loop {
            self.outbox.drain_into(&mut batch);
            if batch.is_empty() && !send_ping {
                tokio::select! {
                    () = self.outbox.wait() => {}
                    _ = ping.tick() => send_ping = true,
                    () = self.shutdown.cancelled() => self.outbox.close(close::GOING_AWAY),
                }
                continue;
            }
            let frames = self.frames(&batch, std::mem::take(&mut send_ping));
            let written = timeout(self.write_timeout, self.write_all(&frames, &mut heads)).await;
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

    fn frames<'b>(&self, batch: &'b Batch, ping: bool) -> Vec<(OpCode, &'b [u8])> {
        let data_opcode = if self.codec.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let mut frames = Vec::with_capacity(batch.messages.len() + 3);
        frames.extend(batch.pong.iter().map(|p| (OpCode::Pong, &p[..])));
        if ping {
            frames.push((OpCode::Ping, &[][..]));
        }
        frames.extend(batch.messages.iter().map(|m| (data_opcode, &m[..])));
        if let Some(close) = &batch.close {
            frames.push((OpCode::Close, &close[..]));
        }
        frames
    }

    /// Writes all frames: headers are formatted by fastwebsockets, payloads are the shared
    /// bytes themselves (no copy), everything in vectored writes.
    async fn write_all(
        &mut self,
        frames: &[(OpCode, &[u8])],
        heads: &mut Vec<[u8; MAX_HEAD]>,
    ) -> std::io::Result<()> {
        heads.clear();
        let mut head_lens = Vec::with_capacity(frames.len());
        for (opcode, payload) in frames {
            let mut head = [0u8; 14];
            let len =
                Frame::new(true, *opcode, None, Payload::Borrowed(payload)).fmt_head(&mut head);
            let mut short = [0u8; MAX_HEAD];
            short[..len].copy_from_slice(&head[..len]);
            heads.push(short);
            head_lens.push(len);
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 2);
        for ((head, len), (_, payload)) in heads.iter().zip(&head_lens).zip(frames) {
            slices.push(IoSlice::new(&head[..*len]));
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
