//! Signed join tickets, one seat per identity, and spectators: each hostile case closes only
//! the offender, is counted, and leaves a witness lobby ticking.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickrelay_protocol::ticket::{TicketClaims, TicketSigner};
use tickrelay_protocol::{
    ClientMessage, Codec, ErrorCode, Member, PlayerId, Role, ServerMessage, close,
};
use tickrelay_server::Config;
use tickrelay_server::config::TicketSecret;

use crate::support::{Client, TestServer, payload, spawn_server, test_config, with_pyjwt};

const SECRET: &str = "tickrelay-test-secret-0123456789abcdef";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn keys_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/tests/keys"
    ))
}

fn hs256_config() -> Config {
    Config {
        ticket_secret: TicketSecret {
            ticket_secret: Some(SECRET.into()),
            ticket_secret_file: None,
        },
        ..test_config()
    }
}

fn claims(sub: &str, lobby: &str) -> TicketClaims {
    TicketClaims {
        sub: sub.into(),
        lobby: lobby.into(),
        exp: now_secs() + 60,
        nbf: None,
        name: None,
        role: None,
        node: None,
    }
}

fn sign(claims: &TicketClaims) -> String {
    TicketSigner::hs256(SECRET.as_bytes()).unwrap().sign(claims)
}

fn join(lobby: &str, ticket: Option<String>, role: Option<Role>) -> ClientMessage {
    ClientMessage::Join {
        lobby: lobby.into(),
        name: "ignored-with-tickets".into(),
        ticket,
        role,
        resume: None,
        offset: None,
    }
}

/// Connects and sends `join`; returns the client and the server's first answer.
async fn try_join(server: &TestServer, message: &ClientMessage) -> (Client, ServerMessage) {
    let mut client = Client::connect(server, Codec::MessagePack).await;
    client.send(message).await;
    let answer = client.recv().await;
    (client, answer)
}

/// Joins with `ticket`; panics unless welcomed. Returns the client, its id and the roster.
async fn join_with(
    server: &TestServer,
    lobby: &str,
    ticket: String,
) -> (Client, PlayerId, Vec<Member>) {
    match try_join(server, &join(lobby, Some(ticket), None)).await {
        (
            client,
            ServerMessage::Welcome {
                player_id, members, ..
            },
        ) => (client, player_id, members),
        (_, other) => panic!("expected welcome, got {other:?}"),
    }
}

/// Reads snapshots for `period` and checks that the lobby ticked at no less than half its
/// rate meanwhile (a lenient bound: CI runs a debug build on two loaded cores).
async fn assert_ticking(witness: &mut Client, period: Duration, tick_hz: u32) {
    let first = witness.next_snapshot().await.tick;
    let started = Instant::now();
    let mut last = first;
    while started.elapsed() < period {
        last = witness.next_snapshot().await.tick;
    }
    let expected = started.elapsed().as_secs_f64() * f64::from(tick_hz);
    let ticked = (last - first) as f64;
    assert!(
        ticked >= expected * 0.5,
        "the witness lobby ticked {ticked} times in {:?}, expected about {expected}",
        started.elapsed()
    );
}

#[tokio::test]
async fn joins_without_a_valid_ticket_are_refused_closed_and_counted_by_reason() {
    let server = spawn_server(hs256_config()).await;
    let (mut witness, _, _) = join_with(&server, "witness", sign(&claims("w", "witness"))).await;

    let forged = TicketSigner::hs256(&[b'x'; 32])
        .unwrap()
        .sign(&claims("mallory", "arena"));
    let ed_signed =
        TicketSigner::ed25519_pem(&std::fs::read(keys_dir().join("ed25519-test.pem")).unwrap())
            .unwrap()
            .sign(&claims("mallory", "arena"));
    let alg_none = {
        use base64::Engine as _;
        let part = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = serde_json::to_string(&claims("mallory", "arena")).unwrap();
        format!("{}.{}.", part(r#"{"alg":"none","typ":"JWT"}"#), part(&body))
    };
    let cases: [(&str, Option<String>, &str); 8] = [
        ("no ticket", None, "missing"),
        ("garbage", Some("not-a-jwt".into()), "malformed"),
        ("another secret", Some(forged), "bad_signature"),
        (
            "EdDSA where HS256 is configured",
            Some(ed_signed),
            "bad_algorithm",
        ),
        ("alg none", Some(alg_none), "bad_algorithm"),
        (
            "expired",
            Some(sign(&TicketClaims {
                exp: now_secs() - 60,
                ..claims("mallory", "arena")
            })),
            "expired",
        ),
        (
            "not yet valid",
            Some(sign(&TicketClaims {
                nbf: Some(now_secs() + 600),
                ..claims("mallory", "arena")
            })),
            "not_yet_valid",
        ),
        (
            "another lobby",
            Some(sign(&claims("mallory", "other"))),
            "wrong_lobby",
        ),
    ];
    for (what, ticket, reason) in cases {
        let (mut client, answer) = try_join(&server, &join("arena", ticket, None)).await;
        match answer {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::Unauthorized, "{what}: {message}");
            }
            other => panic!("{what}: expected error unauthorized, got {other:?}"),
        }
        assert_eq!(
            client.expect_close_code().await,
            close::UNAUTHORIZED,
            "{what}"
        );
        let series = format!("tickrelay_tickets_refused_total{{reason=\"{reason}\"}}");
        assert!(
            server.metric(&series).await.is_some_and(|n| n >= 1.0),
            "{what}: {series}"
        );
    }
    assert_eq!(
        server.metric("tickrelay_tickets_accepted_total").await,
        Some(1.0),
        "only the witness got in"
    );
    assert_eq!(
        server.metric("tickrelay_lobbies").await,
        Some(1.0),
        "no refused join created a lobby"
    );
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"unauthorized\"}", 8.0)
        .await;
    assert_ticking(&mut witness, Duration::from_millis(500), 50).await;
}

#[tokio::test]
async fn a_ticket_sets_name_and_role_and_the_token_alias_is_accepted() {
    let server = spawn_server(hs256_config()).await;
    let ann = TicketClaims {
        name: Some("Ann".into()),
        ..claims("user-1", "arena")
    };
    let (_ann, ann_id, members) = join_with(&server, "arena", sign(&ann)).await;
    assert_eq!(members[0].name, "Ann", "the ticket's name, not join.name");

    // `join.token`, the field v1 reserved, carries a ticket just as well; name defaults to sub.
    let mut bob = Client::connect(&server, Codec::Json).await;
    let ticket = sign(&claims("user-2", "arena"));
    bob.send_raw_json(&format!(
        r#"{{"t":"join","lobby":"arena","name":"x","token":"{ticket}"}}"#
    ))
    .await;
    match bob.recv().await {
        ServerMessage::Welcome { members, .. } => {
            let names: Vec<_> = members.iter().map(|m| (m.id, m.name.as_str())).collect();
            assert!(names.contains(&(ann_id, "Ann")) && names.iter().any(|(_, n)| *n == "user-2"));
        }
        other => panic!("expected welcome, got {other:?}"),
    }

    // A spectator's ticket never makes a player; a player may choose to watch.
    let watcher = TicketClaims {
        role: Some(Role::Spectator),
        ..claims("user-3", "arena")
    };
    let (mut refused, answer) = try_join(
        &server,
        &join("arena", Some(sign(&watcher)), Some(Role::Player)),
    )
    .await;
    assert!(
        matches!(
            answer,
            ServerMessage::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{answer:?}"
    );
    refused
        .send(&join("arena", Some(sign(&watcher)), None))
        .await;
    match refused.recv().await {
        ServerMessage::Welcome {
            player_id, members, ..
        } => {
            let me = members.iter().find(|m| m.id == player_id).unwrap();
            assert_eq!(me.role, Role::Spectator);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let (_carl, carl_id, members) = match try_join(
        &server,
        &join(
            "arena",
            Some(sign(&claims("user-4", "arena"))),
            Some(Role::Spectator),
        ),
    )
    .await
    {
        (
            client,
            ServerMessage::Welcome {
                player_id, members, ..
            },
        ) => (client, player_id, members),
        (_, other) => panic!("expected welcome, got {other:?}"),
    };
    let carl = members.iter().find(|m| m.id == carl_id).unwrap();
    assert_eq!(carl.role, Role::Spectator, "a player ticket may watch");
}

#[tokio::test]
async fn a_second_connection_of_one_identity_takes_the_seat_over_unnoticed() {
    let server = spawn_server(hs256_config()).await;
    let ticket = || sign(&claims("user-1", "arena"));
    let (mut first, ann_id, _) = join_with(&server, "arena", ticket()).await;
    let (mut bob, bob_id, _) = join_with(&server, "arena", sign(&claims("user-2", "arena"))).await;
    first.send_state(1, b"where ann was").await;
    bob.recv_until(|m| match m {
        ServerMessage::Snapshot(s) => s.players.iter().any(|p| p.id == ann_id).then_some(()),
        _ => None,
    })
    .await;

    let (mut second, second_id, members) = join_with(&server, "arena", ticket()).await;
    assert_eq!(second_id, ann_id, "the same seat, the same player id");
    assert_eq!(members.len(), 2, "no extra member: {members:?}");
    assert_eq!(first.expect_close_code().await, close::REPLACED);
    // The replaced connection is gone (its leave reached the lobby) before the marker event.
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"replaced\"}", 1.0)
        .await;
    assert_eq!(
        server.metric("tickrelay_seats_replaced_total").await,
        Some(1.0)
    );

    // The new connection starts with a keyframe that still holds the seat's state.
    let keyframe = second.next_snapshot().await;
    assert!(keyframe.keyframe);
    assert_eq!(
        keyframe
            .players
            .iter()
            .find(|p| p.id == ann_id)
            .map(|p| p.seq),
        Some(1)
    );

    // Bob saw neither a leave nor a join for the seat, up to an event sent after the takeover.
    second
        .send(&ClientMessage::Event {
            data: payload(b"marker"),
        })
        .await;
    bob.recv_until(|m| match m {
        ServerMessage::MemberLeft { id, .. } | ServerMessage::MemberJoined { id, .. } => {
            panic!("bob saw member {id} leave or join (he is {bob_id})")
        }
        ServerMessage::Event { from, .. } => (from == ann_id).then_some(()),
        _ => None,
    })
    .await;
    // And the seat works: the new connection's states reach bob.
    second.send_state(2, b"back").await;
    bob.recv_until(|m| match m {
        ServerMessage::Snapshot(s) => s
            .players
            .iter()
            .any(|p| p.id == ann_id && p.seq == 2)
            .then_some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn a_takeover_in_another_role_never_leaves_the_identity_without_a_seat() {
    let server = spawn_server(Config {
        max_spectators: 1,
        ..hs256_config()
    })
    .await;
    let watcher = |sub: &str| {
        sign(&TicketClaims {
            role: Some(Role::Spectator),
            ..claims(sub, "arena")
        })
    };
    let (mut ann, ann_id, _) = join_with(&server, "arena", sign(&claims("user-1", "arena"))).await;
    let (mut eve, eve_id, _) = join_with(&server, "arena", watcher("user-9")).await;
    // Ann asks to watch, but the spectator seats are full: refused, her player seat stays.
    let (_, answer) = try_join(&server, &join("arena", Some(watcher("user-1")), None)).await;
    assert!(
        matches!(
            answer,
            ServerMessage::Error {
                code: ErrorCode::LobbyFull,
                ..
            }
        ),
        "{answer:?}"
    );
    ann.send_state(1, b"still playing").await;
    ann.recv_until(|m| match m {
        ServerMessage::Snapshot(s) => s.players.iter().any(|p| p.id == ann_id).then_some(()),
        _ => None,
    })
    .await;
    // With room, the player seat leaves (the others see it) and a spectator seat is taken.
    let (mut bob, _, _) = join_with(&server, "arena", sign(&claims("user-2", "arena"))).await;
    eve.send(&ClientMessage::Leave).await;
    bob.recv_until(|m| match m {
        ServerMessage::MemberLeft { id, .. } => (id == eve_id).then_some(()),
        _ => None,
    })
    .await;
    let (_watching, watching_id, members) = join_with(&server, "arena", watcher("user-1")).await;
    assert_eq!(ann.expect_close_code().await, close::REPLACED);
    let me = members.iter().find(|m| m.id == watching_id).unwrap();
    assert_eq!(me.role, Role::Spectator);
    let changes: Vec<_> = [
        bob.recv_until(|m| match m {
            ServerMessage::MemberLeft { id, .. } => Some(("left", id)),
            ServerMessage::MemberJoined { id, .. } => Some(("joined", id)),
            _ => None,
        })
        .await,
        bob.recv_until(|m| match m {
            ServerMessage::MemberLeft { id, .. } => Some(("left", id)),
            ServerMessage::MemberJoined { id, .. } => Some(("joined", id)),
            _ => None,
        })
        .await,
    ]
    .into();
    assert_eq!(changes, [("left", ann_id), ("joined", watching_id)]);
}

#[tokio::test]
async fn spectators_watch_but_are_not_players_and_are_limited_separately() {
    let config = Config {
        max_spectators: 1,
        max_lobby_size: 1,
        ..test_config()
    };
    let server = spawn_server(config).await;
    let spectate = |name: &str| ClientMessage::Join {
        lobby: "arena".into(),
        name: name.into(),
        ticket: None,
        role: Some(Role::Spectator),
        resume: None,
        offset: None,
    };
    let (mut eve, welcome) = try_join(&server, &spectate("eve")).await;
    let ServerMessage::Welcome {
        player_id: eve_id,
        members,
        ..
    } = welcome
    else {
        panic!("expected welcome, got {welcome:?}");
    };
    assert_eq!(members[0].role, Role::Spectator);
    let (mut ann, ann_id, members) = Client::join(&server, Codec::Json, "arena", "ann").await;
    assert!(members.contains(&Member {
        id: eve_id,
        name: "eve".into(),
        role: Role::Spectator,
        away: false,
    }));
    let joined = eve
        .recv_until(|m| match m {
            ServerMessage::MemberJoined { id, role, .. } => Some((id, role)),
            _ => None,
        })
        .await;
    assert_eq!(joined, (ann_id, Role::Player));

    // The lobby's one player seat is taken; its one spectator seat too.
    let (_, full) = try_join(&server, &spectate("mallory")).await;
    assert!(
        matches!(
            full,
            ServerMessage::Error {
                code: ErrorCode::LobbyFull,
                ..
            }
        ),
        "{full:?}"
    );
    let mut carl = Client::connect(&server, Codec::MessagePack).await;
    carl.send_join("arena", "carl").await;
    assert!(matches!(
        carl.recv().await,
        ServerMessage::Error {
            code: ErrorCode::LobbyFull,
            ..
        }
    ));

    // A spectator may send neither states nor events; the connection stays.
    eve.send_state(1, b"I am not here").await;
    eve.send(&ClientMessage::Event {
        data: payload(b"nor this"),
    })
    .await;
    for _ in 0..2 {
        let code = eve
            .recv_until(|m| match m {
                ServerMessage::Error { code, .. } => Some(code),
                _ => None,
            })
            .await;
        assert_eq!(code, ErrorCode::Forbidden);
    }
    assert_eq!(
        server
            .metric("tickrelay_errors_sent_total{code=\"forbidden\"}")
            .await,
        Some(2.0)
    );
    // It receives what the players do, and never appears in a snapshot.
    ann.send_state(7, b"ann").await;
    for client in [&mut eve, &mut ann] {
        let snapshot = client
            .recv_until(|m| match m {
                ServerMessage::Snapshot(s) if s.players.iter().any(|p| p.seq == 7) => Some(s),
                _ => None,
            })
            .await;
        assert!(
            snapshot.players.iter().all(|p| p.id != eve_id),
            "{snapshot:?}"
        );
    }
    ann.send(&ClientMessage::Event {
        data: payload(b"hello"),
    })
    .await;
    let from = eve
        .recv_until(|m| match m {
            ServerMessage::Event { from, .. } => Some(from),
            _ => None,
        })
        .await;
    assert_eq!(from, ann_id);
}

#[tokio::test]
async fn joins_are_charged_to_the_rate_limit() {
    let config = Config {
        max_event_rate: 5,
        ..hs256_config()
    };
    let server = spawn_server(config).await;
    let mut client = Client::connect(&server, Codec::MessagePack).await;
    // Invalid joins keep the connection, so only the rate limit can end this loop.
    for _ in 0..20 {
        client
            .send(&ClientMessage::Join {
                lobby: String::new(),
                name: "x".into(),
                ticket: None,
                role: None,
                resume: None,
                offset: None,
            })
            .await;
    }
    assert_eq!(client.expect_close_code().await, close::RATE_LIMITED);
}

/// Runs `clients/js/tests/`-independent Python: PyJWT signs tickets the relay must accept.
/// Skipped without PyJWT, except under CI (`.ci/run` installs it), where it fails.
fn pyjwt_ticket(algorithm: &str, key: &Path, lobby: &str, sub: &str) -> Option<String> {
    let script = r#"
import sys, time, jwt
algorithm, key_file, lobby, sub = sys.argv[1:5]
key = open(key_file, "rb").read()
if algorithm == "HS256":
    key = key.decode().strip()
claims = {"sub": sub, "lobby": lobby, "exp": int(time.time()) + 60, "name": "py-" + sub}
print(jwt.encode(claims, key, algorithm=algorithm))
"#;
    with_pyjwt(script, &[algorithm, key.to_str().unwrap(), lobby, sub])
}

#[tokio::test]
async fn tickets_signed_by_pyjwt_are_accepted_hs256_and_eddsa() {
    let dir = std::env::temp_dir().join(format!("tickrelay-pyjwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let Some(hs) = pyjwt_ticket("HS256", &secret_file, "arena", "py-1") else {
        return;
    };
    let Some(ed) = pyjwt_ticket(
        "EdDSA",
        &keys_dir().join("ed25519-test.pem"),
        "arena",
        "py-2",
    ) else {
        return;
    };
    let hs_server = spawn_server(Config {
        ticket_secret: TicketSecret {
            ticket_secret: None,
            ticket_secret_file: Some(secret_file),
        },
        ..test_config()
    })
    .await;
    let ed_server = spawn_server(Config {
        ticket_public_key: Some(keys_dir().join("ed25519-test.pub.pem")),
        ..test_config()
    })
    .await;
    for (server, ticket, name, other) in [
        (&hs_server, &hs, "py-py-1", &ed),
        (&ed_server, &ed, "py-py-2", &hs),
    ] {
        let (_client, _, members) = join_with(server, "arena", ticket.clone()).await;
        assert_eq!(members[0].name, name);
        // Each server refuses the other's algorithm.
        let (_, refused) = try_join(server, &join("arena", Some(other.clone()), None)).await;
        assert!(
            matches!(
                refused,
                ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            ),
            "{refused:?}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_eddsa_server_refuses_an_hs256_ticket_made_with_its_public_key() {
    let public = keys_dir().join("ed25519-test.pub.pem");
    let server = spawn_server(Config {
        ticket_public_key: Some(public.clone()),
        ..test_config()
    })
    .await;
    // Key confusion: the public key is no secret; used as an HMAC key it must sign nothing.
    let forged = TicketSigner::hs256(&std::fs::read(&public).unwrap())
        .unwrap()
        .sign(&claims("mallory", "arena"));
    let (mut client, answer) = try_join(&server, &join("arena", Some(forged), None)).await;
    assert!(
        matches!(
            answer,
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(client.expect_close_code().await, close::UNAUTHORIZED);
    let series = "tickrelay_tickets_refused_total{reason=\"bad_algorithm\"}";
    assert_eq!(server.metric(series).await, Some(1.0));
}
