//! Slow and stalled readers: they get coalesced snapshots and a keyframe when they catch up,
//! or are closed when reliable messages overflow, and never delay anybody else.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickrelay_protocol::{ClientMessage, Codec, ServerMessage, Snapshot, close};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use tickrelay_server::Config;

use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, payload, spawn_server, test_config, wait_until,
};

/// A client whose socket has a tiny receive buffer, so the server's writes to it block soon
/// after it stops reading.
async fn join_with_small_buffer(server: &TestServer, name: &str) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tickrelay.v1.msgpack"),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut client = Client {
        ws,
        codec: Codec::MessagePack,
    };
    client.send_join("arena", name).await;
    assert!(matches!(client.recv().await, ServerMessage::Welcome { .. }));
    client
}

fn age_ms(snapshot: &Snapshot) -> f64 {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    now_us.saturating_sub(snapshot.server_time_us) as f64 / 1000.0
}

#[tokio::test]
async fn stalled_reader_gets_keyframe_after_gap_and_never_delays_others() {
    let mut config = test_config();
    config.max_message_size = 128 * 1024;
    // Large states and events on purpose: the per-kind limits as large as a message.
    config.max_state_size = config.max_message_size;
    config.max_event_size = config.max_message_size;
    let server = spawn_server(config).await;
    let mut stalled = join_with_small_buffer(&server, "stalled").await;
    let (mut mover, _, _) = Client::join(&server, Codec::MessagePack, "arena", "mover").await;
    stalled.next_snapshot().await;

    // The mover sends a large, ever-changing state every tick for 2.5 s while `stalled` reads
    // nothing. Every delta is ~64 KiB, so the stalled socket's buffers fill within a few ticks.
    let big = vec![0xAB; 64 * 1024];
    let mut mover_ticks = Vec::new();
    let mut worst_age_ms: f64 = 0.0;
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        seq += 1;
        mover.send_state(seq, &big).await;
        let snapshot = mover.next_snapshot().await;
        worst_age_ms = worst_age_ms.max(age_ms(&snapshot));
        mover_ticks.push(snapshot.tick);
    }
    assert!(
        mover_ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "mover missed ticks: {mover_ticks:?}"
    );
    assert!(
        worst_age_ms < 500.0,
        "mover's snapshots delayed up to {worst_age_ms} ms"
    );
    let coalesced = server.metric("tickrelay_snapshots_coalesced_total").await;
    assert!(
        coalesced.is_some_and(|n| n > 0.0),
        "coalesced: {coalesced:?}"
    );

    // Now the stalled client reads again: a jump in tick numbers is always a keyframe.
    let mut previous = stalled.next_snapshot().await;
    let mut gaps = 0;
    for _ in 0..60 {
        let snapshot = stalled.next_snapshot().await;
        if snapshot.tick > previous.tick + 1 {
            gaps += 1;
            assert!(
                snapshot.keyframe,
                "tick {} -> {} without keyframe",
                previous.tick, snapshot.tick
            );
            assert_eq!(
                snapshot.players.len(),
                1,
                "keyframe holds the mover's latest state"
            );
        }
        assert!(snapshot.tick > previous.tick);
        previous = snapshot;
    }
    assert!(gaps >= 1, "the stalled reader should have missed snapshots");
}

#[tokio::test]
async fn reliable_queue_overflow_closes_the_slow_reader_with_4002() {
    let mut config = test_config();
    config.max_queued_messages = 16;
    slow_reader_overflows(config).await;
}

#[tokio::test]
async fn a_reliable_queue_over_its_bytes_closes_the_slow_reader_with_4002() {
    let mut config = test_config();
    // Two events of 32 KiB fill it; the message bound is out of reach.
    config.max_queued_messages = 100_000;
    config.max_queued_bytes = 64 * 1024;
    slow_reader_overflows(config).await;
}

/// A member that stops reading while another sends large events is closed with 4002 once its
/// reliable queue overflows `config`'s bounds, and leaves the lobby.
async fn slow_reader_overflows(mut config: Config) {
    config.max_message_size = 64 * 1024;
    // Large events on purpose: the per-kind limit as large as a message.
    config.max_event_size = config.max_message_size;
    config.max_event_rate = 10_000;
    config.max_lobby_event_bytes = 1 << 30;
    let server = spawn_server(config).await;
    let mut slow = join_with_small_buffer(&server, "slow").await;
    let (mut shouter, _, _) = Client::join(&server, Codec::MessagePack, "arena", "shouter").await;
    // 300 events of 32 KiB: far more than the slow reader's buffers plus 16 queued messages.
    let event = ClientMessage::Event {
        data: payload(&[0x55; 32 * 1024]),
    };
    // The shouter reads its own echo of each event before sending the next, so it is never
    // a slow reader itself.
    for _ in 0..300 {
        shouter.send(&event).await;
        shouter
            .recv_until(|m| matches!(m, ServerMessage::Event { .. }).then_some(()))
            .await;
    }
    // The slow member's seat is away (it may resume it and get the events replayed): it is
    // sent nothing more, and the shouter was never held up.
    wait_until(WAIT_TIMEOUT, "the slow member's seat is away", async || {
        let (_, lobbies) = server.http_get("/lobbies").await;
        lobbies.contains(r#""name":"slow","role":"player","away":true"#)
    })
    .await;
    // Once it reads again, the slow client finds the documented close code after its backlog.
    assert_eq!(slow.expect_close_code().await, close::SLOW_CONSUMER);
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"slow_consumer\"}", 1.0)
        .await;
}

#[tokio::test]
async fn a_reader_whose_socket_stays_full_is_closed_as_write_stalled_while_it_keeps_sending() {
    let mut config = test_config();
    config.max_message_size = 128 * 1024;
    // Large states and events on purpose: the per-kind limits as large as a message.
    config.max_state_size = config.max_message_size;
    config.max_event_size = config.max_message_size;
    // How long the socket may take no byte before the writer gives up.
    config.write_timeout = Duration::from_millis(800);
    let server = spawn_server(config).await;
    let mut stalled = join_with_small_buffer(&server, "stalled").await;
    let (mut mover, _, _) = Client::join(&server, Codec::MessagePack, "arena", "mover").await;
    // `stalled` keeps sending (so it is never idle) but reads nothing; the mover's 64 KiB
    // states fill its socket. The server must keep reading it while a write is blocked, then
    // give up on the write after the timeout.
    let big = vec![0xCD; 64 * 1024];
    let start = Instant::now();
    let mut seq = 0;
    while server
        .metric("tickrelay_disconnects_total{reason=\"write_stalled\"}")
        .await
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stalled writer was never closed"
        );
        seq += 1;
        mover.send_state(seq, &big).await;
        stalled.send_state(seq, b"still here").await;
        mover.next_snapshot().await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "closed before the write timeout"
    );
    assert_eq!(
        server
            .metric("tickrelay_disconnects_total{reason=\"write_stalled\"}")
            .await,
        Some(1.0)
    );
    // A reason's series appears with its first disconnect.
    assert_eq!(
        server
            .metric("tickrelay_disconnects_total{reason=\"idle_timeout\"}")
            .await,
        None,
        "it was never idle: it sent a state every tick"
    );
    // The stalled member's seat is away (it may resume it); the mover carries on.
    let (_, lobbies) = server.http_get("/lobbies").await;
    assert!(
        lobbies.contains(r#""name":"stalled","role":"player","away":true"#),
        "{lobbies}"
    );
    mover.send_state(seq + 1, b"after").await;
    mover
        .recv_until(|m| match m {
            ServerMessage::Snapshot(s) => s.players.iter().any(|p| p.seq == seq + 1).then_some(()),
            _ => None,
        })
        .await;
}
