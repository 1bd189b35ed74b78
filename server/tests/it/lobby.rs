//! Lobby behaviour seen by clients: join, snapshots, deltas, events, leaving, mixed codecs.

use std::time::{Duration, Instant};

use tickrelay_protocol::{ClientMessage, Codec, PlayerState, ServerMessage};

use crate::support::{Client, Closed, payload, spawn_server, test_config};

#[tokio::test]
async fn join_gets_welcome_with_assigned_id_and_current_members() {
    let server = spawn_server(test_config()).await;
    let (_ann, ann_id, members) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    assert_eq!(members.len(), 1);
    assert_eq!((members[0].id, members[0].name.as_str()), (ann_id, "ann"));

    let (mut bob, bob_id, members) =
        Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    assert_ne!(ann_id, bob_id);
    let mut names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);

    // The first snapshot a member gets is a keyframe.
    let first = bob.next_snapshot().await;
    assert!(first.keyframe);
}

#[tokio::test]
async fn existing_members_are_told_who_joins_and_leaves() {
    let server = spawn_server(test_config()).await;
    let (mut ann, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, bob_id, _) = Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    let joined = ann
        .recv_until(|m| match m {
            ServerMessage::MemberJoined { id, name, .. } => Some((id, name)),
            _ => None,
        })
        .await;
    assert_eq!(joined, (bob_id, "bob".to_owned()));

    // An explicit leave: the leaver gets close 1000, the others member_left.
    bob.send_state(1, b"here").await;
    bob.send(&ClientMessage::Leave).await;
    assert_eq!(bob.expect_close().await, Closed::Frame(1000, "bye".into()));
    let left = ann
        .recv_until(|m| match m {
            ServerMessage::MemberLeft { id, .. } => Some(id),
            _ => None,
        })
        .await;
    assert_eq!(left, bob_id);
    // The player also disappears from snapshots: a later snapshot lists it in `removed`.
    let removed = ann
        .recv_until(|m| match m {
            ServerMessage::Snapshot(s) if !s.removed.is_empty() => Some(s.removed),
            _ => None,
        })
        .await;
    assert_eq!(removed, vec![bob_id]);
}

#[tokio::test]
async fn dropped_connection_produces_member_left() {
    let server = spawn_server(test_config()).await;
    let (mut ann, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (carl, carl_id, _) = Client::join(&server, Codec::Json, "arena", "carl").await;
    // No close frame: the TCP connection just goes away.
    drop(carl);
    let left = ann
        .recv_until(|m| match m {
            ServerMessage::MemberLeft { id, .. } => Some(id),
            _ => None,
        })
        .await;
    assert_eq!(left, carl_id);
}

#[tokio::test]
async fn snapshots_arrive_at_the_tick_rate_with_every_members_latest_state() {
    let mut config = test_config();
    config.tick_hz = 20;
    let server = spawn_server(config).await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, bob_id, _) = Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    ann.send_state(1, b"ann-1").await;
    ann.send_state(2, b"ann-2").await;
    bob.send_state(7, b"bob-7").await;

    // Within a few ticks, bob's view holds both latest states (latest wins, seq echoed).
    let mut view = std::collections::HashMap::new();
    for _ in 0..10 {
        let snapshot = bob.next_snapshot().await;
        if snapshot.keyframe {
            view.clear();
        }
        for PlayerState { id, seq, data } in snapshot.players {
            view.insert(id, (seq, data));
        }
        if view.len() == 2 && view[&ann_id].0 == 2 {
            break;
        }
    }
    assert_eq!(view[&ann_id], (2, payload(b"ann-2")));
    assert_eq!(view[&bob_id], (7, payload(b"bob-7")));

    // Count one second of snapshots: consecutive tick numbers at ~20 Hz.
    let start = Instant::now();
    let mut ticks = Vec::new();
    while start.elapsed() < Duration::from_secs(1) {
        ticks.push(ann.next_snapshot().await.tick);
    }
    assert!(
        (15..=25).contains(&ticks.len()),
        "expected ~20 snapshots in 1 s at 20 Hz, got {}",
        ticks.len()
    );
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "tick gaps: {ticks:?}"
    );
}

#[tokio::test]
async fn deltas_carry_only_changed_players() {
    let server = spawn_server(test_config()).await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, bob_id, _) = Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    ann.send_state(1, b"a").await;
    bob.send_state(1, b"b").await;
    // Wait until bob has seen both, then only ann moves.
    bob.recv_until(|m| match m {
        ServerMessage::Snapshot(s) if s.players.iter().any(|p| p.id == ann_id) => Some(()),
        _ => None,
    })
    .await;
    ann.send_state(2, b"a2").await;
    let delta = bob
        .recv_until(|m| match m {
            ServerMessage::Snapshot(s) if s.players.iter().any(|p| p.seq == 2) => Some(s),
            _ => None,
        })
        .await;
    assert!(!delta.keyframe);
    let ids: Vec<_> = delta.players.iter().map(|p| p.id).collect();
    assert_eq!(
        ids,
        vec![ann_id],
        "bob ({bob_id}) did not change, so only ann is in the delta"
    );
    // And with nobody moving, deltas are empty but still sent every tick.
    let quiet = bob.next_snapshot().await;
    assert!(quiet.players.is_empty() && !quiet.keyframe);
    assert_eq!(quiet.tick, delta.tick + 1);
}

#[tokio::test]
async fn lobbies_are_isolated() {
    let server = spawn_server(test_config()).await;
    let (mut red, red_id, _) = Client::join(&server, Codec::MessagePack, "red", "r").await;
    let (mut blue, blue_id, members) = Client::join(&server, Codec::MessagePack, "blue", "b").await;
    assert_eq!(members.len(), 1, "blue lobby only has its own member");
    red.send_state(1, b"red").await;
    red.send(&ClientMessage::Event {
        data: payload(b"red-event"),
    })
    .await;
    blue.send_state(1, b"blue").await;
    for _ in 0..15 {
        match blue.recv().await {
            ServerMessage::Snapshot(s) => {
                assert!(
                    s.players.iter().all(|p| p.data == payload(b"blue")),
                    "{s:?}"
                );
            }
            ServerMessage::Event { .. } | ServerMessage::MemberJoined { .. } => {
                panic!("blue saw red's traffic")
            }
            _ => {}
        }
    }
    // Both ids can coincide (ids are per lobby); red only ever sees its own state.
    let _ = (red_id, blue_id);
    let snapshot = red
        .recv_until(|m| match m {
            ServerMessage::Snapshot(s) if !s.players.is_empty() => Some(s),
            _ => None,
        })
        .await;
    assert!(snapshot.players.iter().all(|p| p.data == payload(b"red")));
}

#[tokio::test]
async fn events_reach_every_member_in_order() {
    let mut config = test_config();
    config.max_event_rate = 1000;
    let server = spawn_server(config).await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (mut bob, _, _) = Client::join(&server, Codec::Json, "arena", "bob").await;
    let (mut cat, _, _) = Client::join(&server, Codec::MessagePack, "arena", "cat").await;
    const N: u32 = 200;
    for i in 0..N {
        ann.send(&ClientMessage::Event {
            data: payload(&i.to_be_bytes()),
        })
        .await;
    }
    for client in [&mut ann, &mut bob, &mut cat] {
        let mut seen = Vec::new();
        while seen.len() < N as usize {
            if let ServerMessage::Event { from, data, .. } = client.recv().await {
                assert_eq!(from, ann_id);
                seen.push(u32::from_be_bytes(data.0[..].try_into().unwrap()));
            }
        }
        assert_eq!(seen, (0..N).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn json_and_msgpack_clients_share_a_lobby() {
    let server = spawn_server(test_config()).await;
    let (mut packed, packed_id, _) = Client::join(&server, Codec::MessagePack, "mixed", "p").await;
    let (mut json, json_id, _) = Client::join(&server, Codec::Json, "mixed", "j").await;
    let binary_state = [0u8, 255, 10, 13, 34, 92];
    packed.send_state(5, &binary_state).await;
    json.send_state(9, b"{\"x\":1}").await;
    json.send(&ClientMessage::Event {
        data: payload(&binary_state),
    })
    .await;

    let seen_by_json = json
        .recv_until(|m| match m {
            ServerMessage::Snapshot(s) => s.players.into_iter().find(|p| p.id == packed_id),
            _ => None,
        })
        .await;
    assert_eq!(
        (seen_by_json.seq, seen_by_json.data),
        (5, payload(&binary_state))
    );
    // The event and the tick carrying json's state race: take both in whatever order.
    let (mut state, mut event) = (None, None);
    packed
        .recv_until(|m| {
            match m {
                ServerMessage::Snapshot(s) => {
                    if let Some(p) = s.players.into_iter().find(|p| p.id == json_id) {
                        state.get_or_insert((p.seq, p.data));
                    }
                }
                ServerMessage::Event { from, data, .. } => event = Some((from, data)),
                _ => {}
            }
            (state.is_some() && event.is_some()).then_some(())
        })
        .await;
    assert_eq!(state, Some((9, payload(b"{\"x\":1}"))));
    assert_eq!(event, Some((json_id, payload(&binary_state))));
}

#[tokio::test]
async fn ping_is_answered_with_server_time() {
    let server = spawn_server(test_config()).await;
    let (mut ann, _, _) = Client::join(&server, Codec::Json, "arena", "ann").await;
    ann.send(&ClientMessage::Ping {
        client_time: 1234.5,
    })
    .await;
    let (client_time, server_time_us) = ann
        .recv_until(|m| match m {
            ServerMessage::Pong {
                client_time,
                server_time_us,
            } => Some((client_time, server_time_us)),
            _ => None,
        })
        .await;
    assert_eq!(client_time, 1234.5);
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(now_us.abs_diff(server_time_us) < 5_000_000);
}
