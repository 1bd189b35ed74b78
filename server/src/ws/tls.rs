//! A WebSocket connection over TLS after the upgrade: the rustls session and its TCP socket,
//! shared by the connection's reader, its writer and the tick's direct writes (the outbox's
//! [`DirectSink`]), so TLS keeps the design's main lever: the tick encrypts a snapshot under
//! the outbox's lock and writes it with one non-blocking syscall, waking no task.
//!
//! One lock (the session's) orders every use of rustls: the reader decrypts under it, the
//! writers encrypt and write records under it. Records are whole units on the wire, and the
//! outbox already keeps WebSocket frames from interleaving, so this is all TLS adds. The lock
//! is never held across an await: a would-block releases it and waits for readiness.
//!
//! Memory: rustls keeps a ~4 KiB receive buffer per connection once anything was read, the
//! session's keys, and the encrypted records the socket has not taken yet (at most one
//! frame's worth from a direct write, or [`MAX_ENCRYPT`] from the writer).

use std::io::{self, BufRead as _, IoSlice, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::{DirectSink, Taken};

/// Plaintext the writer encrypts per write call: one full record. The ciphertext waits in
/// rustls until the socket takes it (the next write waits for that), so this bounds what a
/// slow reader makes the server hold beyond its outbox, and the write timeout measures
/// progress over at most this much, close to plain TCP's.
const MAX_ENCRYPT: usize = 16 * 1024;

/// The TCP socket and the TLS session over it.
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    session: Mutex<ServerConnection>,
}

/// The socket as rustls' blocking-style I/O: non-blocking calls that say `WouldBlock`.
struct Nonblocking<'a>(&'a TcpStream);

impl io::Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // rustls hands over all its queued records at once: one syscall for all of them.
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsSocket {
    /// The session after its handshake (and the HTTP upgrade that ran over it).
    pub(crate) fn new(tcp: TcpStream, mut session: ServerConnection) -> Arc<Self> {
        // The outbox bounds what is queued; rustls must take whatever it is given, since a
        // short plaintext write would cut a frame.
        session.set_buffer_limit(None);
        Arc::new(Self {
            tcp,
            session: Mutex::new(session),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        crate::sync::lock(&self.session)
    }

    /// Writes queued records until none is left (`Ok(true)`) or the socket would block
    /// (`Ok(false)`).
    fn send_records(&self, session: &mut ServerConnection) -> io::Result<bool> {
        while session.wants_write() {
            match session.write_tls(&mut Nonblocking(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Writes every queued record, waiting for the socket as needed.
    fn poll_send_records(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.send_records(&mut self.lock())? {
                return Poll::Ready(Ok(()));
            }
            // The failed write cleared the readiness: this waits for the next.
            ready!(self.tcp.poll_write_ready(cx))?;
        }
    }
}

impl DirectSink for TlsSocket {
    fn try_write(&self, head: &[u8], payload: &[u8]) -> io::Result<Taken> {
        let mut session = self.lock();
        // Records from before (an alert, a writer's tail) go first; if they cannot, nothing
        // new is taken and the writer takes over.
        if !self.send_records(&mut session)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Without a buffer limit rustls takes it all, as one run of records.
        let taken = session
            .writer()
            .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])?;
        // Once encrypted it is taken, whatever the socket does now: an error here is the
        // writer's to meet on its next write, which also sends what is held.
        let sent = matches!(self.send_records(&mut session), Ok(true));
        Ok(if taken < head.len() + payload.len() {
            Taken::Part(taken)
        } else if sent {
            Taken::All
        } else {
            Taken::Held
        })
    }
}

/// The reading side: decrypted bytes, read through the shared session.
pub(crate) struct TlsRead(pub(crate) Arc<TlsSocket>);

impl AsyncRead for TlsRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &*self.0;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // A stream that never runs dry must still let the task's other work run.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            let mut session = socket.lock();
            // Records owed from before (the end of the handshake, an alert): out first.
            let _ = socket.send_records(&mut session);
            // Plaintext first: the handshake may have decrypted some already, with the socket
            // now empty. Copied straight from rustls' buffer (`fill_buf`), never zeroing the
            // caller's.
            let mut reader = session.reader();
            match reader.fill_buf() {
                Ok(plain) => {
                    // Empty: the peer's close_notify, the end of the stream.
                    let taken = plain.len().min(buf.remaining());
                    buf.put_slice(&plain[..taken]);
                    reader.consume(taken);
                    budget.made_progress();
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: an end like any other to the
                // session (it tells a vanished peer by the missing close frame).
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(()));
                }
                Err(err) => return Poll::Ready(Err(err)),
            }
            match session.read_tls(&mut Nonblocking(&socket.tcp)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    drop(session);
                    ready!(socket.tcp.poll_read_ready(cx))?;
                    continue;
                }
                Err(err) => return Poll::Ready(Err(err)),
                // Bytes, or the TCP end (which the reader reports above on the next turn).
                Ok(_) => {}
            }
            if let Err(err) = session.process_new_packets() {
                // A bad record: send the alert rustls queued, then end.
                let _ = socket.send_records(&mut session);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
            }
        }
    }
}

/// The writing side: the connection's writer encrypts through the shared session.
pub(crate) struct TlsWrite(pub(crate) Arc<TlsSocket>);

impl AsyncWrite for TlsWrite {
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
        let socket = &*self.0;
        // What was encrypted before must reach the socket before more is taken: this is where
        // a slow reader makes the writer wait (and its write timeout count).
        ready!(socket.poll_send_records(cx))?;
        let mut budget = MAX_ENCRYPT;
        let parts: Vec<IoSlice<'_>> = bufs
            .iter()
            .map_while(|buf| {
                let part = &buf[..buf.len().min(budget)];
                budget -= part.len();
                (!part.is_empty()).then(|| IoSlice::new(part))
            })
            .collect();
        let mut session = socket.lock();
        // One call for all of them, so frame heads and payloads share records.
        let taken = session.writer().write_vectored(&parts)?;
        // Sent now as far as the socket takes it; the rest before the next write, or by flush.
        let _ = socket.send_records(&mut session)?;
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_send_records(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.0;
        {
            let mut session = socket.lock();
            // An empty write first: it sends a KeyUpdate reply rustls still owes, so the alert
            // goes out under keys the peer has. Repeated polls queue one close_notify at most.
            let _ = session.writer().write(&[]);
            session.send_close_notify();
        }
        ready!(socket.poll_send_records(cx))?;
        Poll::Ready(socket2::SockRef::from(&socket.tcp).shutdown(std::net::Shutdown::Write))
    }
}
