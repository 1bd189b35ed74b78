//! Injected network faults. This kernel has no netem, so the tests put a fault-injecting TCP
//! proxy of their own between real clients and the server: added latency, a black hole (no
//! FIN, no RST: the peer looks alive and says nothing), a reset in the middle of a frame, a
//! throttled link, and partitions that heal within the resume grace or do not. Every test
//! ends by checking that the fault leaked no connection and no lobby.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickrelay_protocol::{Codec, ErrorCode, ServerMessage};
use tickrelay_server::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::resume::{Seat, answer, event, events_until, join_message, next_member_change};
use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, masked_frame, spawn_server, test_config, wait_until,
};

/// What the proxy does to the bytes passing through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forward, after `delay`.
    Pass { delay: Duration },
    /// Forward nothing in either direction and close nothing: both ends see a live, silent
    /// peer.
    BlackHole,
}

/// A TCP proxy in front of the server, its faults switched by the test.
struct FaultProxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    /// Server-to-client bytes per second, if throttled.
    throttle: Arc<Mutex<Option<usize>>>,
    /// Cancelled to reset every connection through the proxy (RST to both ends).
    reset: Mutex<CancellationToken>,
}

impl FaultProxy {
    async fn start(server: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            link: watch::channel(Link::Pass {
                delay: Duration::ZERO,
            })
            .0,
            throttle: Arc::default(),
            reset: Mutex::new(CancellationToken::new()),
        });
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = connect_upstream(server).await else {
                    continue;
                };
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
        proxy
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    fn throttle(&self, bytes_per_second: Option<usize>) {
        *self.throttle.lock().unwrap() = bytes_per_second;
    }

    /// Resets every connection now through the proxy; later ones are not affected.
    fn reset_all(&self) {
        std::mem::take(&mut *self.reset.lock().unwrap()).cancel();
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

/// Fast keep-alive and idle detection, so a half-open peer is found in about a second.
fn fault_config() -> Config {
    Config {
        ping_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(800),
        resume_grace: Duration::from_secs(5),
        ..test_config()
    }
}

async fn join_at(addr: SocketAddr, lobby: &str, name: &str) -> (Client, Seat) {
    let mut client = Client::connect_to(addr, Codec::MessagePack).await;
    client.send(&join_message(lobby, name, None)).await;
    let seat = answer(&mut client).await.expect("welcome");
    (client, seat)
}

/// Every client has left: no connection and no lobby is left behind.
async fn assert_nothing_leaked(server: &TestServer) {
    wait_until(
        WAIT_TIMEOUT,
        "no connection and no lobby left",
        async || {
            server.metric("tickrelay_connections").await == Some(0.0)
                && server.metric("tickrelay_lobbies").await == Some(0.0)
        },
    )
    .await;
}

/// `count` snapshots in a row without a gap in their tick numbers.
async fn consecutive_snapshots(client: &mut Client, count: usize) {
    let mut last = client.next_snapshot().await.tick;
    for _ in 1..count {
        let tick = client.next_snapshot().await.tick;
        assert_eq!(tick, last + 1, "a gap in the snapshots");
        last = tick;
    }
}

#[tokio::test]
async fn added_latency_delays_but_loses_nothing() {
    let server = spawn_server(fault_config()).await;
    let proxy = FaultProxy::start(server.addr).await;
    proxy.set(Link::Pass {
        delay: Duration::from_millis(40),
    });
    let (mut far, _) = join_at(proxy.addr, "lag", "far").await;
    let (mut near, _) = join_at(server.addr, "lag", "near").await;
    // 40 ms each way is far below the idle timeout: nothing is cut, nothing is missed.
    consecutive_snapshots(&mut far, 40).await;
    consecutive_snapshots(&mut near, 10).await;
    drop((far, near));
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_black_holed_peer_is_detected_within_ping_interval_plus_idle_timeout() {
    let config = fault_config();
    let bound = config.ping_interval + config.idle_timeout;
    let server = spawn_server(config).await;
    let proxy = FaultProxy::start(server.addr).await;
    let (_silent, seat) = join_at(proxy.addr, "hole", "silent").await;
    let (mut witness, _) = join_at(server.addr, "hole", "witness").await;
    let started = Instant::now();
    proxy.set(Link::BlackHole);
    match next_member_change(&mut witness).await {
        ServerMessage::MemberAway { id, .. } => assert_eq!(id, seat.id),
        other => panic!("expected member_away, got {other:?}"),
    }
    let detected = started.elapsed();
    // The tick's lateness and this box's load: a second of slack over the bound.
    assert!(
        detected <= bound + Duration::from_secs(1),
        "half-open peer found after {detected:?}, bound {bound:?}"
    );
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"idle_timeout\"}", 1.0)
        .await;
    consecutive_snapshots(&mut witness, 5).await;
    drop(witness);
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_a_frame_ends_only_that_connection() {
    let server = spawn_server(fault_config()).await;
    let proxy = FaultProxy::start(server.addr).await;
    let (mut cut, _) = join_at(proxy.addr, "reset", "cut").await;
    let (mut witness, _) = join_at(server.addr, "reset", "witness").await;
    // The first half of a masked binary frame of 100 bytes, then an RST both ways.
    let frame = masked_frame(0x82, &[7; 100]);
    cut.write_raw(&frame[..50]).await;
    wait_until(
        WAIT_TIMEOUT,
        "the half frame reached the server",
        async || server.metric("tickrelay_connections").await == Some(2.0),
    )
    .await;
    proxy.reset_all();
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"peer_vanished\"}", 1.0)
        .await;
    consecutive_snapshots(&mut witness, 5).await;
    drop((cut, witness));
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_throttled_member_is_coalesced_and_keyframed_while_the_others_keep_their_rate() {
    // A ping waits behind seconds of snapshots on a narrow link: the idle timeout is not
    // what this test is about.
    let server = spawn_server(Config {
        max_state_size: 8 * 1024,
        ping_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(15),
        ..fault_config()
    })
    .await;
    let proxy = FaultProxy::start(server.addr).await;
    let (mut slow, _) = join_at(proxy.addr, "narrow", "slow").await;
    let (mut a, _) = join_at(server.addr, "narrow", "a").await;
    let (mut b, _) = join_at(server.addr, "narrow", "b").await;
    // The slow member reads all along (and so answers pings), only through a narrow link:
    // it records each snapshot's tick and whether it was a keyframe.
    let reading = CancellationToken::new();
    let reader_stop = reading.clone();
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while !reader_stop.is_cancelled() {
            let snapshot = slow.next_snapshot().await;
            seen.push((snapshot.tick, snapshot.keyframe));
        }
        (slow, seen)
    });
    // Each tick's delta carries two fresh 4 KiB states: ~400 KiB/s at 50 Hz, through a link
    // of 2 KiB/s. They send until the server has coalesced the slow member's snapshots (once
    // the kernel's buffers on the way are full, however large the box made them).
    proxy.throttle(Some(2 * 1024));
    let stop = CancellationToken::new();
    let sending = stop.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0u64;
        while !sending.is_cancelled() {
            seq += 1;
            a.send_state(seq, &[seq as u8; 4096]).await;
            b.send_state(seq, &[!(seq as u8); 4096]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (a, b)
    });
    // The fast members keep their rate meanwhile: this one sees no gap.
    let (mut watcher, _) = join_at(server.addr, "narrow", "watcher").await;
    consecutive_snapshots(&mut watcher, 50).await;
    server
        .wait_metric("tickrelay_snapshots_coalesced_total", 1.0)
        .await;
    stop.cancel();
    let (a, b) = sender.await.unwrap();
    // The link widens again: the slow member catches up, and what reached it always applied:
    // every gap of ticks ends with a keyframe.
    proxy.throttle(None);
    server
        .wait_metric("tickrelay_keyframes_sent_total", 4.0)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    reading.cancel();
    let (slow, seen) = reader.await.unwrap();
    let gaps: Vec<_> = seen
        .windows(2)
        .filter(|pair| pair[1].0 != pair[0].0 + 1)
        .map(|pair| pair[1])
        .collect();
    assert!(
        !gaps.is_empty(),
        "the throttled member saw every tick: {seen:?}"
    );
    assert!(
        gaps.iter().all(|&(_, keyframe)| keyframe),
        "a gap not closed by a keyframe: {gaps:?}"
    );
    assert_eq!(
        server
            .metric("tickrelay_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        None
    );
    drop((slow, a, b, watcher));
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_partition_shorter_than_the_idle_timeout_goes_unnoticed() {
    let server = spawn_server(Config {
        idle_timeout: Duration::from_secs(3),
        ..fault_config()
    })
    .await;
    let proxy = FaultProxy::start(server.addr).await;
    let (mut ann, _) = join_at(proxy.addr, "blip", "ann").await;
    let (mut bob, _) = join_at(server.addr, "blip", "bob").await;
    proxy.set(Link::BlackHole);
    event(&mut bob, b"during").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Link::Pass {
        delay: Duration::ZERO,
    });
    // The same connection carries on: the event arrives, and nobody was away.
    let seen = events_until(&mut ann, b"during").await;
    assert_eq!(
        seen.last().map(|(data, _)| data.as_slice()),
        Some(&b"during"[..])
    );
    assert_eq!(
        server
            .metric("tickrelay_disconnects_total{reason=\"idle_timeout\"}")
            .await,
        None
    );
    drop((ann, bob));
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_partition_that_heals_within_the_grace_resumes_the_seat_with_nothing_lost() {
    let server = spawn_server(fault_config()).await;
    let proxy = FaultProxy::start(server.addr).await;
    let (mut ann, seat) = join_at(proxy.addr, "heal", "ann").await;
    let (mut bob, _) = join_at(server.addr, "heal", "bob").await;
    event(&mut bob, b"before").await;
    let offset = events_until(&mut ann, b"before").await.last().unwrap().1;
    proxy.set(Link::BlackHole);
    match next_member_change(&mut bob).await {
        ServerMessage::MemberAway { id, .. } => assert_eq!(id, seat.id),
        other => panic!("expected member_away, got {other:?}"),
    }
    for data in [&b"one"[..], b"two", b"three"] {
        event(&mut bob, data).await;
    }
    // The network heals; the client, whose old socket went silent, reconnects with its token.
    drop(ann);
    proxy.set(Link::Pass {
        delay: Duration::ZERO,
    });
    let mut back = Client::connect_to(proxy.addr, Codec::MessagePack).await;
    back.send(&join_message("heal", "ann", Some((&seat, offset))))
        .await;
    let resumed = answer(&mut back).await.expect("resumed");
    assert_eq!(
        (resumed.id, resumed.resumed, resumed.lost),
        (seat.id, true, 0)
    );
    let replayed = events_until(&mut back, b"three").await;
    let data: Vec<&[u8]> = replayed.iter().map(|(d, _)| d.as_slice()).collect();
    assert_eq!(data, [&b"one"[..], b"two", b"three"], "nothing lost");
    drop((back, bob));
    assert_nothing_leaked(&server).await;
}

#[tokio::test]
async fn a_partition_longer_than_the_grace_gives_the_seat_up() {
    let server = spawn_server(Config {
        resume_grace: Duration::from_millis(500),
        ..fault_config()
    })
    .await;
    let proxy = FaultProxy::start(server.addr).await;
    let (ann, seat) = join_at(proxy.addr, "gone", "ann").await;
    let (mut bob, _) = join_at(server.addr, "gone", "bob").await;
    proxy.set(Link::BlackHole);
    // Away once the idle timeout finds it, then gone when the grace runs out.
    let away = next_member_change(&mut bob).await;
    assert!(
        matches!(away, ServerMessage::MemberAway { id, .. } if id == seat.id),
        "{away:?}"
    );
    let left = next_member_change(&mut bob).await;
    assert!(
        matches!(left, ServerMessage::MemberLeft { id, .. } if id == seat.id),
        "{left:?}"
    );
    drop(ann);
    proxy.set(Link::Pass {
        delay: Duration::ZERO,
    });
    let mut late = Client::connect_to(proxy.addr, Codec::MessagePack).await;
    late.send(&join_message("gone", "ann", Some((&seat, seat.offset))))
        .await;
    assert_eq!(answer(&mut late).await.unwrap_err(), ErrorCode::SeatExpired);
    drop((late, bob));
    assert_nothing_leaked(&server).await;
}
