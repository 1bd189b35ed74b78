//! Fleet mode: three server nodes on loopback sharing one real `redis-server` (started by the
//! tests on a free port; CI installs Debian's package). Routing from any node, one owner per
//! lobby under concurrent creates, `wrong_node`, `/cluster`, a node cut off from Redis
//! stopping its lobbies before anyone else may take them, and a Redis restart.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tickrelay_faultproxy::{FaultProxy, Link};
use tickrelay_protocol::{Codec, ErrorCode, ServerMessage, close};
use tickrelay_server::Config;

use crate::support::{
    Client, TestServer, WAIT_TIMEOUT, http_get, metric_at, spawn_server, test_config, wait_until,
};

/// A `redis-server` of the test's own, on a free loopback port, without persistence.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts it (again, on the same port, with no data) and waits until it answers.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server; .ci/run does)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while self.connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut connection = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut connection)?;
        Ok(connection)
    }

    /// The owner record of `lobby` (`"{node} {fence}"`), read straight from Redis.
    fn owner_record(&self, lobby: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(format!("tickrelay:lobby:{lobby}"))
            .query(&mut self.connection().unwrap())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn node_config(redis: &str, id: &str) -> Config {
    Config {
        redis: Some(redis.to_owned()),
        node_id: Some(id.to_owned()),
        lease: Duration::from_millis(1500),
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
            cluster(node).await.0 == 200 && cluster(node).await.1["total"] == serde_json::json!(3)
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
    let (_, lobbies) = owner.http_get("/lobbies").await;
    assert!(lobbies.contains("\"rush\""), "{lobbies}");
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
    wait_until(WAIT_TIMEOUT, "routing works again", async || {
        route(node.addr, "fresh").await.0 == 200
    })
    .await;
    newcomer.join_lobby("fresh", "bob").await;
    let snapshot = player.next_snapshot().await;
    assert!(snapshot.tick > after, "the lobby kept ticking");
}
