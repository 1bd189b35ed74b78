//! Seat resume over real sockets: a connection that drops leaves its seat away; a `join` with
//! the welcome's `resume` token and the last offset takes it back with the same player id and
//! the reliable messages missed. And the races real relays get wrong.

use std::time::Duration;

use tickrelay_protocol::{ClientMessage, Codec, ErrorCode, PlayerId, ServerMessage, close};
use tickrelay_server::Config;

use crate::support::{Client, TestServer, payload, spawn_server, test_config};

/// What a `welcome` said that resuming needs.
#[derive(Debug, Clone)]
pub(crate) struct Seat {
    pub(crate) id: PlayerId,
    pub(crate) token: String,
    pub(crate) offset: u64,
    pub(crate) resumed: bool,
    pub(crate) lost: u64,
}

pub(crate) fn join_message(lobby: &str, name: &str, resume: Option<(&Seat, u64)>) -> ClientMessage {
    ClientMessage::Join {
        lobby: lobby.into(),
        name: name.into(),
        ticket: None,
        role: None,
        resume: resume.map(|(seat, _)| seat.token.clone()),
        offset: resume.map(|(_, offset)| offset),
    }
}

/// The answer to a join: the welcome's seat, or the error code.
pub(crate) async fn answer(client: &mut Client) -> Result<Seat, ErrorCode> {
    match client.recv().await {
        ServerMessage::Welcome {
            player_id,
            offset,
            resume,
            resumed,
            lost,
            ..
        } => Ok(Seat {
            id: player_id,
            token: resume.expect("a resume token in every welcome"),
            offset,
            resumed,
            lost,
        }),
        ServerMessage::Error { code, .. } => Err(code),
        other => panic!("expected welcome or error, got {other:?}"),
    }
}

async fn join(server: &TestServer, lobby: &str, name: &str) -> (Client, Seat) {
    let mut client = Client::connect(server, Codec::MessagePack).await;
    client.send(&join_message(lobby, name, None)).await;
    let seat = answer(&mut client).await.expect("welcome");
    (client, seat)
}

/// Connects and asks for `seat` back, having received up to `offset`.
async fn resume(
    server: &TestServer,
    seat: &Seat,
    offset: u64,
) -> (Client, Result<Seat, ErrorCode>) {
    let mut client = Client::connect(server, Codec::MessagePack).await;
    client
        .send(&join_message("arena", "ignored", Some((seat, offset))))
        .await;
    let answer = answer(&mut client).await;
    (client, answer)
}

/// Drops a client's TCP connection without a close frame (a crash, a network loss).
fn vanish(client: Client) {
    drop(client);
}

fn config(grace: Duration) -> Config {
    Config {
        resume_grace: grace,
        ..test_config()
    }
}

pub(crate) async fn next_member_change(client: &mut Client) -> ServerMessage {
    client
        .recv_until(|m| {
            matches!(
                m,
                ServerMessage::MemberAway { .. }
                    | ServerMessage::MemberBack { .. }
                    | ServerMessage::MemberLeft { .. }
                    | ServerMessage::MemberJoined { .. }
            )
            .then_some(m)
        })
        .await
}

pub(crate) async fn event(client: &mut Client, data: &[u8]) {
    client
        .send(&ClientMessage::Event {
            data: payload(data),
        })
        .await;
}

/// The events a client receives (skipping snapshots) until one with `last` as data, with
/// their offsets.
pub(crate) async fn events_until(client: &mut Client, last: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let mut seen = Vec::new();
    client
        .recv_until(|m| match m {
            ServerMessage::Event { data, offset, .. } => {
                let done = data.0[..] == *last;
                seen.push((data.0.to_vec(), offset.expect("events carry offsets")));
                done.then_some(())
            }
            _ => None,
        })
        .await;
    seen
}

#[tokio::test]
async fn a_dropped_connection_resumes_its_seat_with_what_it_missed() {
    let server = spawn_server(config(Duration::from_secs(30))).await;
    let (mut ann, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    ann.send_state(1, b"ann was here").await;
    event(&mut bob, b"before").await;
    let seen = events_until(&mut ann, b"before").await;
    let last_offset = seen.last().unwrap().1;
    vanish(ann);

    match next_member_change(&mut bob).await {
        ServerMessage::MemberAway { id, .. } => assert_eq!(id, ann_seat.id),
        other => panic!("expected member_away, got {other:?}"),
    }
    for data in [&b"one"[..], b"two", b"three"] {
        event(&mut bob, data).await;
    }
    events_until(&mut bob, b"three").await;

    let (mut back, answer) = resume(&server, &ann_seat, last_offset).await;
    let seat = answer.expect("resumed");
    assert_eq!((seat.id, seat.resumed, seat.lost), (ann_seat.id, true, 0));
    assert_ne!(seat.token, ann_seat.token, "a fresh token at every welcome");
    // The welcome's offset is where the replay starts: a drop mid-replay resumes from what
    // the client really got.
    assert_eq!(seat.offset, last_offset);
    // The three events, in order, with consecutive offsets, then a keyframe with its state.
    let replayed = events_until(&mut back, b"three").await;
    let data: Vec<_> = replayed.iter().map(|(d, _)| d.as_slice()).collect();
    assert_eq!(data, [&b"one"[..], b"two", b"three"]);
    assert!(replayed.iter().all(|(_, offset)| *offset > last_offset));
    let keyframe = back.next_snapshot().await;
    assert!(keyframe.keyframe);
    let mine = keyframe.players.iter().find(|p| p.id == seat.id);
    assert_eq!(
        mine.map(|p| p.seq),
        Some(1),
        "its last state stayed in the lobby"
    );
    match next_member_change(&mut bob).await {
        ServerMessage::MemberBack { id, .. } => assert_eq!(id, ann_seat.id),
        other => panic!("expected member_back, got {other:?}"),
    }
    assert_eq!(
        server
            .metric("tickrelay_resumes_total{result=\"resumed\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_away_seat_left_alone_expires_and_its_token_then_gets_seat_expired() {
    let server = spawn_server(config(Duration::from_millis(300))).await;
    let (ann, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    vanish(ann);
    assert!(matches!(
        next_member_change(&mut bob).await,
        ServerMessage::MemberAway { .. }
    ));
    match next_member_change(&mut bob).await {
        ServerMessage::MemberLeft { id, .. } => assert_eq!(id, ann_seat.id),
        other => panic!("expected member_left after the grace, got {other:?}"),
    }
    let (mut late, answer) = resume(&server, &ann_seat, ann_seat.offset).await;
    assert_eq!(answer.unwrap_err(), ErrorCode::SeatExpired);
    // The connection stays: it joins afresh, as a new player.
    late.send(&join_message("arena", "ann", None)).await;
    let fresh = answer_of(&mut late).await;
    assert_ne!(fresh.id, ann_seat.id);
    assert_eq!(
        server.metric("tickrelay_seats_expired_total").await,
        Some(1.0)
    );
}

async fn answer_of(client: &mut Client) -> Seat {
    answer(client).await.expect("welcome")
}

#[tokio::test]
async fn a_token_works_once_even_when_two_connections_race_with_it() {
    let server = spawn_server(config(Duration::from_secs(30))).await;
    let (ann, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    vanish(ann);
    assert!(matches!(
        next_member_change(&mut bob).await,
        ServerMessage::MemberAway { .. }
    ));
    let (first, second) = tokio::join!(
        resume(&server, &ann_seat, ann_seat.offset),
        resume(&server, &ann_seat, ann_seat.offset)
    );
    let answers = [first.1, second.1];
    let won = answers.iter().filter(|a| a.is_ok()).count();
    let expired = answers
        .iter()
        .filter(|a| matches!(a, Err(ErrorCode::SeatExpired)))
        .count();
    assert_eq!((won, expired), (1, 1), "{answers:?}");
    // Used: a third try fails too.
    let (_, third) = resume(&server, &ann_seat, ann_seat.offset).await;
    assert_eq!(third.unwrap_err(), ErrorCode::SeatExpired);
}

#[tokio::test]
async fn a_resume_while_the_old_socket_still_looks_open_takes_over_without_noise() {
    let server = spawn_server(config(Duration::from_secs(30))).await;
    let (mut old, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    // Half-open: the old connection is still open as far as the server knows.
    let (mut new, answer) = resume(&server, &ann_seat, ann_seat.offset).await;
    let seat = answer.expect("resumed");
    assert_eq!((seat.id, seat.resumed), (ann_seat.id, true));
    assert_eq!(old.expect_close_code().await, close::REPLACED);
    // The old connection's close (and the leave it sends) is done before the marker.
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"replaced\"}", 1.0)
        .await;
    event(&mut new, b"marker").await;
    bob.recv_until(|m| match m {
        ServerMessage::MemberLeft { .. }
        | ServerMessage::MemberJoined { .. }
        | ServerMessage::MemberAway { .. }
        | ServerMessage::MemberBack { .. } => panic!("bob saw membership noise: {m:?}"),
        ServerMessage::Event { data, .. } => (data.0[..] == b"marker"[..]).then_some(()),
        _ => None,
    })
    .await;
    // The old connection's deferred close never closed the new one: it still gets ticks.
    new.next_snapshot().await;
    new.next_snapshot().await;
}

#[tokio::test]
async fn a_member_that_resumes_and_drops_again_goes_away_again_and_resumes_again() {
    let server = spawn_server(config(Duration::from_secs(30))).await;
    let (ann, first) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    vanish(ann);
    let (back, answer) = resume(&server, &first, first.offset).await;
    let second = answer.expect("resumed");
    vanish(back);
    let changes = [
        next_member_change(&mut bob).await,
        next_member_change(&mut bob).await,
        next_member_change(&mut bob).await,
    ];
    assert!(
        matches!(
            changes,
            [
                ServerMessage::MemberAway { .. },
                ServerMessage::MemberBack { .. },
                ServerMessage::MemberAway { .. }
            ]
        ),
        "{changes:?}"
    );
    let (_, answer) = resume(&server, &second, second.offset).await;
    assert_eq!(answer.expect("resumed with the newest token").id, first.id);
}

#[tokio::test]
async fn what_the_history_no_longer_holds_is_reported_as_lost() {
    let server = spawn_server(Config {
        resume_history: 2,
        ..config(Duration::from_secs(30))
    })
    .await;
    let (ann, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    vanish(ann);
    for data in [&b"1"[..], b"2", b"3", b"4", b"5"] {
        event(&mut bob, data).await;
    }
    events_until(&mut bob, b"5").await;
    let (mut back, answer) = resume(&server, &ann_seat, ann_seat.offset).await;
    let seat = answer.expect("resumed");
    // Seven lobby messages since its welcome (bob's join, its own away, five events); the
    // history keeps the last two.
    assert_eq!(seat.lost, 5, "{seat:?}");
    let replayed: Vec<_> = events_until(&mut back, b"5").await;
    assert_eq!(replayed.len(), 2);
    assert_eq!(
        server
            .metric("tickrelay_resumes_total{result=\"resumed_lossy\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn forged_foreign_and_gone_seats_get_seat_expired() {
    let server = spawn_server(config(Duration::from_millis(200))).await;
    let (ann, ann_seat) = join(&server, "arena", "ann").await;
    let forged = Seat {
        token: format!("{}x", ann_seat.token),
        ..ann_seat.clone()
    };
    let (_, refused) = resume(&server, &forged, 0).await;
    assert_eq!(refused.unwrap_err(), ErrorCode::SeatExpired);
    // A token is bound to its lobby.
    let mut elsewhere = Client::connect(&server, Codec::MessagePack).await;
    elsewhere
        .send(&join_message("other", "x", Some((&ann_seat, 0))))
        .await;
    assert_eq!(
        answer(&mut elsewhere).await.unwrap_err(),
        ErrorCode::SeatExpired
    );
    // Another server (another secret) knows nothing of it.
    let other = spawn_server(config(Duration::from_secs(30))).await;
    let _ = join(&other, "arena", "someone").await;
    let (_, refused) = resume(&other, &ann_seat, 0).await;
    assert_eq!(refused.unwrap_err(), ErrorCode::SeatExpired);
    // The lobby emptied (its only member away, then expired) and was removed.
    vanish(ann);
    crate::support::wait_until(
        crate::support::WAIT_TIMEOUT,
        "the empty lobby is removed",
        async || server.metric("tickrelay_lobbies").await == Some(0.0),
    )
    .await;
    let (_, refused) = resume(&server, &ann_seat, ann_seat.offset).await;
    assert_eq!(refused.unwrap_err(), ErrorCode::SeatExpired);
    assert_eq!(
        server.metric("tickrelay_lobbies").await,
        Some(0.0),
        "a resume never creates a lobby"
    );
}

#[tokio::test]
async fn leave_and_a_normal_close_give_the_seat_up_at_once() {
    let server = spawn_server(config(Duration::from_secs(30))).await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    let (mut ann, ann_seat) = join(&server, "arena", "ann").await;
    assert!(matches!(
        next_member_change(&mut bob).await,
        ServerMessage::MemberJoined { .. }
    ));
    ann.send(&ClientMessage::Leave).await;
    assert_eq!(ann.expect_close_code().await, close::NORMAL);
    match next_member_change(&mut bob).await {
        ServerMessage::MemberLeft { id, .. } => assert_eq!(id, ann_seat.id),
        other => panic!("expected member_left at once, got {other:?}"),
    }
    let (mut carl, carl_seat) = join(&server, "arena", "carl").await;
    next_member_change(&mut bob).await;
    carl.ws.close(None).await.unwrap();
    match next_member_change(&mut bob).await {
        ServerMessage::MemberLeft { id, .. } => assert_eq!(id, carl_seat.id),
        other => panic!("expected member_left at once, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_racing_the_grace_expiry_either_wins_or_is_refused_never_both() {
    let grace = Duration::from_millis(150);
    let server = spawn_server(config(grace)).await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    for round in 0..6u64 {
        let (ann, ann_seat) = join(&server, "arena", "ann").await;
        // Bob hears of the join, then of the drop.
        assert!(matches!(
            next_member_change(&mut bob).await,
            ServerMessage::MemberJoined { .. }
        ));
        vanish(ann);
        assert!(matches!(
            next_member_change(&mut bob).await,
            ServerMessage::MemberAway { .. }
        ));
        // Around the expiry: a little before, at, and after it.
        tokio::time::sleep(grace.mul_f64(0.6 + 0.15 * round as f64)).await;
        let (back, answer) = resume(&server, &ann_seat, ann_seat.offset).await;
        match answer {
            Ok(seat) => {
                assert_eq!(seat.id, ann_seat.id);
                assert!(matches!(
                    next_member_change(&mut bob).await,
                    ServerMessage::MemberBack { .. }
                ));
                // Leave for good before the next round.
                let mut back = back;
                back.send(&ClientMessage::Leave).await;
                assert!(matches!(
                    next_member_change(&mut bob).await,
                    ServerMessage::MemberLeft { .. }
                ));
            }
            Err(code) => {
                assert_eq!(code, ErrorCode::SeatExpired);
                assert!(matches!(
                    next_member_change(&mut bob).await,
                    ServerMessage::MemberLeft { .. }
                ));
            }
        }
    }
}

#[tokio::test]
async fn with_tickets_on_a_resume_needs_no_new_ticket() {
    use tickrelay_protocol::ticket::{TicketClaims, TicketSigner};
    let secret = "resume-test-secret-0123456789abcdef";
    let server = spawn_server(Config {
        ticket_secret: tickrelay_server::config::TicketSecret {
            ticket_secret: Some(secret.into()),
            ticket_secret_file: None,
        },
        ..config(Duration::from_secs(30))
    })
    .await;
    let ticket = TicketSigner::hs256(secret.as_bytes())
        .unwrap()
        .sign(&TicketClaims {
            sub: "user-1".into(),
            lobby: "arena".into(),
            exp: u64::MAX / 2,
            nbf: None,
            name: None,
            role: None,
            node: None,
        });
    let mut ann = Client::connect(&server, Codec::MessagePack).await;
    ann.send(&ClientMessage::Join {
        lobby: "arena".into(),
        name: "x".into(),
        ticket: Some(ticket),
        role: None,
        resume: None,
        offset: None,
    })
    .await;
    let seat = answer_of(&mut ann).await;
    vanish(ann);
    // No ticket in this join: the resume token proves the seat.
    let (_, answer) = resume(&server, &seat, seat.offset).await;
    assert_eq!(answer.expect("resumed").id, seat.id);
    // Without a valid token, a ticket is still required.
    let forged = Seat {
        token: "not-a-token".into(),
        ..seat
    };
    let (mut refused, answer) = resume(&server, &forged, 0).await;
    assert_eq!(answer.unwrap_err(), ErrorCode::SeatExpired);
    refused.send(&join_message("arena", "x", None)).await;
    assert_eq!(
        crate::resume::answer(&mut refused).await.unwrap_err(),
        ErrorCode::Unauthorized
    );
}

#[tokio::test]
async fn a_replay_longer_than_the_reliable_queue_sends_the_newest_and_counts_the_rest() {
    let server = spawn_server(Config {
        max_queued_messages: 8,
        max_event_rate: 1000,
        ..config(Duration::from_secs(30))
    })
    .await;
    let (ann, ann_seat) = join(&server, "arena", "ann").await;
    let (mut bob, _) = join(&server, "arena", "bob").await;
    vanish(ann);
    // 20 events while ann is away; her queue holds 8, so a replay of 4 fits beside the rest.
    for n in 0..20u8 {
        event(&mut bob, &[n]).await;
        bob.recv_until(|m| matches!(m, ServerMessage::Event { .. }).then_some(()))
            .await;
    }
    let (mut back, answer) = resume(&server, &ann_seat, ann_seat.offset).await;
    let seat = answer.expect("resumed, not closed as a slow consumer");
    let replayed = events_until(&mut back, &[19]).await;
    let data: Vec<u8> = replayed.iter().map(|(d, _)| d[0]).collect();
    assert_eq!(data, [16, 17, 18, 19], "the newest, in order");
    // bob's join and the 16 older events were not sent: counted (her own away would not
    // have been sent to her anyway).
    assert_eq!(seat.lost, 17, "{seat:?}");
    back.next_snapshot().await;
}
