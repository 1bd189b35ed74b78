//! A connection's bounded outbound path, and the one place the slow-consumer policy lives.
//!
//! Producers (the lobby's tick, the lobby's event fan-out, the connection's own reader) push
//! already-encoded frames and never wait; the connection's writer task drains. Snapshots do not
//! queue: a newer one replaces an unsent one (counted as coalesced), and the lobby then sends a
//! keyframe. Reliable messages queue up to a bound; overflowing it closes the connection with
//! 4002 rather than dropping anything silently.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the writer takes out in one wake-up.
#[derive(Default)]
pub(crate) struct Batch {
    /// The pong owed to the peer for its latest ping, written first.
    pub(crate) pong: Option<Bytes>,
    /// Reliable messages in order, then at most one snapshot.
    pub(crate) messages: Vec<Bytes>,
    /// Set when the connection must close after this batch: the close frame's payload.
    pub(crate) close: Option<Bytes>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.pong.is_none() && self.messages.is_empty() && self.close.is_none()
    }

    pub(crate) fn clear(&mut self) {
        self.pong = None;
        self.messages.clear();
        self.close = None;
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The connection is closing; the message was discarded.
    Closed,
    /// The reliable queue overflowed; the connection is now closing with 4002.
    Overflow,
}

pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    wake_writer: Notify,
    /// Cancelled once a close is decided, so the reader stops handling messages.
    closing: CancellationToken,
    max_reliable: usize,
}

#[derive(Default)]
struct Inner {
    snapshot: Option<Bytes>,
    reliable: VecDeque<Bytes>,
    /// Only the latest ping is answered (RFC 6455 5.5.3), so a ping flood cannot grow memory.
    pong: Option<Bytes>,
    /// The close code and frame payload, once a close is decided (the first decision wins).
    close: Option<(u16, Bytes)>,
    close_taken: bool,
}

impl Outbox {
    pub(crate) fn new(max_reliable: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            wake_writer: Notify::new(),
            closing: CancellationToken::new(),
            max_reliable,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections below cannot panic, so a poisoned lock only means a panic
        // elsewhere in the holder's task; the data is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when a snapshot is waiting to be written: the next one must then be a keyframe,
    /// because the waiting delta is about to be replaced.
    pub(crate) fn has_unsent_snapshot(&self) -> bool {
        self.lock().snapshot.is_some()
    }

    /// Hands a snapshot to the writer, replacing any unsent one. Returns whether one was
    /// replaced (coalesced). Never blocks on the socket.
    pub(crate) fn push_snapshot(&self, frame: Bytes) -> Result<bool, PushError> {
        let replaced = {
            let mut inner = self.lock();
            if inner.close.is_some() {
                return Err(PushError::Closed);
            }
            inner.snapshot.replace(frame).is_some()
        };
        self.wake_writer.notify_one();
        Ok(replaced)
    }

    /// Queues a message that must not be lost. On overflow the connection is closed with
    /// [`SLOW_CONSUMER`](tickrelay_protocol::close::SLOW_CONSUMER).
    pub(crate) fn push_reliable(&self, frame: Bytes) -> Result<(), PushError> {
        {
            let mut inner = self.lock();
            if inner.close.is_some() {
                return Err(PushError::Closed);
            }
            if inner.reliable.len() >= self.max_reliable {
                drop(inner);
                self.close(tickrelay_protocol::close::SLOW_CONSUMER);
                return Err(PushError::Overflow);
            }
            inner.reliable.push_back(frame);
        }
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Owes the peer a pong with this payload (replacing an unsent one).
    pub(crate) fn push_pong(&self, payload: Bytes) {
        self.lock().pong = Some(payload);
        self.wake_writer.notify_one();
    }

    /// Decides to close with `code` and its documented reason. Later decisions are ignored.
    pub(crate) fn close(&self, code: u16) {
        let reason = tickrelay_protocol::close::reason(code);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        self.close_with_payload(code, Bytes::from(payload));
    }

    /// Closes echoing the peer's own close payload (the reply a close handshake requires).
    pub(crate) fn close_with_payload(&self, code: u16, payload: Bytes) {
        {
            let mut inner = self.lock();
            if inner.close.is_some() {
                return;
            }
            inner.close = Some((code, payload));
        }
        self.closing.cancel();
        self.wake_writer.notify_one();
    }

    /// The close code decided so far, if any.
    pub(crate) fn close_code(&self) -> Option<u16> {
        self.lock().close.as_ref().map(|(code, _)| *code)
    }

    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Moves everything pending into `batch`: pongs, reliable messages in order, then the
    /// snapshot, then the close frame if one was decided (anything pushed after it is dropped).
    pub(crate) fn drain_into(&self, batch: &mut Batch) {
        let mut inner = self.lock();
        if let Some(pong) = inner.pong.take() {
            batch.pong = Some(pong);
        }
        batch.messages.extend(inner.reliable.drain(..));
        batch.messages.extend(inner.snapshot.take());
        if !inner.close_taken
            && let Some((_, payload)) = &inner.close
        {
            batch.close = Some(payload.clone());
            inner.close_taken = true;
        }
    }

    /// Waits until something is pushed (returns at once if a push happened since the last wait).
    pub(crate) async fn wait(&self) {
        self.wake_writer.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn newer_snapshot_replaces_unsent_one() {
        let outbox = Outbox::new(4);
        assert_eq!(outbox.push_snapshot(frame("s1")), Ok(false));
        assert!(outbox.has_unsent_snapshot());
        assert_eq!(outbox.push_snapshot(frame("s2")), Ok(true));
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(batch.messages, vec![frame("s2")]);
        assert!(!outbox.has_unsent_snapshot());
    }

    #[test]
    fn reliable_messages_keep_order_and_precede_the_snapshot() {
        let outbox = Outbox::new(4);
        outbox.push_snapshot(frame("snap")).unwrap();
        outbox.push_reliable(frame("e1")).unwrap();
        outbox.push_reliable(frame("e2")).unwrap();
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(
            batch.messages,
            vec![frame("e1"), frame("e2"), frame("snap")]
        );
    }

    #[test]
    fn reliable_overflow_closes_with_slow_consumer() {
        let outbox = Outbox::new(2);
        outbox.push_reliable(frame("1")).unwrap();
        outbox.push_reliable(frame("2")).unwrap();
        assert_eq!(outbox.push_reliable(frame("3")), Err(PushError::Overflow));
        assert_eq!(
            outbox.close_code(),
            Some(tickrelay_protocol::close::SLOW_CONSUMER)
        );
        assert!(outbox.closing().is_cancelled());
        assert_eq!(outbox.push_snapshot(frame("s")), Err(PushError::Closed));
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(&batch.close.unwrap()[..2], &4002u16.to_be_bytes());
    }

    #[test]
    fn first_close_decision_wins() {
        let outbox = Outbox::new(2);
        outbox.close(1001);
        outbox.close(4001);
        assert_eq!(outbox.close_code(), Some(1001));
    }
}
