//! Fleet mode: server nodes on loopback sharing one real `redis-server` (started by the tests
//! on a free port; CI installs Debian's package), in this process or as processes of the
//! binary where signals are needed. Routing from any node, one owner per lobby under
//! concurrent creates, `wrong_node`, `/cluster`, a node cut off from Redis stopping its
//! lobbies before anyone else may take them, a Redis restart, `kill -9` of a node, a node
//! paused (SIGSTOP) past its lease never ticking a lobby another node runs, and drains
//! (`POST /drain`, SIGTERM) moving live lobbies with their seats, ids and history.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tickrelay_protocol::{Codec, ErrorCode, ServerMessage, close};
use tickrelay_server::Config;
use tickrelay_testkit::{FaultProxy, Link, RedisServer};

use crate::process::{ServerProcess, Stderr};
use crate::resume::{Seat, answer as resume_answer, event, events_until, join_message};
use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, http_get, http_post, metric_at, spawn_server, test_config,
    wait_until,
};

/// The resume secret every node of a fleet shares, so a seat's token verifies anywhere.
const FLEET_SECRET: &str = "a fleet secret every node shares, 32 bytes or more";

fn node_config(redis: &str, id: &str) -> Config {
    Config {
        redis: Some(redis.to_owned()),
        node_id: Some(id.to_owned()),
        // Long enough that this slow, shared box never lapses one by accident; the tests
        // about lapses set their own.
        lease: Duration::from_secs(5),
        resume_secret: Some(FLEET_SECRET.into()),
        ..test_config()
    }
}

async fn fleet(redis: &RedisServer) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(spawn_server(node_config(&redis.url(), id)).await);
    }
    for node in &nodes {
        wait_until(WAIT_TIMEOUT, "every node registered", async || {
            let (status, page) = cluster(node).await;
            status == 200 && page["total"] == serde_json::json!(3)
        })
        .await;
    }
    nodes
}

async fn cluster(node: &TestServer) -> (u16, serde_json::Value) {
    let (status, body) = node.http_get("/cluster").await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// `GET /route?lobby=NAME` on `node`: the status and the answer.
async fn route(node: SocketAddr, lobby: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(node, &format!("/route?lobby={lobby}"), &[]).await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The node whose WebSocket URL is `url`.
fn node_at<'a>(nodes: &'a [TestServer], url: &str) -> &'a TestServer {
    nodes
        .iter()
        .find(|node| node.ws_url() == url)
        .unwrap_or_else(|| panic!("no node serves {url}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_routes_to_the_owner_and_other_nodes_answer_wrong_node() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let (status, first) = route(nodes[0].addr, "arena").await;
    assert_eq!(status, 200, "{first}");
    let url = first["url"].as_str().unwrap().to_owned();
    for node in &nodes {
        assert_eq!(route(node.addr, "arena").await.1, first);
    }
    let owner = node_at(&nodes, &url);
    let (mut player, _, _) = Client::join(owner, Codec::Json, "arena", "ann").await;
    player.next_snapshot().await;

    for other in nodes.iter().filter(|node| node.addr != owner.addr) {
        let mut lost = Client::connect(other, Codec::MessagePack).await;
        lost.send_join("arena", "bob").await;
        match lost.recv().await {
            ServerMessage::Error {
                code: ErrorCode::WrongNode,
                url: Some(to),
                ..
            } => assert_eq!(to, url),
            other => panic!("expected wrong_node, got {other:?}"),
        }
        assert_eq!(
            metric_at(
                other.addr,
                "tickrelay_errors_sent_total{code=\"wrong_node\"}"
            )
            .await,
            Some(1.0)
        );
        // The connection stays, unjoined: a new lobby joined here directly is created here.
        let lobby = format!("direct-{}", other.addr.port());
        lost.join_lobby(&lobby, "bob").await;
        let (_, here) = route(owner.addr, &lobby).await;
        assert_eq!(here["url"], serde_json::json!(other.ws_url()));
        assert!(!other.http_get("/lobbies").await.1.contains("\"arena\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_goes_where_the_lobby_runs_and_never_leases_a_lobby_that_runs_nowhere() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let (status, answer) = route(nodes[0].addr, "seated").await;
    assert_eq!(status, 200);
    let owner = node_at(&nodes, answer["url"].as_str().unwrap());
    let other = nodes.iter().find(|node| node.addr != owner.addr).unwrap();
    let mut ann = Client::connect(owner, Codec::MessagePack).await;
    ann.send(&join_message("seated", "ann", None)).await;
    let seat = resume_answer(&mut ann).await.expect("welcome");

    // The seat's token shown to another node: sent to the owner, not refused.
    let mut elsewhere = Client::connect(other, Codec::MessagePack).await;
    elsewhere
        .send(&join_message("seated", "ann", Some((&seat, seat.offset))))
        .await;
    match elsewhere.recv().await {
        ServerMessage::Error {
            code: ErrorCode::WrongNode,
            url: Some(url),
            ..
        } => assert_eq!(url, owner.ws_url()),
        other => panic!("expected wrong_node, got {other:?}"),
    }
    // A resume of a lobby that runs nowhere is refused as on one node, and leases nothing.
    let mut stray = Client::connect(other, Codec::MessagePack).await;
    stray
        .send(&join_message("nowhere", "ann", Some((&seat, 0))))
        .await;
    assert_eq!(
        resume_answer(&mut stray).await.unwrap_err(),
        ErrorCode::SeatExpired
    );
    assert_eq!(redis.owner_record("nowhere"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_lobby_give_one_owner_and_new_lobbies_spread() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let addrs: Vec<_> = nodes.iter().map(|node| node.addr).collect();
    let routes =
        futures_util::future::join_all((0..30).map(|i| route(addrs[i % addrs.len()], "rush")))
            .await;
    let first = &routes[0];
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(routes.iter().all(|answer| answer == first), "{routes:?}");
    // Joins racing on the owner itself share one lobby and one lease.
    let owner = node_at(&nodes, first.1["url"].as_str().unwrap());
    let names: Vec<_> = (0..8).map(|i| format!("p{i}")).collect();
    let joins = futures_util::future::join_all(
        names
            .iter()
            .map(|name| Client::join(owner, Codec::MessagePack, "rush", name)),
    )
    .await;
    let record = redis.owner_record("rush").expect("the lobby is leased");
    assert!(record.starts_with(&format!("{} ", first.1["node"].as_str().unwrap())));
    assert!(
        !record.contains(" p"),
        "claimed, no longer only placed: {record}"
    );
    let (_, lobbies) = owner.http_get("/lobbies").await;
    assert!(lobbies.contains("\"rush\""), "{lobbies}");
    assert_eq!(
        owner
            .metric("tickrelay_fleet_leases_total{event=\"acquired\"}")
            .await,
        Some(1.0),
        "eight joins, one claim"
    );
    drop(joins);

    // New lobbies go to the least-loaded node: a burst of them lands on more than one.
    let mut owners = std::collections::HashSet::new();
    for i in 0..9 {
        let (status, answer) = route(addrs[0], &format!("spread-{i}")).await;
        assert_eq!(status, 200);
        owners.insert(answer["node"].as_str().unwrap().to_owned());
    }
    assert_eq!(owners.len(), 3, "{owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_joins_on_every_node_for_one_new_lobby_leave_one_owner() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    // No route first: each join claims on the node it reached.
    let attempts = futures_util::future::join_all((0..12).map(|i| {
        let node = &nodes[i % nodes.len()];
        async move {
            let mut client = Client::connect(node, Codec::MessagePack).await;
            client
                .send(&join_message("melee", &format!("p{i}"), None))
                .await;
            let answer = client.recv().await;
            (node.ws_url(), answer, client)
        }
    }))
    .await;
    let mut owners = std::collections::HashSet::new();
    for (at, answer, _) in &attempts {
        match answer {
            ServerMessage::Welcome { .. } => owners.insert(at.clone()),
            ServerMessage::Error {
                code: ErrorCode::WrongNode,
                url: Some(url),
                ..
            } => owners.insert(url.clone()),
            other => panic!("expected welcome or wrong_node, got {other:?}"),
        };
    }
    assert_eq!(owners.len(), 1, "{owners:?}");
    let owner = node_at(&nodes, owners.iter().next().unwrap());
    let welcomed = attempts
        .iter()
        .filter(|(_, answer, _)| matches!(answer, ServerMessage::Welcome { .. }))
        .count();
    assert_eq!(welcomed, 4, "every join on the owner got in");
    let id = ["n1", "n2", "n3"][nodes.iter().position(|n| n.addr == owner.addr).unwrap()];
    assert!(
        redis
            .owner_record("melee")
            .unwrap()
            .starts_with(&format!("{id} "))
    );
    for node in nodes.iter().filter(|node| node.addr != owner.addr) {
        assert!(!node.http_get("/lobbies").await.1.contains("\"melee\""));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lobby_that_empties_gives_its_lease_up_and_comes_back_under_a_new_one() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let node = &nodes[1];
    for round in 0..3 {
        let (mut ann, _, _) = Client::join(node, Codec::Json, "revolving", "ann").await;
        ann.next_snapshot().await;
        let record = redis
            .owner_record("revolving")
            .expect("leased while it runs");
        assert!(record.starts_with("n2 "), "{record}");
        ann.send(&tickrelay_protocol::ClientMessage::Leave).await;
        ann.expect_close().await;
        wait_until(WAIT_TIMEOUT, "the lease given up", async || {
            redis.owner_record("revolving").is_none()
        })
        .await;
        assert_eq!(
            node.metric("tickrelay_fleet_leases_total{event=\"released\"}")
                .await,
            Some(f64::from(round + 1))
        );
    }
    assert_eq!(
        node.metric("tickrelay_fleet_leases_total{event=\"acquired\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lists_live_nodes_with_their_load_a_page_at_a_time() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let (_, answer) = route(nodes[0].addr, "counted").await;
    let owner = node_at(&nodes, answer["url"].as_str().unwrap());
    let (_player, _, _) = Client::join(owner, Codec::Json, "counted", "ann").await;
    let owner_id = answer["node"].as_str().unwrap().to_owned();
    wait_until(
        WAIT_TIMEOUT,
        "the owner's heartbeat counts the lobby",
        async || {
            cluster(&nodes[2]).await.1["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| {
                    n["id"] == serde_json::json!(owner_id)
                        && n["lobbies"] == 1
                        && n["connections"] == 1
                })
        },
    )
    .await;
    let (status, page) = cluster(&nodes[0]).await;
    assert_eq!(status, 200);
    let urls: Vec<_> = page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["url"].as_str().unwrap().to_owned())
        .collect();
    for node in &nodes {
        assert!(urls.contains(&node.ws_url()), "{urls:?}");
    }
    let (_, first) = nodes[0].http_get("/cluster?limit=2").await;
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_offset"], 2);
    let (_, rest) = nodes[0].http_get("/cluster?offset=2&limit=2").await;
    let rest: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_offset"], serde_json::Value::Null);
    assert_eq!(nodes[0].http_get("/cluster?limit=x").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_stops_its_lobby_before_another_node_can_take_it() {
    let redis = RedisServer::start();
    // n1 reaches Redis through a proxy the test can black-hole; n2 directly.
    let proxy = FaultProxy::start(redis.addr()).await.unwrap();
    // A longer lease than the others': the margin between the node stopping the lobby and
    // Redis expiring its key (a fifth of it) must outlast this slow box's scheduling.
    let lease = Duration::from_secs(3);
    let cut = spawn_server(Config {
        lease,
        ..node_config(&format!("redis://{}", proxy.addr), "cut")
    })
    .await;
    let peer = spawn_server(Config {
        lease,
        ..node_config(&redis.url(), "peer")
    })
    .await;
    let (mut player, _, _) = Client::join(&cut, Codec::MessagePack, "island", "ann").await;
    player.next_snapshot().await;
    assert!(redis.owner_record("island").unwrap().starts_with("cut "));
    wait_until(WAIT_TIMEOUT, "a renewal went through", async || {
        metric_at(cut.addr, "tickrelay_fleet_lease_renewals_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;

    proxy.set(Link::BlackHole);
    let cut_at = Instant::now();
    // The node stops the lobby on its own clock, a margin before Redis can expire the key.
    let code = tokio::time::timeout(lease * 2, player.expect_close_code())
        .await
        .expect("the cut-off node stops the lobby within its lease");
    assert_eq!(code, close::LEASE_LOST);
    let stopped = cut_at.elapsed();
    assert!(stopped < lease, "stopped after {stopped:?}");
    assert!(
        redis
            .owner_record("island")
            .is_some_and(|r| r.starts_with("cut ")),
        "the key outlives the lobby's run on the cut-off node"
    );
    assert_eq!(
        metric_at(cut.addr, "tickrelay_fleet_leases_total{event=\"expired\"}").await,
        Some(1.0)
    );
    assert!(!cut.http_get("/lobbies").await.1.contains("\"island\""));

    // Once Redis lets the lease go, the peer takes the lobby, and the cut-off node is not
    // offered (its registration expired too).
    wait_until(
        WAIT_TIMEOUT,
        "the lobby is routed to the peer",
        async || {
            let (status, answer) = route(peer.addr, "island").await;
            status == 200 && answer["url"] == serde_json::json!(peer.ws_url())
        },
    )
    .await;
    let (mut back, _, _) = Client::join(&peer, Codec::MessagePack, "island", "ann").await;
    back.next_snapshot().await;
    assert!(redis.owner_record("island").unwrap().starts_with("peer "));

    // Healed, the cut-off node refuses to run it again: the lobby is the peer's.
    proxy.set(Link::CLEAR);
    let mut late = Client::connect(&cut, Codec::MessagePack).await;
    wait_until(WAIT_TIMEOUT, "the cut-off node answers wrong_node", async || {
        late.send_join("island", "cy").await;
        matches!(
            late.recv().await,
            ServerMessage::Error { code: ErrorCode::WrongNode, url: Some(ref url), .. } if *url == peer.ws_url()
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_new_lobbies_keeps_leased_ones_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let node = spawn_server(Config {
        lease: Duration::from_secs(6),
        ..node_config(&redis.url(), "solo")
    })
    .await;
    let (mut player, _, _) = Client::join(&node, Codec::Json, "steady", "ann").await;
    player.next_snapshot().await;

    redis.stop();
    let (status, body) = node.http_get("/route?lobby=fresh").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("\"overloaded\"") && body.contains("retry_after_ms"),
        "{body}"
    );
    let mut newcomer = Client::connect(&node, Codec::Json).await;
    newcomer.send_join("fresh", "bob").await;
    match newcomer.recv().await {
        ServerMessage::Error {
            code: ErrorCode::Overloaded,
            retry_after_ms: Some(wait),
            ..
        } => assert!(wait >= 1000),
        other => panic!("expected overloaded, got {other:?}"),
    }
    // Within its lease the running lobby does not notice.
    let before = player.next_snapshot().await.tick;
    let after = player.next_snapshot().await.tick;
    assert_eq!(after, before + 1);

    // Back without its data: the node writes its lease back, routes and creates again.
    redis.restart();
    wait_until(WAIT_TIMEOUT, "the lease is written back", async || {
        redis
            .owner_record("steady")
            .is_some_and(|r| r.starts_with("solo "))
    })
    .await;
    // The fence counter moved past the written-back record's, so no new grant repeats it.
    let written_back: u64 = redis.owner_record("steady").unwrap()[5..].parse().unwrap();
    let counter: u64 = redis::cmd("GET")
        .arg("tickrelay:fence")
        .query::<Option<u64>>(&mut redis.connection().unwrap())
        .unwrap()
        .unwrap_or(0);
    assert!(
        counter >= written_back,
        "fence {counter} behind {written_back}"
    );
    wait_until(WAIT_TIMEOUT, "routing works again", async || {
        route(node.addr, "fresh").await.0 == 200
    })
    .await;
    newcomer.join_lobby("fresh", "bob").await;
    let snapshot = player.next_snapshot().await;
    assert!(snapshot.tick > after, "the lobby kept ticking");
}

/// Three nodes as processes of the server binary, for signals (`kill -9`, SIGSTOP).
struct ProcessFleet {
    nodes: Vec<(ServerProcess, SocketAddr)>,
}

impl ProcessFleet {
    async fn start(redis: &RedisServer, lease: &str, count: usize) -> Self {
        let mut nodes = Vec::new();
        for i in 0..count {
            let id = format!("p{i}");
            let mut node = ServerProcess::start(
                &[
                    "--redis",
                    &redis.url(),
                    "--node-id",
                    &id,
                    "--lease",
                    lease,
                    "--resume-secret",
                    FLEET_SECRET,
                ],
                "info",
                Stderr::Collect,
            );
            let addr = node.wait_listening().await;
            nodes.push((node, addr));
        }
        let first = nodes[0].1;
        wait_until(WAIT_TIMEOUT, "every node registered", async || {
            let (status, body) = http_get(first, "/cluster", &[]).await;
            status == 200
                && serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["total"]
                    == serde_json::json!(count)
        })
        .await;
        Self { nodes }
    }

    fn addr_of(&self, url: &str) -> SocketAddr {
        self.nodes
            .iter()
            .map(|(_, addr)| *addr)
            .find(|addr| format!("ws://{addr}/ws") == url)
            .unwrap_or_else(|| panic!("no node serves {url}"))
    }

    fn index_of(&self, addr: SocketAddr) -> usize {
        self.nodes.iter().position(|(_, a)| *a == addr).unwrap()
    }

    fn signal(&self, index: usize, signal: &str) {
        let pid = self.nodes[index].0.pid().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }
}

/// The lobby's route, once a node answers it (200).
async fn routed(node: SocketAddr, lobby: &str) -> String {
    let mut url = String::new();
    wait_until(WAIT_TIMEOUT, "a route", async || {
        let (status, answer) = route(node, lobby).await;
        url = answer["url"].as_str().unwrap_or_default().to_owned();
        status == 200
    })
    .await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_lobbies_come_back_on_a_survivor_within_the_lease_with_the_same_ids() {
    let redis = RedisServer::start();
    let mut fleet = ProcessFleet::start(&redis, "2s", 3).await;
    let owner = fleet.addr_of(&routed(fleet.nodes[0].1, "doomed").await);
    let mut ann = Client::connect_to(owner, Codec::MessagePack).await;
    ann.send(&join_message("doomed", "ann", None)).await;
    let ann_seat = resume_answer(&mut ann).await.expect("welcome");
    let mut bob = Client::connect_to(owner, Codec::Json).await;
    bob.send(&join_message("doomed", "bob", None)).await;
    let bob_seat = resume_answer(&mut bob).await.expect("welcome");
    event(&mut bob, b"one").await;
    event(&mut bob, b"two").await;
    let seen = events_until(&mut ann, b"two").await;
    let last_offset = seen.last().unwrap().1;
    let last_tick = ann.next_snapshot().await.tick;
    // The owner's renewals keep where the lobby is (about once a second).
    wait_until(WAIT_TIMEOUT, "the lobby's progress in redis", async || {
        let progress: Option<String> = redis::cmd("GET")
            .arg("tickrelay:progress:doomed")
            .query(&mut redis.connection().unwrap())
            .unwrap();
        progress.is_some_and(|p| p.split(' ').nth(2) == Some(&last_offset.to_string()))
    })
    .await;

    let index = fleet.index_of(owner);
    let (mut dead, _) = fleet.nodes.remove(index);
    dead.kill();
    let killed_at = Instant::now();
    let survivor = fleet.nodes[0].1;
    let dead_url = format!("ws://{owner}/ws");
    // Until its registration lapses (two heartbeats) the dead node is still named; then, until
    // its lease runs out, the route says to wait (503); then a survivor owns the lobby.
    let mut moved_to = String::new();
    wait_until(WAIT_TIMEOUT, "the lobby routed to a survivor", async || {
        let (status, answer) = route(survivor, "doomed").await;
        if status == 503 {
            assert!(
                answer["retry_after_ms"].as_u64().unwrap() >= 1000,
                "{answer}"
            );
        }
        moved_to = answer["url"].as_str().unwrap_or_default().to_owned();
        status == 200 && moved_to != dead_url
    })
    .await;
    let took = killed_at.elapsed();
    // The bound: the lease (2 s) from the last renewal, plus this slow box's polling.
    assert!(took < Duration::from_secs(4), "moved after {took:?}");
    let new_owner = fleet.addr_of(&moved_to);

    // A newcomer is first: the lobby is rebuilt for it, and it gets an id no seat of the dead
    // node's lobby had. It leaves at once, and the empty lobby waits for its players anyway.
    let mut carl = Client::connect_to(new_owner, Codec::MessagePack).await;
    carl.send(&join_message("doomed", "carl", None)).await;
    let carl_seat = resume_answer(&mut carl).await.expect("welcome");
    assert!(carl_seat.id > bob_seat.id.max(ann_seat.id));
    carl.send(&tickrelay_protocol::ClientMessage::Leave).await;
    assert_eq!(carl.expect_close_code().await, close::NORMAL);
    // The empty rebuilt lobby stays for its players: it keeps ticking.
    let ticks = metric_at(new_owner, "tickrelay_ticks_total")
        .await
        .unwrap_or(0.0);
    crate::support::wait_metric_at(new_owner, "tickrelay_ticks_total", ticks + 5.0).await;

    // Ann resumes there with her token, having seen nothing since her welcome: the same
    // player id, and everything the dead node's history held counted as lost.
    let mut ann = Client::connect_to(new_owner, Codec::MessagePack).await;
    ann.send(&join_message(
        "doomed",
        "ann",
        Some((&ann_seat, ann_seat.offset)),
    ))
    .await;
    let back = resume_answer(&mut ann).await.expect("ann's seat rebuilt");
    assert_eq!(back.id, ann_seat.id);
    assert!(back.resumed);
    assert_eq!(back.lost, last_offset - ann_seat.offset);
    let snapshot = ann.next_snapshot().await;
    assert!(
        snapshot.tick > last_tick,
        "the tick count goes on: {snapshot:?}"
    );
    // Bob, who saw everything, loses nothing; Ann sees him join the rebuilt lobby.
    let mut bob = Client::connect_to(new_owner, Codec::Json).await;
    bob.send(&join_message(
        "doomed",
        "bob",
        Some((&bob_seat, last_offset)),
    ))
    .await;
    let back = resume_answer(&mut bob).await.expect("bob's seat rebuilt");
    assert_eq!((back.id, back.resumed, back.lost), (bob_seat.id, true, 0));
    match crate::resume::next_member_change(&mut ann).await {
        ServerMessage::MemberJoined { id, name, .. } => {
            assert_eq!((id, name.as_str()), (bob_seat.id, "bob"));
        }
        other => panic!("expected bob's member_joined, got {other:?}"),
    }
    // A used token is refused: the rebuilt lobby seats each player once.
    let mut again = Client::connect_to(new_owner, Codec::MessagePack).await;
    again
        .send(&join_message("doomed", "ann", Some((&ann_seat, 0))))
        .await;
    assert_eq!(
        resume_answer(&mut again).await.err(),
        Some(ErrorCode::SeatExpired)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_never_ticks_a_lobby_another_node_runs() {
    let redis = RedisServer::start();
    let fleet = ProcessFleet::start(&redis, "1500ms", 2).await;
    let first = fleet.addr_of(&routed(fleet.nodes[0].1, "contested").await);
    let paused = fleet.index_of(first);
    let other = fleet.nodes[1 - paused].1;
    // Each node's ticks of the lobby, as its members see them: `server_time_us` of every
    // snapshot is the wall clock of the tick that made it (one clock: one box).
    let (mut on_paused, _, _) =
        Client::join_at(first, Codec::MessagePack, "contested", "ann").await;
    let mut paused_ticks = vec![on_paused.next_snapshot().await.server_time_us];

    fleet.signal(paused, "-STOP");
    wait_until(
        WAIT_TIMEOUT,
        "the lobby routed to the other node",
        async || {
            let (status, answer) = route(other, "contested").await;
            status == 200 && answer["url"] == serde_json::json!(format!("ws://{other}/ws"))
        },
    )
    .await;
    let (mut on_other, _, _) = Client::join_at(other, Codec::MessagePack, "contested", "bob").await;
    let mut other_ticks = Vec::new();
    for _ in 0..5 {
        other_ticks.push(on_other.next_snapshot().await.server_time_us);
    }

    // Woken, the paused node finds its lease gone before it ticks again: it closes its member
    // (4007) and every snapshot it ever sent is older than the other node's first.
    fleet.signal(paused, "-CONT");
    let closed = tokio::time::timeout(WAIT_TIMEOUT, async {
        loop {
            match on_paused.recv_or_close().await {
                Ok(ServerMessage::Snapshot(snapshot)) => {
                    paused_ticks.push(snapshot.server_time_us);
                }
                Ok(_) => {}
                Err(code) => return code,
            }
        }
    })
    .await
    .expect("the woken node closes its member");
    assert_eq!(closed, Some(close::LEASE_LOST));
    for _ in 0..5 {
        other_ticks.push(on_other.next_snapshot().await.server_time_us);
    }
    let last_paused = paused_ticks.iter().max().unwrap();
    let first_other = other_ticks.iter().min().unwrap();
    assert!(
        last_paused < first_other,
        "the paused node ticked at {last_paused} µs, after the other node's first tick at {first_other} µs"
    );
    // The other node kept ticking throughout.
    assert!(other_ticks.windows(2).all(|pair| pair[0] < pair[1]));
}

/// Joins `lobby` on `node` afresh: the client and its seat.
async fn seated(node: &TestServer, codec: Codec, lobby: &str, name: &str) -> (Client, Seat) {
    let mut client = Client::connect(node, codec).await;
    client.send(&join_message(lobby, name, None)).await;
    let seat = resume_answer(&mut client).await.expect("welcome");
    (client, seat)
}

/// What a drained lobby's member is told: the `redirect` (URL and resume token), then close
/// 4008. Snapshots before it are skipped; the last one's tick is returned too.
async fn redirected(client: &mut Client) -> (String, String, u64) {
    let mut last_tick = 0;
    let (url, token) = loop {
        match client.recv_or_close().await {
            Ok(ServerMessage::Snapshot(snapshot)) => last_tick = snapshot.tick,
            Ok(ServerMessage::Redirect { url, resume }) => {
                break (url, resume.expect("a resume token in the redirect"));
            }
            Ok(_) => {}
            Err(code) => panic!("closed ({code:?}) without a redirect"),
        }
    };
    assert_eq!(client.expect_close_code().await, close::MOVED);
    (url, token, last_tick)
}

/// Takes `seat` back on the node at `url` with `token`, having received up to `offset`.
async fn resume_at(
    nodes: &[TestServer],
    url: &str,
    seat: &Seat,
    token: String,
    offset: u64,
    codec: Codec,
) -> (Client, Seat) {
    let mut client = Client::connect(node_at(nodes, url), codec).await;
    let seat = Seat {
        token,
        ..seat.clone()
    };
    client
        .send(&join_message("moving", "ignored", Some((&seat, offset))))
        .await;
    let back = resume_answer(&mut client)
        .await
        .expect("the seat taken back");
    (client, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_a_live_lobby_with_its_seats_ids_and_history() {
    let redis = RedisServer::start();
    let nodes = fleet(&redis).await;
    let (_, answer) = route(nodes[0].addr, "moving").await;
    let owner = node_at(&nodes, answer["url"].as_str().unwrap());
    let (mut ann, ann_seat) = seated(owner, Codec::MessagePack, "moving", "ann").await;
    let (mut bob, bob_seat) = seated(owner, Codec::Json, "moving", "bob").await;
    bob.send_state(1, b"bob-state").await;
    event(&mut ann, b"one").await;
    event(&mut ann, b"two").await;
    let before = events_until(&mut bob, b"two").await;
    assert_eq!(events_until(&mut ann, b"two").await, before);
    let bob_offset = before.last().unwrap().1;

    let (status, body) = http_post(owner.addr, "/drain").await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["moved"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["moved"][0]["lobby"], "moving");
    assert_eq!(report["moved"][0]["members"], 2);
    assert_eq!(report["stayed"], serde_json::json!([]));

    let (url, ann_token, ann_tick) = redirected(&mut ann).await;
    let (bob_url, bob_token, _) = redirected(&mut bob).await;
    assert_eq!(url, bob_url);
    assert_ne!(url, owner.ws_url(), "moved to another node");

    // Ann says she saw nothing after her welcome: the history moved with the lobby.
    let (mut ann, back) = resume_at(
        &nodes,
        &url,
        &ann_seat,
        ann_token,
        ann_seat.offset,
        Codec::MessagePack,
    )
    .await;
    assert_eq!((back.id, back.resumed, back.lost), (ann_seat.id, true, 0));
    assert_eq!(events_until(&mut ann, b"two").await, before);
    // Bob resumes from where he was; the state he sent is in the moved lobby's keyframe.
    let (mut bob, back) =
        resume_at(&nodes, &url, &bob_seat, bob_token, bob_offset, Codec::Json).await;
    assert_eq!((back.id, back.resumed, back.lost), (bob_seat.id, true, 0));
    let keyframe = bob.next_snapshot().await;
    assert!(
        keyframe.keyframe && keyframe.tick > ann_tick,
        "{keyframe:?}"
    );
    assert!(
        keyframe
            .players
            .iter()
            .any(|p| p.id == bob_seat.id && p.data.0[..] == *b"bob-state"),
        "{keyframe:?}"
    );
    // Nobody was announced away or back: the next reliable message is the next offset.
    event(&mut bob, b"three").await;
    let after = events_until(&mut ann, b"three").await;
    assert_eq!(after.last().unwrap().1, bob_offset + 1, "{after:?}");

    // The drained node runs nothing, places nothing and sends new lobbies elsewhere.
    assert!(!owner.http_get("/lobbies").await.1.contains("moving"));
    assert_eq!(
        route(owner.addr, "moving").await.1["url"],
        serde_json::json!(url)
    );
    let mut late = Client::connect(owner, Codec::Json).await;
    late.send_join("fresh", "carl").await;
    match late.recv().await {
        ServerMessage::Error {
            code: ErrorCode::WrongNode,
            url: Some(to),
            ..
        } => assert_ne!(to, owner.ws_url()),
        other => panic!("expected wrong_node, got {other:?}"),
    }
    assert_eq!(cluster(&nodes[0]).await.1["total"], serde_json::json!(2));
    let target = node_at(&nodes, &url);
    assert_eq!(
        target
            .metric("tickrelay_fleet_leases_total{event=\"adopted\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        owner
            .metric("tickrelay_fleet_leases_total{event=\"moved\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_a_nodes_lobbies_before_it_exits() {
    let redis = RedisServer::start();
    let mut fleet = ProcessFleet::start(&redis, "3s", 2).await;
    let owner = fleet.addr_of(&routed(fleet.nodes[0].1, "deploy").await);
    let index = fleet.index_of(owner);
    let other = fleet.nodes[1 - index].1;
    let mut ann = Client::connect_to(owner, Codec::MessagePack).await;
    ann.send(&join_message("deploy", "ann", None)).await;
    let seat = resume_answer(&mut ann).await.expect("welcome");
    ann.next_snapshot().await;

    fleet.signal(index, "-TERM");
    let (url, token, _) = match tokio::spawn(async move { (redirected(&mut ann).await, ann) }).await
    {
        Ok((moved, _)) => moved,
        Err(panic) => panic!("{panic}\n{}", fleet.nodes[index].0.log.text()),
    };
    assert_eq!(url, format!("ws://{other}/ws"));
    let mut back = Client::connect_to(other, Codec::MessagePack).await;
    let moved = Seat {
        token,
        ..seat.clone()
    };
    back.send(&join_message("deploy", "ann", Some((&moved, seat.offset))))
        .await;
    let resumed = resume_answer(&mut back).await.expect("the seat taken back");
    assert_eq!(
        (resumed.id, resumed.resumed, resumed.lost),
        (seat.id, true, 0)
    );
    back.next_snapshot().await;
    let (node, _) = &mut fleet.nodes[index];
    node.wait_log("drain done").await;
    assert!(node.wait_for_exit().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_drain_at_once() {
    let redis = RedisServer::start();
    let mut fleet = ProcessFleet::start(&redis, "3s", 1).await;
    let node = fleet.nodes[0].1;
    let (mut ann, _, _) = Client::join_at(node, Codec::MessagePack, "stuck", "ann").await;
    ann.next_snapshot().await;
    // Alone in its fleet, the node looks for another for a while before it gives up.
    fleet.signal(0, "-TERM");
    let (process, _) = &mut fleet.nodes[0];
    process.wait_log("draining").await;
    fleet.signal(0, "-TERM");
    let (process, _) = &mut fleet.nodes[0];
    let status = process.wait_for_exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(process.log.text().contains("second signal"));
}
