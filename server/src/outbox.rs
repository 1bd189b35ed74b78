//! A connection's bounded outbound path, and the one place the slow-consumer policy lives.
//!
//! Producers (the lobby's tick, the lobby's event fan-out, the connection's own reader) push
//! already-encoded frames and never wait; the connection's writer drains. Snapshots do not
//! queue: at most one waits. A delta never replaces a waiting snapshot (it would lack that
//! one's changes); the lobby then sends that tick's keyframe, which does (counted as
//! coalesced). Reliable messages queue up to a bound; overflowing it closes the connection with
//! 4002 rather than dropping anything silently.
//!
//! Fast path: when nothing is pending and the writer is idle, a snapshot is written straight
//! into the socket by the tick with a non-blocking write through the connection's
//! [`DirectSink`]; only what the socket does not take at once goes through the writer (a
//! flush run by the connection's task). The direct write happens under the outbox's lock, by
//! design: it is one non-blocking syscall, and holding the lock is what keeps the tick's bytes
//! and the writer's from interleaving.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tickrelay_protocol::framing::{FrameHead, Kind};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

/// The interface the outbox writes through for the tick's direct writes: a non-blocking write
/// of one frame (header, then payload) that says how much it took, the outbox keeping the
/// rest for the writer; `WouldBlock` when it took none. Plain TCP (`ws::direct`) and TLS
/// (`ws::tls`, encrypting under the same lock) implement it.
pub(crate) trait DirectSink: Send + Sync {
    fn try_write(&self, head: &[u8], payload: &[u8]) -> io::Result<Taken>;
}

/// How much of a frame a [`DirectSink`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// All of it, into the socket.
    All,
    /// Only this many bytes: the rest must follow before anything else.
    Part(usize),
    /// All of it, but the sink still holds some (TLS records the socket has not taken):
    /// the writer must flush before anything else is written directly.
    Held,
}

/// Unsent pongs kept for a peer: each ping is answered (RFC 6455 5.5.3 allows answering only
/// the latest, but peers such as Autobahn expect one pong per ping), and a ping flood, already
/// charged to the event rate, cannot grow memory past this.
pub(crate) const MAX_PENDING_PONGS: usize = 16;

/// What the writer takes out in one wake-up.
#[derive(Default)]
pub(crate) struct Batch {
    /// The unwritten tail of a frame the tick wrote only partly: raw bytes, written first.
    pub(crate) partial: Option<Bytes>,
    /// Whether the direct sink holds bytes the writer must flush first.
    pub(crate) flush: bool,
    /// Whether to send a WebSocket ping (keep-alive).
    pub(crate) ping: bool,
    /// The pongs owed to the peer for its pings, oldest first, written first.
    pub(crate) pongs: Vec<Bytes>,
    /// Reliable messages in order, then at most one snapshot, each with its frame's kind.
    pub(crate) messages: Vec<(Kind, Bytes)>,
    /// Set when the connection must close after this batch: the close frame's payload.
    pub(crate) close: Option<Bytes>,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.partial.is_none()
            && !self.flush
            && !self.ping
            && self.pongs.is_empty()
            && self.messages.is_empty()
            && self.close.is_none()
    }

    pub(crate) fn clear(&mut self) {
        self.partial = None;
        self.flush = false;
        self.ping = false;
        self.pongs.clear();
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

/// What a snapshot push does with an older snapshot still waiting unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfUnsent {
    /// Replace it (the new one stands alone: a keyframe).
    Replace,
    /// Keep it and refuse the new one (a delta, which would lack the waiting one's changes).
    Keep,
}

/// What happened to a pushed snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Written to the socket by the caller (whole, or its tail handed to the writer).
    Written,
    /// Queued for the writer.
    Queued,
    /// Queued, replacing an unsent older snapshot (coalesced).
    Replaced,
    /// Not taken: an older snapshot waits unsent, and the push said to keep it.
    Kept,
}

pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    /// The kind of data frames.
    data_kind: Kind,
    wake_writer: Notify,
    /// Cancelled once a close is decided (or the server shuts down), so the reader stops
    /// handling messages.
    closing: CancellationToken,
    max_reliable: usize,
    max_reliable_bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Where the tick may write directly (`None`: always through the writer). Let go once a
    /// close is decided: a seat away for a resume keeps its outbox, never its socket.
    direct: Option<Arc<dyn DirectSink>>,
    /// The writer holds a batch it has not finished writing: no direct writes meanwhile.
    writer_busy: bool,
    partial: Option<Bytes>,
    /// A direct write left bytes in the sink (TLS records): the writer flushes them.
    sink_holds: bool,
    ping: bool,
    snapshot: Option<Bytes>,
    /// With their frames' kind: the codec's, or the peer's own on the echo endpoint.
    reliable: VecDeque<(Kind, Bytes)>,
    /// The bytes of `reliable`.
    reliable_bytes: usize,
    /// Unsent pongs, at most [`MAX_PENDING_PONGS`].
    pongs: VecDeque<Bytes>,
    /// The close code and frame payload, once a close is decided (the first decision wins).
    close: Option<(u16, Bytes)>,
    close_taken: bool,
}

impl Inner {
    fn idle(&self) -> bool {
        !self.writer_busy
            && self.partial.is_none()
            && !self.sink_holds
            && !self.ping
            && self.snapshot.is_none()
            && self.reliable.is_empty()
            && self.pongs.is_empty()
    }
}

impl Outbox {
    /// An outbox for a connection whose data frames are of `data_kind` (text or binary), with the
    /// socket the tick may write to directly (`None`: always through the writer). `closing` is
    /// cancelled when a close is decided; a child of the server's shutdown token ends the
    /// connection on shutdown too.
    pub(crate) fn new(
        max_reliable: usize,
        max_reliable_bytes: usize,
        data_kind: Kind,
        direct: Option<Arc<dyn DirectSink>>,
        closing: CancellationToken,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                direct,
                ..Inner::default()
            }),
            data_kind,
            wake_writer: Notify::new(),
            closing,
            max_reliable,
            max_reliable_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Hands a snapshot to the connection: written at once if the socket is idle and takes
    /// it, otherwise queued for the writer. An unsent older snapshot is replaced (coalesced)
    /// or kept, as `if_unsent` says. Never blocks.
    pub(crate) fn push_snapshot(
        &self,
        frame: Bytes,
        if_unsent: IfUnsent,
    ) -> Result<Pushed, PushError> {
        let pushed = {
            let mut inner = self.lock();
            if inner.close.is_some() {
                return Err(PushError::Closed);
            }
            if if_unsent == IfUnsent::Keep && inner.snapshot.is_some() {
                return Ok(Pushed::Kept);
            }
            // Under the lock, so the writer cannot start a write meanwhile.
            let direct = match &inner.direct {
                Some(sink) if inner.idle() => {
                    let head = FrameHead::new(self.data_kind, frame.len());
                    let taken = sink.try_write(head.as_slice(), &frame);
                    Some((head, taken))
                }
                _ => None,
            };
            if let Some((head, taken)) = direct {
                match taken {
                    Ok(Taken::All) => return Ok(Pushed::Written),
                    // The socket took only part: the rest must follow before anything else.
                    Ok(Taken::Part(written)) => {
                        inner.partial = Some(rest_of(head.as_slice(), &frame, written));
                    }
                    Ok(Taken::Held) => inner.sink_holds = true,
                    // WouldBlock (or an error the writer will meet too): queue it.
                    Err(_) => {}
                }
                if taken.is_ok() {
                    drop(inner);
                    self.wake_writer.notify_one();
                    return Ok(Pushed::Written);
                }
            }
            if inner.snapshot.replace(frame).is_some() {
                Pushed::Replaced
            } else {
                Pushed::Queued
            }
        };
        self.wake_writer.notify_one();
        Ok(pushed)
    }

    /// Asks the writer to send a WebSocket ping.
    pub(crate) fn push_ping(&self) {
        self.lock().ping = true;
        self.wake_writer.notify_one();
    }

    /// Queues a message that must not be lost. On overflow (too many messages, or too many
    /// bytes) the connection is closed with
    /// [`SLOW_CONSUMER`](tickrelay_protocol::close::SLOW_CONSUMER).
    pub(crate) fn push_reliable(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_message(self.data_kind, frame)
    }

    /// [`push_reliable`](Self::push_reliable) as a frame of `kind` (the echo endpoint answers
    /// text with text and binary with binary).
    pub(crate) fn push_message(&self, kind: Kind, frame: Bytes) -> Result<(), PushError> {
        {
            let mut inner = self.lock();
            if inner.close.is_some() {
                return Err(PushError::Closed);
            }
            if inner.reliable.len() >= self.max_reliable
                || inner.reliable_bytes + frame.len() > self.max_reliable_bytes
            {
                drop(inner);
                self.close(tickrelay_protocol::close::SLOW_CONSUMER);
                return Err(PushError::Overflow);
            }
            inner.reliable_bytes += frame.len();
            inner.reliable.push_back((kind, frame));
        }
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Owes the peer a pong with this payload. Beyond [`MAX_PENDING_PONGS`] unsent ones the
    /// oldest is forgotten.
    pub(crate) fn push_pong(&self, payload: Bytes) {
        {
            let mut inner = self.lock();
            if inner.pongs.len() == MAX_PENDING_PONGS {
                inner.pongs.pop_front();
            }
            inner.pongs.push_back(payload);
        }
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
            inner.direct = None;
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

    /// Moves everything pending into `batch`: a partly written frame's tail, a ping, the pong,
    /// reliable messages in order, then the snapshot, then the close frame if one was decided
    /// (anything pushed after it is dropped). The writer counts as busy until it drains an
    /// empty batch.
    pub(crate) fn drain_into(&self, batch: &mut Batch) {
        let mut inner = self.lock();
        batch.partial = inner.partial.take();
        batch.flush = std::mem::take(&mut inner.sink_holds);
        batch.ping = std::mem::take(&mut inner.ping);
        batch.pongs.extend(inner.pongs.drain(..));
        batch.messages.extend(inner.reliable.drain(..));
        inner.reliable_bytes = 0;
        let snapshot = inner.snapshot.take();
        batch
            .messages
            .extend(snapshot.map(|frame| (self.data_kind, frame)));
        if !inner.close_taken
            && let Some((_, payload)) = &inner.close
        {
            batch.close = Some(payload.clone());
            inner.close_taken = true;
        }
        inner.writer_busy = !batch.is_empty();
    }

    /// Completes once something is pushed (at once if a push happened since the previous
    /// such future completed).
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.wake_writer.notified()
    }
}

/// What is left of a frame (`head`, then `payload`) after its first `written` bytes.
fn rest_of(head: &[u8], payload: &[u8], written: usize) -> Bytes {
    let mut rest = Vec::with_capacity(head.len() + payload.len() - written);
    rest.extend_from_slice(head.get(written..).unwrap_or_default());
    rest.extend_from_slice(&payload[written.saturating_sub(head.len())..]);
    Bytes::from(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn binary(s: &'static str) -> (Kind, Bytes) {
        (Kind::Binary, frame(s))
    }

    #[test]
    fn a_keyframe_replaces_an_unsent_snapshot_and_a_delta_keeps_it() {
        let outbox = Outbox::new(4, 1 << 20, Kind::Binary, None, CancellationToken::new());
        let push = |name, if_unsent| outbox.push_snapshot(frame(name), if_unsent);
        assert_eq!(push("k1", IfUnsent::Replace), Ok(Pushed::Queued));
        assert_eq!(push("d2", IfUnsent::Keep), Ok(Pushed::Kept));
        assert_eq!(push("k2", IfUnsent::Replace), Ok(Pushed::Replaced));
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(
            batch.messages,
            vec![binary("k2")],
            "the kept push never queued"
        );
        batch.clear();
        outbox.drain_into(&mut batch);
        assert_eq!(
            push("d3", IfUnsent::Keep),
            Ok(Pushed::Queued),
            "nothing unsent"
        );
    }

    #[test]
    fn reliable_messages_keep_order_and_precede_the_snapshot() {
        let outbox = Outbox::new(4, 1 << 20, Kind::Binary, None, CancellationToken::new());
        outbox.push_snapshot(frame("snap"), IfUnsent::Keep).unwrap();
        outbox.push_reliable(frame("e1")).unwrap();
        outbox.push_reliable(frame("e2")).unwrap();
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(
            batch.messages,
            vec![binary("e1"), binary("e2"), binary("snap")]
        );
        outbox.push_message(Kind::Text, frame("echo")).unwrap();
        outbox.push_snapshot(frame("snap"), IfUnsent::Keep).unwrap();
        batch.clear();
        outbox.drain_into(&mut batch);
        assert_eq!(
            batch.messages,
            vec![(Kind::Text, frame("echo")), binary("snap")],
            "a message keeps its own kind"
        );
    }

    /// A sink that takes everything.
    struct Swallow;

    impl DirectSink for Swallow {
        fn try_write(&self, _head: &[u8], _payload: &[u8]) -> io::Result<Taken> {
            Ok(Taken::All)
        }
    }

    #[test]
    fn a_close_lets_the_socket_go_while_the_outbox_lives_on() {
        let sink: Arc<dyn DirectSink> = Arc::new(Swallow);
        let outbox = Outbox::new(
            4,
            1 << 20,
            Kind::Binary,
            Some(sink.clone()),
            CancellationToken::new(),
        );
        assert_eq!(
            outbox.push_snapshot(frame("s"), IfUnsent::Keep),
            Ok(Pushed::Written)
        );
        assert_eq!(Arc::strong_count(&sink), 2);
        // A seat away for a resume keeps its outbox in the lobby: never the socket with it.
        outbox.close(tickrelay_protocol::close::IDLE_TIMEOUT);
        assert_eq!(Arc::strong_count(&sink), 1);
        assert_eq!(
            outbox.push_snapshot(frame("t"), IfUnsent::Keep),
            Err(PushError::Closed)
        );
    }

    #[test]
    fn every_ping_is_answered_up_to_a_bound() {
        let outbox = Outbox::new(4, 1 << 20, Kind::Binary, None, CancellationToken::new());
        let payloads: Vec<Bytes> = (0..MAX_PENDING_PONGS + 4)
            .map(|i| Bytes::from(i.to_string()))
            .collect();
        for payload in &payloads {
            outbox.push_pong(payload.clone());
        }
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(batch.pongs, payloads[4..], "the newest, oldest first");
    }

    #[test]
    fn reliable_overflow_closes_with_slow_consumer() {
        let outbox = Outbox::new(2, 1 << 20, Kind::Binary, None, CancellationToken::new());
        outbox.push_reliable(frame("1")).unwrap();
        outbox.push_reliable(frame("2")).unwrap();
        assert_eq!(outbox.push_reliable(frame("3")), Err(PushError::Overflow));
        assert_eq!(
            outbox.close_code(),
            Some(tickrelay_protocol::close::SLOW_CONSUMER)
        );
        assert!(outbox.closing().is_cancelled());
        assert_eq!(
            outbox.push_snapshot(frame("s"), IfUnsent::Replace),
            Err(PushError::Closed)
        );
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(&batch.close.unwrap()[..2], &4002u16.to_be_bytes());
    }

    #[test]
    fn the_reliable_queue_is_bounded_in_bytes_too() {
        let outbox = Outbox::new(100, 10, Kind::Binary, None, CancellationToken::new());
        outbox.push_reliable(frame("12345")).unwrap();
        outbox.push_reliable(frame("67890")).unwrap();
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        // Drained: the budget is free again.
        outbox.push_reliable(frame("123456")).unwrap();
        assert_eq!(
            outbox.push_reliable(frame("12345")),
            Err(PushError::Overflow)
        );
        assert_eq!(
            outbox.close_code(),
            Some(tickrelay_protocol::close::SLOW_CONSUMER)
        );
    }

    #[test]
    fn first_close_decision_wins() {
        let outbox = Outbox::new(2, 1 << 20, Kind::Binary, None, CancellationToken::new());
        outbox.close(1001);
        outbox.close(4001);
        assert_eq!(outbox.close_code(), Some(1001));
    }
}

#[cfg(test)]
mod direct_tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn socket_pair() -> (TcpStream, Arc<tokio::net::tcp::OwnedWriteHalf>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        (client, Arc::new(write))
    }

    #[tokio::test]
    async fn idle_socket_gets_the_snapshot_directly_and_busy_writer_forces_queueing() {
        let (mut client, socket) = socket_pair().await;
        let outbox = Outbox::new(
            4,
            1 << 20,
            Kind::Binary,
            Some(socket),
            CancellationToken::new(),
        );
        assert_eq!(
            outbox.push_snapshot(Bytes::from_static(b"abc"), IfUnsent::Keep),
            Ok(Pushed::Written)
        );
        let mut frame = [0u8; 5];
        client.read_exact(&mut frame).await.unwrap();
        assert_eq!(
            frame,
            [0x82, 3, b'a', b'b', b'c'],
            "FIN+binary, length 3, payload"
        );

        // A reliable message is pending: the snapshot must queue behind it, not overtake it.
        outbox.push_reliable(Bytes::from_static(b"event")).unwrap();
        assert_eq!(
            outbox.push_snapshot(Bytes::from_static(b"s"), IfUnsent::Keep),
            Ok(Pushed::Queued)
        );
        let mut batch = Batch::default();
        outbox.drain_into(&mut batch);
        assert_eq!(batch.messages.len(), 2);
        // While the writer holds that batch, nothing is written directly.
        assert_eq!(
            outbox.push_snapshot(Bytes::from_static(b"t"), IfUnsent::Replace),
            Ok(Pushed::Queued)
        );
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_tail_for_the_writer_and_frames_stay_whole() {
        let (mut client, socket) = socket_pair().await;
        let writer_side: &TcpStream = (*socket).as_ref();
        let outbox = Outbox::new(
            4,
            1 << 20,
            Kind::Binary,
            Some(socket.clone()),
            CancellationToken::new(),
        );
        const SIZE: usize = 256 * 1024;
        let big = Bytes::from(vec![0x5a; SIZE]);
        let mut batch = Batch::default();
        // Push until the socket no longer takes a whole frame: the tail then waits in the
        // batch (partial), or the snapshot was queued because the socket took nothing.
        let mut frames = 0;
        loop {
            let pushed = outbox
                .push_snapshot(big.clone(), IfUnsent::Replace)
                .unwrap();
            frames += 1;
            outbox.drain_into(&mut batch);
            if batch.partial.is_some() || pushed != Pushed::Written {
                break;
            }
            assert!(frames < 1000, "the socket never filled up");
        }
        // The writer holds a batch: a new snapshot must queue, not be written directly.
        assert_eq!(
            outbox.push_snapshot(Bytes::from_static(b"x"), IfUnsent::Replace),
            Ok(Pushed::Queued)
        );
        // The client reads every frame whole while the "writer" finishes the batch.
        let reader = tokio::spawn(async move {
            let mut frame = vec![0u8; 10 + SIZE];
            for _ in 0..frames {
                client.read_exact(&mut frame).await.unwrap();
                assert_eq!(&frame[..2], &[0x82, 127], "FIN+binary, 64-bit length");
                assert_eq!(
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()),
                    SIZE as u64
                );
                assert!(frame[10..].iter().all(|&b| b == 0x5a), "payload intact");
            }
        });
        let mut wire = Vec::new();
        if let Some(tail) = batch.partial.take() {
            wire.extend_from_slice(&tail);
        }
        for (kind, message) in batch.messages.drain(..) {
            wire.extend_from_slice(FrameHead::new(kind, message.len()).as_slice());
            wire.extend_from_slice(&message);
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            writer_side.writable().await.unwrap();
            match writer_side.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => panic!("write failed: {err}"),
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("client read every frame")
            .unwrap();
    }
}
