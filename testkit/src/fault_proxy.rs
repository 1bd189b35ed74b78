//! A fault-injecting TCP proxy. This kernel has no netem, so the fault tests and the soak put
//! this between real clients and a real server (or a node and its Redis): added latency, a black hole (no FIN, no RST:
//! the peer looks alive and says nothing), a throttled link, and a reset of every connection
//! through it. Faults are switched while connections run; a connection ends when either end
//! closes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to the bytes passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forward, after `delay`.
    Pass { delay: Duration },
    /// Forward nothing in either direction and close nothing: both ends see a live, silent
    /// peer.
    BlackHole,
}

impl Link {
    /// A healthy link: forward at once.
    pub const CLEAR: Self = Self::Pass {
        delay: Duration::ZERO,
    };
}

/// A TCP proxy in front of a server, its faults switched by the caller. It runs on the tokio
/// runtime it was started on, until that runtime ends.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Server-to-client bytes per second, if throttled.
    throttle: Arc<Mutex<Option<usize>>>,
    /// Cancelled to reset every connection through the proxy (RST to both ends).
    reset: Mutex<CancellationToken>,
    accepted: AtomicU64,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `server`.
    pub async fn start(server: SocketAddr) -> std::io::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Arc::new(Self {
            addr: listener.local_addr()?,
            link: watch::channel(Link::CLEAR).0,
            throttle: Arc::default(),
            reset: Mutex::new(CancellationToken::new()),
            accepted: AtomicU64::new(0),
        });
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // The server refusing the connection closes the client's at once, as a
                // direct connection would be refused.
                let Ok(upstream) = connect_upstream(server).await else {
                    continue;
                };
                accepting.accepted.fetch_add(1, Ordering::Relaxed);
                let reset = accepting.reset.lock().unwrap().clone();
                let link = accepting.link.subscribe();
                tokio::spawn(relay(
                    client,
                    upstream,
                    link,
                    accepting.throttle.clone(),
                    reset,
                ));
            }
        });
        Ok(proxy)
    }

    /// Applies `link` to every connection, open and future.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Limits server-to-client bytes per second on every connection (None: unlimited).
    pub fn throttle(&self, bytes_per_second: Option<usize>) {
        *self.throttle.lock().unwrap() = bytes_per_second;
    }

    /// Resets every connection now through the proxy; later ones are not affected.
    pub fn reset_all(&self) {
        std::mem::take(&mut *self.reset.lock().unwrap()).cancel();
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// The proxy's connection to the server, with a small receive buffer: a throttled link then
/// pushes back on the server within a second, not after megabytes of kernel buffering.
async fn connect_upstream(server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(8 * 1024)?;
    socket.connect(server).await
}

/// Pumps one proxied connection both ways until either end closes or the proxy resets it.
async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    link: watch::Receiver<Link>,
    throttle: Arc<Mutex<Option<usize>>>,
    reset: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let reset_now = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = upstream.split();
        let unthrottled = Arc::new(Mutex::new(None));
        tokio::select! {
            _ = pump(client_read, server_write, link.clone(), unthrottled) => false,
            _ = pump(server_read, client_write, link, throttle) => false,
            () = reset.cancelled() => true,
        }
    };
    if reset_now {
        // Closed with SO_LINGER 0: an RST to both ends, not a FIN.
        for stream in [&client, &upstream] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Copies `from` to `to` as `link` says, until `from` ends or a write fails.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut link: watch::Receiver<Link>,
    throttle: Arc<Mutex<Option<usize>>>,
) -> Option<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        // A black hole reads nothing: the kernel buffers fill and the sender sees a stalled
        // but open connection.
        let delay = loop {
            match *link.borrow_and_update() {
                Link::Pass { delay } => break delay,
                Link::BlackHole => {}
            }
            link.changed().await.ok()?;
        };
        let limit = throttle.lock().unwrap().map(|rate| (rate / 10).max(1));
        let want = limit.unwrap_or(buffer.len()).min(buffer.len());
        let read = from.read(&mut buffer[..want]).await.ok()?;
        if read == 0 {
            return None;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Throttled: at most a tenth of the rate per 100 ms.
        if limit.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Held back while black-holed (the bytes were read before the hole opened).
        while *link.borrow() == Link::BlackHole {
            link.changed().await.ok()?;
        }
        to.write_all(&buffer[..read]).await.ok()?;
    }
}
