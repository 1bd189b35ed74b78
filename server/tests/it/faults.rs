//! Injected network faults. This kernel has no netem, so the tests put a fault-injecting TCP
//! proxy (`tickrelay_testkit::FaultProxy`, which the soak uses too) between real clients and
//! the server: added latency, a black hole (no FIN, no RST: the peer looks alive and says
//! nothing), a reset in the middle of a frame, a throttled link, and partitions that heal
//! within the resume grace or do not. Every test ends by checking that the fault leaked no
//! connection and no lobby; the soak checks memory under the same faults.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tickrelay_protocol::{Codec, ErrorCode, ServerMessage};
use tickrelay_server::Config;
use tickrelay_testkit::{FaultProxy, Link};
use tokio_util::sync::CancellationToken;

use crate::resume::{Seat, answer, event, events_until, join_message, next_member_change};
use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, masked_frame, spawn_server, test_config, wait_until,
};

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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let (mut ann, _) = join_at(proxy.addr, "blip", "ann").await;
    let (mut bob, _) = join_at(server.addr, "blip", "bob").await;
    proxy.set(Link::BlackHole);
    event(&mut bob, b"during").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Link::CLEAR);
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    proxy.set(Link::CLEAR);
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
    let proxy = FaultProxy::start(server.addr).await.unwrap();
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
    proxy.set(Link::CLEAR);
    let mut late = Client::connect_to(proxy.addr, Codec::MessagePack).await;
    late.send(&join_message("gone", "ann", Some((&seat, seat.offset))))
        .await;
    assert_eq!(answer(&mut late).await.unwrap_err(), ErrorCode::SeatExpired);
    drop((late, bob));
    assert_nothing_leaked(&server).await;
}
