//! `POST /matchmake` and tickets in routing answers: a pool's lobbies fill up to the size
//! before new ones open, on one node and across a fleet under concurrent requests (one owner
//! per lobby); seats of players who never came or left open up again; with tickets on, only
//! a ticket for the lobby (or the pool) gets an answer, and the answer's ticket, naming the
//! lobby and the node, is verified by an independent JWT library (PyJWT) and admits its
//! holder where it points.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tickrelay_protocol::ticket::{TicketClaims, TicketSigner};
use tickrelay_protocol::{ClientMessage, Codec, Role, ServerMessage};
use tickrelay_server::Config;
use tickrelay_server::config::TicketSecret;
use tickrelay_testkit::RedisServer;

use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, http_get_with_headers, http_post_with_headers, spawn_server,
    test_config, wait_until, with_pyjwt,
};

const SECRET: &str = "tickrelay-test-secret-0123456789abcdef";

fn with_tickets(config: Config) -> Config {
    Config {
        ticket_secret: TicketSecret {
            ticket_secret: Some(SECRET.into()),
            ticket_secret_file: None,
        },
        ..config
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn ticket(sub: &str, lobby: &str, role: Option<Role>) -> String {
    TicketSigner::hs256(SECRET.as_bytes())
        .unwrap()
        .sign(&TicketClaims {
            sub: sub.into(),
            lobby: lobby.into(),
            exp: now_secs() + 120,
            nbf: None,
            name: None,
            role,
            node: None,
        })
}

/// `POST /matchmake{query}` on `node`, with `ticket` as bearer: status and answer (JSON, or
/// the text of a refusal as a JSON string).
async fn matchmake(
    node: SocketAddr,
    query: &str,
    ticket: Option<&str>,
) -> (u16, serde_json::Value) {
    let bearer = ticket.map(|ticket| format!("Bearer {ticket}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    let (status, _, body) =
        http_post_with_headers(node, &format!("/matchmake{query}"), &headers).await;
    let answer = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, answer)
}

fn lobby_of(answer: &serde_json::Value) -> String {
    answer["lobby"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_pools_lobbies_fill_up_to_the_size_and_seats_nobody_took_open_up_again() {
    const PROMISE: Duration = Duration::from_millis(500);
    let server = spawn_server(Config {
        matchmake_promise: PROMISE,
        ..test_config()
    })
    .await;
    let addr = server.addr;

    // Only POST, known parameters, a size the lobbies can hold.
    let (status, _, _) = http_get_with_headers(addr, "/matchmake?pool=duel", &[]).await;
    assert_eq!(status, 405);
    for (query, problem) in [
        ("", "missing parameter pool"),
        ("?pool=duel&size=0", "size must be 1 to"),
        ("?pool=duel&size=99999", "size must be 1 to"),
        ("?pool=duel&size=x", "size must be a number"),
        ("?pool=duel&colour=red", "unknown parameter"),
        ("?pool=duel&pool=other", "given twice"),
    ] {
        let (status, answer) = matchmake(addr, query, None).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            answer.as_str().unwrap().contains(problem),
            "{query}: {answer}"
        );
    }

    let mut placed = Vec::new();
    for _ in 0..7 {
        let (status, answer) = matchmake(addr, "?pool=duel&size=3", None).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["url"], server.ws_url());
        assert_eq!(answer["node"], serde_json::Value::Null, "one node");
        assert_eq!(answer["size"], 3);
        placed.push(answer);
    }
    let lobbies: Vec<String> = placed.iter().map(lobby_of).collect();
    assert_eq!(
        lobbies,
        [
            "duel-1", "duel-1", "duel-1", "duel-2", "duel-2", "duel-2", "duel-3"
        ]
    );
    let seats: Vec<u64> = placed
        .iter()
        .map(|a| a["seats"].as_u64().unwrap())
        .collect();
    assert_eq!(seats, [1, 2, 3, 1, 2, 3, 1]);
    assert_eq!(
        placed.iter().filter(|a| a["opened"] == true).count(),
        3,
        "each lobby opened once"
    );

    // Two of duel-1's three came; the others never did.
    let (_ann, _, _) = Client::join(&server, Codec::Json, "duel-1", "ann").await;
    let (_bob, _, members) = Client::join(&server, Codec::Json, "duel-1", "bob").await;
    assert_eq!(members.len(), 2);
    // Promises last PROMISE: past it only the players are counted, and duel-1, with one
    // seat free, is the fullest lobby with room (duel-2 and duel-3 never ran: forgotten).
    tokio::time::sleep(PROMISE + Duration::from_millis(100)).await;
    let (status, answer) = matchmake(addr, "?pool=duel&size=3", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (lobby_of(&answer).as_str(), answer["seats"].as_u64()),
        ("duel-1", Some(3))
    );
    let (_, answer) = matchmake(addr, "?pool=duel&size=3", None).await;
    assert_eq!(
        lobby_of(&answer),
        "duel-4",
        "duel-1 is full again: a new lobby opens"
    );
    assert_eq!(
        server
            .metric("tickrelay_matchmakes_total{outcome=\"opened\"}")
            .await,
        Some(4.0)
    );
    assert_eq!(
        server
            .metric("tickrelay_matchmakes_total{outcome=\"placed\"}")
            .await,
        Some(5.0)
    );
}

/// PyJWT's reading of an HS256 `token` (its claims), or `None` without PyJWT (outside CI).
fn pyjwt_claims(token: &str) -> Option<serde_json::Value> {
    let script = r#"
import json, sys, jwt
print(json.dumps(jwt.decode(sys.argv[1], sys.argv[2], algorithms=["HS256"])))
"#;
    with_pyjwt(script, &[token, SECRET]).map(|text| serde_json::from_str(&text).unwrap())
}

/// Connects to `node` and joins where `answer` (a `/matchmake` answer) says, with the ticket
/// it carries, as `sub`: welcomed.
async fn join_placed(node: &TestServer, answer: &serde_json::Value, sub: &str) -> Client {
    let mut client = Client::connect(node, Codec::Json).await;
    client
        .send(&ClientMessage::Join {
            lobby: lobby_of(answer),
            name: sub.to_owned(),
            ticket: Some(answer["ticket"].as_str().unwrap().to_owned()),
            role: None,
            resume: None,
            offset: None,
        })
        .await;
    assert!(
        matches!(client.recv().await, ServerMessage::Welcome { .. }),
        "{sub}"
    );
    client
}

#[tokio::test]
async fn with_tickets_only_a_ticket_for_the_lobby_is_answered_with_a_ticket_for_it() {
    let server = spawn_server(with_tickets(test_config())).await;
    let addr = server.addr;
    let route = |bearer: Option<String>| async move {
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|value| ("Authorization", value.as_str()))
            .collect();
        http_get_with_headers(addr, "/route?lobby=arena", &headers).await
    };
    // Routing needs no ticket, as without tickets; a ticket shown must be good.
    let (status, _, body) = route(None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("ticket"),
        "nothing shown, nothing minted: {body}"
    );
    let (status, _, body) = route(Some(format!("Bearer {}", ticket("ann", "other", None)))).await;
    assert_eq!(status, 403, "a ticket for another lobby: {body}");
    let (status, _, body) = route(Some("Bearer not.a.jwt".into())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        server
            .metric("tickrelay_tickets_refused_total{reason=\"wrong_lobby\"}")
            .await,
        Some(1.0)
    );

    let shown = ticket("ann", "arena", None);
    let (status, _, body) = route(Some(format!("bearer {shown}"))).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let minted = answer["ticket"].as_str().expect("a ticket in the answer");
    if let Some(claims) = pyjwt_claims(minted) {
        assert_eq!(claims["sub"], "ann");
        assert_eq!(claims["lobby"], "arena");
        assert_eq!(claims["name"], "ann");
        assert!(claims.get("node").is_none(), "one node: no node to name");
        assert!(claims["exp"].as_u64().unwrap() <= now_secs() + 61);
    }

    // Matchmaking needs a ticket for the pool; it gets a seat and a ticket for the lobby
    // chosen, which admits there.
    let bearer_less = http_post_with_headers(addr, "/matchmake?pool=ranked", &[]).await;
    assert_eq!(bearer_less.0, 401, "{}", bearer_less.2);
    assert!(
        bearer_less.1.contains("www-authenticate: bearer"),
        "{}",
        bearer_less.1
    );
    assert!(
        bearer_less.2.contains("requires a ticket"),
        "{}",
        bearer_less.2
    );
    let (status, answer) =
        matchmake(addr, "?pool=ranked", Some(&ticket("bob", "ranked", None))).await;
    assert_eq!(status, 200, "{answer}");
    let lobby = lobby_of(&answer);
    assert_eq!(lobby, "ranked-1");
    let minted = answer["ticket"].as_str().unwrap().to_owned();
    if let Some(claims) = pyjwt_claims(&minted) {
        assert_eq!(
            (claims["sub"].as_str(), claims["lobby"].as_str()),
            (Some("bob"), Some("ranked-1"))
        );
    }
    let mut bob = Client::connect(&server, Codec::Json).await;
    bob.send(&ClientMessage::Join {
        lobby: lobby.clone(),
        name: "ignored: the ticket names the player".into(),
        ticket: Some(minted),
        role: None,
        resume: None,
        offset: None,
    })
    .await;
    match bob.recv().await {
        ServerMessage::Welcome {
            lobby: joined,
            members,
            ..
        } => {
            assert_eq!(joined, lobby);
            assert_eq!(members[0].name, "bob");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let (status, answer) = matchmake(
        addr,
        "?pool=ranked",
        Some(&ticket("eve", "ranked", Some(Role::Spectator))),
    )
    .await;
    assert_eq!(status, 400, "spectators join by name: {answer}");
}

fn node_config(redis: &RedisServer, id: &str, promise: Duration) -> Config {
    with_tickets(Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        lease: Duration::from_secs(5),
        matchmake_promise: promise,
        resume_secret: Some("a fleet secret every node shares, 32 bytes or more".into()),
        ..test_config()
    })
}

/// Players in pool lobby `lobby` plus its live promises, as the pool in Redis counts them.
fn pool_count(redis: &RedisServer, lobby: &str) -> Option<u64> {
    redis::cmd("ZSCORE")
        .arg("tickrelay:pool:arena")
        .arg(lobby)
        .query(&mut redis.connection().unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_matchmaking_across_a_fleet_fills_each_lobby_once_on_one_node() {
    const PROMISE: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    let mut nodes: Vec<TestServer> = Vec::new();
    for id in ["m1", "m2", "m3"] {
        nodes.push(spawn_server(node_config(&redis, id, PROMISE)).await);
    }
    for node in &nodes {
        wait_until(WAIT_TIMEOUT, "every node registered", async || {
            let (status, body) = node.http_get("/cluster").await;
            status == 200 && body.contains("\"total\":3")
        })
        .await;
    }
    // 24 players at once, spread over the three nodes, for lobbies of 8.
    let asks = (0..24).map(|i| {
        let node = nodes[i % 3].addr;
        async move {
            let (status, answer) = matchmake(
                node,
                "?pool=arena&size=8",
                Some(&ticket(&format!("p{i}"), "arena", None)),
            )
            .await;
            assert_eq!(status, 200, "{answer}");
            (format!("p{i}"), answer)
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut by_lobby = std::collections::BTreeMap::<String, Vec<&serde_json::Value>>::new();
    for (_, answer) in &answers {
        by_lobby.entry(lobby_of(answer)).or_default().push(answer);
    }
    assert_eq!(
        by_lobby.keys().collect::<Vec<_>>(),
        ["arena-1", "arena-2", "arena-3"],
        "filled up before opening"
    );
    for (lobby, placed) in &by_lobby {
        assert_eq!(placed.len(), 8, "{lobby}");
        assert_eq!(
            placed.iter().filter(|a| a["opened"] == true).count(),
            1,
            "{lobby}"
        );
        let node = &placed[0]["node"];
        assert!(
            placed
                .iter()
                .all(|a| a["node"] == *node && a["url"] == placed[0]["url"]),
            "{lobby}: one owner in every answer"
        );
        assert_eq!(
            redis.owner_record(lobby).unwrap().split(' ').next(),
            node.as_str()
        );
    }

    // Everyone joins where told, with the ticket the answer carried.
    let mut players = Vec::new();
    for (sub, answer) in &answers {
        let url = answer["url"].as_str().unwrap();
        let node = nodes
            .iter()
            .find(|n| n.ws_url() == url)
            .expect("a node's URL");
        let client = join_placed(node, answer, sub).await;
        players.push((lobby_of(answer), client));
    }

    // Promises past, the owners' renewals count the players: three full lobbies, so a new
    // one opens.
    for lobby in by_lobby.keys() {
        wait_until(WAIT_TIMEOUT, "the owner counts its 8 players", async || {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool_count(&redis, lobby) == Some(8)
        })
        .await;
    }
    tokio::time::sleep(PROMISE).await;
    let (_, answer) = matchmake(
        nodes[1].addr,
        "?pool=arena&size=8",
        Some(&ticket("p24", "arena", None)),
    )
    .await;
    assert_eq!(lobby_of(&answer), "arena-4", "{answer}");

    // Three players of arena-2 leave: its owner corrects the count, and it is the fullest
    // lobby with room again.
    for _ in 0..3 {
        let at = players
            .iter()
            .position(|(lobby, _)| lobby == "arena-2")
            .unwrap();
        let (_, mut client) = players.swap_remove(at);
        client.send(&ClientMessage::Leave).await;
    }
    wait_until(
        WAIT_TIMEOUT,
        "the owner counts 5 players in arena-2",
        async || {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool_count(&redis, "arena-2") == Some(5)
        },
    )
    .await;
    let (_, answer) = matchmake(
        nodes[2].addr,
        "?pool=arena&size=8",
        Some(&ticket("p25", "arena", None)),
    )
    .await;
    assert_eq!(
        (lobby_of(&answer).as_str(), answer["seats"].as_u64()),
        ("arena-2", Some(6))
    );
    drop(players);
}

/// The seats a running lobby's owner last reported to Redis (its progress).
fn reported_seats(redis: &RedisServer, lobby: &str) -> Option<u64> {
    let progress: Option<String> = redis::cmd("GET")
        .arg(format!("tickrelay:progress:{lobby}"))
        .query(&mut redis.connection().unwrap())
        .unwrap();
    progress?.split(' ').nth(4)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_arriving_one_by_one_fill_each_lobby_to_the_size() {
    let redis = RedisServer::start();
    let node = spawn_server(node_config(&redis, "solo", Duration::from_secs(30))).await;
    let mut players = Vec::new();
    let mut lobbies = Vec::new();
    for i in 0..5 {
        let sub = format!("one-{i}");
        let (status, answer) = matchmake(
            node.addr,
            "?pool=arena&size=3",
            Some(&ticket(&sub, "arena", None)),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let lobby = lobby_of(&answer);
        let client = join_placed(&node, &answer, &sub).await;
        // The owner has counted the player (a renewal) before the next one asks: a joined
        // player must not count twice (as a player, and by the promise it came with).
        let seated = players.iter().filter(|(l, _)| *l == lobby).count() as u64 + 1;
        wait_until(
            WAIT_TIMEOUT,
            "the owner reports the new player",
            async || {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reported_seats(&redis, &lobby) == Some(seated)
            },
        )
        .await;
        lobbies.push(lobby.clone());
        players.push((lobby, client));
    }
    assert_eq!(
        lobbies,
        ["arena-1", "arena-1", "arena-1", "arena-2", "arena-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lobby_that_empties_and_is_joined_again_at_once_is_never_refused() {
    // Each pass empties the lobby (its lease becomes unused) and joins it again at once:
    // passes that meet a renewal giving the unused lease up must wait for it, not be told
    // the lobby is still leased to this node.
    let redis = RedisServer::start();
    let node = spawn_server(Config {
        redis: Some(redis.url()),
        node_id: Some("again".into()),
        ..test_config()
    })
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut passes = 0;
    while std::time::Instant::now() < until {
        let mut client = Client::connect(&node, Codec::Json).await;
        client.send_join("again", "p").await;
        match client.recv().await {
            ServerMessage::Welcome { .. } => {}
            other => panic!("pass {passes}: expected welcome, got {other:?}"),
        }
        client.send(&ClientMessage::Leave).await;
        let _ = client.expect_close_code().await;
        passes += 1;
    }
    assert!(passes > 10, "{passes}");
}
