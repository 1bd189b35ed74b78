//! Every configurable limit triggers its documented error or close code, and only for the
//! connection that exceeded it.

use std::time::Duration;

use futures_util::SinkExt;
use tickrelay_protocol::{ClientMessage, Codec, ErrorCode, ServerMessage, close};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    Client, WAIT_TIMEOUT, http_get_with_headers, payload, spawn_server, test_config, wait_until,
};

async fn expect_error(client: &mut Client) -> ErrorCode {
    client
        .recv_until(|m| match m {
            ServerMessage::Error { code, .. } => Some(code),
            _ => None,
        })
        .await
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let mut config = test_config();
    config.max_message_size = 1024;
    let server = spawn_server(config).await;
    let (mut big, _, _) = Client::join(&server, Codec::MessagePack, "arena", "big").await;
    let (mut ok, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ok").await;
    big.send_state(1, &[7u8; 2000]).await;
    assert_eq!(big.expect_close_code().await, close::MESSAGE_TOO_BIG);
    // The other member is unaffected and keeps getting snapshots.
    ok.next_snapshot().await;
    ok.next_snapshot().await;
}

#[tokio::test]
async fn oversized_fragmented_message_closes_with_1009() {
    let mut config = test_config();
    config.max_message_size = 1024;
    let server = spawn_server(config).await;
    let (mut client, _, _) = Client::join(&server, Codec::MessagePack, "arena", "frag").await;
    // Each fragment is small; together they exceed the limit.
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let fragment = |opcode, fin| {
        let mut frame = Frame::message(vec![1u8; 600], opcode, fin);
        frame.header_mut().is_final = fin;
        Message::Frame(frame)
    };
    client
        .ws
        .send(fragment(OpCode::Data(Data::Binary), false))
        .await
        .unwrap();
    client
        .ws
        .send(fragment(OpCode::Data(Data::Continue), true))
        .await
        .unwrap();
    assert_eq!(client.expect_close_code().await, close::MESSAGE_TOO_BIG);
}

#[tokio::test]
async fn oversized_states_and_events_are_refused_and_the_connection_stays() {
    let mut config = test_config();
    config.max_state_size = 100;
    config.max_event_size = 50;
    let server = spawn_server(config).await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, _, _) = Client::join(&server, Codec::Json, "arena", "bob").await;
    ann.send_state(1, &[7; 101]).await;
    assert_eq!(expect_error(&mut ann).await, ErrorCode::StateTooLarge);
    ann.send(&ClientMessage::Event {
        data: payload(&[7; 51]),
    })
    .await;
    assert_eq!(expect_error(&mut ann).await, ErrorCode::EventTooLarge);
    // At the limits both go through, and the refused ones never reached the lobby. The event
    // and the tick carrying the state race: take both in whatever order.
    ann.send(&ClientMessage::Event {
        data: payload(&[8; 50]),
    })
    .await;
    ann.send_state(2, &[8; 100]).await;
    let (mut event, mut seq) = (None, None);
    bob.recv_until(|m| {
        match m {
            ServerMessage::Event { from, data, .. } if from == ann_id => {
                event.get_or_insert(data);
            }
            ServerMessage::Snapshot(s) => {
                if let Some(p) = s.players.iter().find(|p| p.id == ann_id) {
                    seq.get_or_insert(p.seq);
                }
            }
            _ => {}
        }
        (event.is_some() && seq.is_some()).then_some(())
    })
    .await;
    assert_eq!(
        event,
        Some(payload(&[8; 50])),
        "the oversized event was never relayed"
    );
    assert_eq!(seq, Some(2), "the oversized state never reached a snapshot");
    for code in ["state_too_large", "event_too_large"] {
        let series = format!("tickrelay_errors_sent_total{{code=\"{code}\"}}");
        assert_eq!(server.metric(&series).await, Some(1.0), "{series}");
    }
}

#[tokio::test]
async fn unknown_messages_are_charged_to_the_event_rate() {
    let mut config = test_config();
    config.max_event_rate = 5;
    let server = spawn_server(config).await;
    let (mut client, _, _) = Client::join(&server, Codec::Json, "arena", "a").await;
    // Each gets an `error` unknown_message: unbounded, that is a write per message for free.
    for _ in 0..20 {
        client.send_raw_json(r#"{"t":"teleport"}"#).await;
    }
    assert_eq!(client.expect_close_code().await, close::RATE_LIMITED);
}

#[tokio::test]
async fn full_lobby_refuses_with_lobby_full_and_keeps_the_connection() {
    let mut config = test_config();
    config.max_lobby_size = 2;
    let server = spawn_server(config).await;
    let _a = Client::join(&server, Codec::MessagePack, "small", "a").await;
    let _b = Client::join(&server, Codec::MessagePack, "small", "b").await;
    let mut c = Client::connect(&server, Codec::MessagePack).await;
    c.send_join("small", "c").await;
    assert_eq!(expect_error(&mut c).await, ErrorCode::LobbyFull);
    // Still connected: it can join another lobby.
    c.send_join("other", "c").await;
    assert!(matches!(c.recv().await, ServerMessage::Welcome { .. }));
}

#[tokio::test]
async fn too_many_lobbies_is_refused() {
    let mut config = test_config();
    config.max_lobbies = 2;
    let server = spawn_server(config).await;
    let _a = Client::join(&server, Codec::MessagePack, "one", "a").await;
    let _b = Client::join(&server, Codec::MessagePack, "two", "b").await;
    let mut c = Client::connect(&server, Codec::MessagePack).await;
    c.send_join("three", "c").await;
    assert_eq!(expect_error(&mut c).await, ErrorCode::TooManyLobbies);
    // Joining an existing lobby still works.
    let _d = Client::join(&server, Codec::MessagePack, "one", "d").await;
}

#[tokio::test]
async fn empty_lobbies_are_removed() {
    let mut config = test_config();
    config.max_lobbies = 1;
    let server = spawn_server(config).await;
    let (mut a, _, _) = Client::join(&server, Codec::MessagePack, "first", "a").await;
    a.send(&ClientMessage::Leave).await;
    assert_eq!(a.expect_close_code().await, close::NORMAL);
    // The slot of the emptied lobby is free again (removal is asynchronous: retry).
    let mut _member = None;
    wait_until(
        WAIT_TIMEOUT,
        "a join into a second lobby is accepted",
        async || {
            let mut b = Client::connect(&server, Codec::MessagePack).await;
            b.send_join("second", "b").await;
            match b.recv().await {
                ServerMessage::Welcome { .. } => {
                    _member = Some(b);
                    true
                }
                ServerMessage::Error {
                    code: ErrorCode::TooManyLobbies,
                    ..
                } => false,
                other => panic!("unexpected {other:?}"),
            }
        },
    )
    .await;
    let (_, body) = server.http_get("/lobbies").await;
    assert!(
        body.contains("\"second\"") && !body.contains("\"first\""),
        "{body}"
    );
}

#[tokio::test]
async fn connection_limit_closes_extra_connections_with_1013() {
    let mut config = test_config();
    config.max_connections = 2;
    let server = spawn_server(config).await;
    let (mut a, _, _) = Client::join(&server, Codec::MessagePack, "arena", "a").await;
    let _b = Client::join(&server, Codec::MessagePack, "arena", "b").await;
    let mut extra = Client::connect(&server, Codec::MessagePack).await;
    // It learns when to come back, then the close.
    match extra.recv().await {
        ServerMessage::Error {
            code: ErrorCode::Overloaded,
            retry_after_ms: Some(wait),
            ..
        } => assert!(wait > 0),
        other => panic!("expected error overloaded, got {other:?}"),
    }
    assert_eq!(extra.expect_close_code().await, close::TRY_AGAIN_LATER);
    a.next_snapshot().await;
    // Slots come back when connections end, however they end: after `a` and the refused one
    // are gone, a new client gets in.
    drop(a);
    drop(extra);
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"peer_vanished\"}", 1.0)
        .await;
    wait_until(WAIT_TIMEOUT, "one connection left", async || {
        server.metric("tickrelay_connections").await == Some(1.0)
    })
    .await;
    let (mut c, _, _) = Client::join(&server, Codec::MessagePack, "arena", "c").await;
    c.next_snapshot().await;
}

#[tokio::test]
async fn an_upgrade_with_no_slot_and_no_pending_room_is_refused_with_503() {
    let mut config = test_config();
    config.max_connections = 1;
    config.max_pending_connections = 1;
    let server = spawn_server(config).await;
    let (mut a, _, _) = Client::join(&server, Codec::MessagePack, "arena", "a").await;
    // The upgrade request's own HTTP connection holds the only pending permit, so a refused
    // session would have none to close in: the refusal is an HTTP answer instead.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let (status, head, body) = http_get_with_headers(server.addr, "/ws", &upgrade).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("server full"), "{body}");
    assert!(head.contains("retry-after: 2"), "{head}");
    assert_eq!(
        server
            .metric("tickrelay_upgrades_refused_total{reason=\"server_full\"}")
            .await,
        Some(1.0)
    );
    a.next_snapshot().await;
}

#[tokio::test]
async fn connections_that_never_upgrade_are_bounded_and_live_clients_keep_going() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let mut config = test_config();
    config.max_pending_connections = 3;
    config.handshake_timeout = Duration::from_secs(60);
    let server = spawn_server(config).await;
    let (mut live, _, _) = Client::join(&server, Codec::MessagePack, "arena", "live").await;
    // Two silent TCP connections hold two of the three pending slots; the metrics request
    // that sees them holds the third while it runs.
    let silent_1 = TcpStream::connect(server.addr).await.unwrap();
    let _silent_2 = TcpStream::connect(server.addr).await.unwrap();
    server
        .wait_metric("tickrelay_connections_pending", 2.0)
        .await;
    let _silent_3 = TcpStream::connect(server.addr).await.unwrap();
    // The kernel accepts this one, but the server does not take it while three are pending.
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Meanwhile the live client's lobby ticks on.
    for _ in 0..5 {
        live.next_snapshot().await;
    }
    let mut response = Vec::new();
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        waiting.read_to_end(&mut response),
    );
    assert!(
        early.await.is_err(),
        "answered while every pending slot was taken: {response:?}"
    );
    // One silent connection goes: the waiting request is taken and answered.
    drop(silent_1);
    tokio::time::timeout(WAIT_TIMEOUT, waiting.read_to_end(&mut response))
        .await
        .expect("answered once a pending slot was free")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    live.next_snapshot().await;
}

#[tokio::test]
async fn state_flood_closes_with_4001() {
    let mut config = test_config();
    config.max_state_rate = 50;
    let server = spawn_server(config).await;
    let (mut flooder, _, _) = Client::join(&server, Codec::MessagePack, "arena", "flood").await;
    let (mut calm, _, _) = Client::join(&server, Codec::MessagePack, "arena", "calm").await;
    // A steady 50/s is fine (burst of one second) ...
    for seq in 0..40 {
        calm.send_state(seq, b"ok").await;
    }
    // ... 200 at once is not.
    for seq in 0..200 {
        if flooder
            .ws
            .send(Message::Binary(
                Codec::MessagePack
                    .encode(&ClientMessage::State {
                        seq,
                        data: payload(b"x"),
                    })
                    .unwrap()
                    .into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flooder.expect_close_code().await, close::RATE_LIMITED);
    calm.next_snapshot().await;
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"rate_limited\"}", 1.0)
        .await;
}

#[tokio::test]
async fn event_flood_closes_with_4001() {
    let mut config = test_config();
    config.max_event_rate = 20;
    let server = spawn_server(config).await;
    let (mut flooder, _, _) = Client::join(&server, Codec::Json, "arena", "flood").await;
    for _ in 0..100 {
        flooder
            .send(&ClientMessage::Event {
                data: payload(b"boom"),
            })
            .await;
    }
    assert_eq!(flooder.expect_close_code().await, close::RATE_LIMITED);
}

#[tokio::test]
async fn websocket_ping_flood_closes_with_4001() {
    let mut config = test_config();
    config.max_event_rate = 20;
    let server = spawn_server(config).await;
    // Pings cost a pong each; unsolicited pongs are legal and cost a read: both are charged.
    for frame in [
        Message::Ping(vec![1, 2, 3].into()),
        Message::Pong(vec![4].into()),
    ] {
        let (mut flooder, _, _) = Client::join(&server, Codec::MessagePack, "arena", "f").await;
        for _ in 0..100 {
            if flooder.ws.send(frame.clone()).await.is_err() {
                break;
            }
        }
        assert_eq!(
            flooder.expect_close_code().await,
            close::RATE_LIMITED,
            "{frame:?}"
        );
    }
}

#[tokio::test]
async fn no_join_within_handshake_timeout_closes_with_4004() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = spawn_server(config).await;
    let mut lurker = Client::connect(&server, Codec::MessagePack).await;
    assert_eq!(lurker.expect_close_code().await, close::JOIN_TIMEOUT);
}

#[tokio::test]
async fn silent_client_is_closed_after_idle_timeout_but_a_live_one_stays() {
    let mut config = test_config();
    config.idle_timeout = Duration::from_millis(600);
    config.ping_interval = Duration::from_millis(100);
    let server = spawn_server(config).await;
    let (mut live, _, _) = Client::join(&server, Codec::MessagePack, "arena", "live").await;
    let (mut silent, _, _) = Client::join(&server, Codec::MessagePack, "arena", "silent").await;
    // `live` keeps reading, so tungstenite answers the server's pings; `silent` reads nothing
    // for longer than the idle timeout, so it answers no ping.
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        live.next_snapshot().await;
    }
    assert_eq!(silent.expect_close_code().await, close::IDLE_TIMEOUT);
    live.next_snapshot().await;
}

#[tokio::test]
async fn protocol_misuse_gets_error_messages_and_keeps_the_connection() {
    let server = spawn_server(test_config()).await;
    let mut client = Client::connect(&server, Codec::Json).await;
    client.send_state(1, b"too early").await;
    assert_eq!(expect_error(&mut client).await, ErrorCode::NotJoined);
    client
        .ws
        .send(Message::Text(r#"{"t":"teleport","to":"moon"}"#.into()))
        .await
        .unwrap();
    assert_eq!(expect_error(&mut client).await, ErrorCode::UnknownMessage);
    for (lobby, name) in [
        ("", "x"),
        ("ok", ""),
        (&"l".repeat(65)[..], "x"),
        ("ok", "bad\nname"),
    ] {
        client.send_join(lobby, name).await;
        assert_eq!(expect_error(&mut client).await, ErrorCode::InvalidJoin);
    }
    client.send_join("ok", "x").await;
    assert!(matches!(client.recv().await, ServerMessage::Welcome { .. }));
    client.send_join("again", "x").await;
    assert_eq!(expect_error(&mut client).await, ErrorCode::AlreadyJoined);
    let (_, metrics) = server.http_get("/metrics").await;
    assert!(
        metrics.contains("tickrelay_errors_sent_total{code=\"invalid_join\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_state_that_would_outgrow_the_lobby_keyframe_is_refused_and_only_its_sender_is() {
    let mut config = test_config();
    config.max_state_size = 600;
    config.max_snapshot_size = 1000;
    let server = spawn_server(config).await;
    let (mut witness, _, _) = Client::join(&server, Codec::MessagePack, "witness", "w").await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, bob_id, _) = Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    ann.send_state(1, &[1; 600]).await;
    let seen = |id, seq| {
        move |m: ServerMessage| match m {
            ServerMessage::Snapshot(s) => s
                .players
                .iter()
                .any(|p| p.id == id && p.seq == seq)
                .then_some(()),
            _ => None,
        }
    };
    bob.recv_until(seen(ann_id, 1)).await;
    // 600 + 600 would be 1,200 bytes of states in every keyframe: refused, dropped.
    bob.send_state(1, &[2; 600]).await;
    assert_eq!(expect_error(&mut bob).await, ErrorCode::StateTooLarge);
    // What fits goes through; ann, under budget all along, was never refused.
    bob.send_state(2, &[2; 400]).await;
    ann.recv_until(seen(bob_id, 2)).await;
    let keyframe_states: usize = {
        let (mut late, _, _) = Client::join(&server, Codec::MessagePack, "arena", "late").await;
        let keyframe = late.next_snapshot().await;
        assert!(keyframe.keyframe);
        keyframe.players.iter().map(|p| p.data.len()).sum()
    };
    assert_eq!(keyframe_states, 1000);
    let series = "tickrelay_errors_sent_total{code=\"state_too_large\"}";
    assert_eq!(server.metric(series).await, Some(1.0));
    witness.next_snapshot().await;
}

#[tokio::test]
async fn a_player_flooding_events_spends_only_its_share_of_the_lobby_budget() {
    let mut config = test_config();
    config.max_lobby_event_bytes = 2000;
    // A full lobby: the budget is shared by as many players as it can hold.
    config.max_lobby_size = 2;
    let server = spawn_server(config).await;
    let (mut witness, _, _) = Client::join(&server, Codec::MessagePack, "witness", "w").await;
    let (mut flood, _, _) = Client::join(&server, Codec::MessagePack, "arena", "flood").await;
    let (mut calm, calm_id, _) = Client::join(&server, Codec::MessagePack, "arena", "calm").await;
    // Two players: 1,000 bytes/s each, a second of burst. Ten 500-byte events at once: two
    // fit, the rest are dropped with a time to wait.
    for _ in 0..10 {
        flood
            .send(&ClientMessage::Event {
                data: payload(&[9; 500]),
            })
            .await;
    }
    let mut refused = 0;
    let mut relayed = 0;
    flood
        .recv_until(|m| {
            match m {
                ServerMessage::Error {
                    code: ErrorCode::Overloaded,
                    retry_after_ms: Some(wait),
                    ..
                } => {
                    assert!(wait > 0 && wait <= 1000, "{wait}");
                    refused += 1;
                }
                ServerMessage::Event { .. } => relayed += 1,
                _ => {}
            }
            (refused + relayed == 10).then_some(())
        })
        .await;
    // Exactly 2 and 8 when the ten arrive within a few milliseconds; a slow machine spreading
    // them out refills the share a little.
    assert!(
        relayed >= 2 && refused >= 5,
        "relayed {relayed}, refused {refused}"
    );
    // The other player's share is untouched: its event goes through at once.
    calm.send(&ClientMessage::Event {
        data: payload(&[7; 500]),
    })
    .await;
    let from = flood
        .recv_until(|m| match m {
            ServerMessage::Event { from, data, .. } if data.len() == 500 && from == calm_id => {
                Some(from)
            }
            _ => None,
        })
        .await;
    assert_eq!(from, calm_id);
    assert_eq!(
        server
            .metric("tickrelay_errors_sent_total{code=\"overloaded\"}")
            .await,
        Some(f64::from(refused))
    );
    witness.next_snapshot().await;
}
