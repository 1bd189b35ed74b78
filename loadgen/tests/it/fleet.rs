//! The load generator against a fleet: clients pointed at a node that does not run their
//! lobby follow `wrong_node` to the one that does, keeping nothing from the detour but a
//! counter; clients of a drained node follow `redirect` and keep their seats.

use tickrelay_server::Config;
use tickrelay_testkit::RedisServer;

use crate::support::{describe, loadgen_report, spawn_server_with};

const CLIENTS: usize = 16;

/// No error in the whole run, and every client joined at the end.
fn assert_clean(output: &std::process::Output, report: &serde_json::Value) {
    assert_eq!(
        report["errors_whole_run"],
        serde_json::json!({}),
        "{}",
        describe(output)
    );
    assert_eq!(report["clients_joined_at_end"], CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sent_to_the_wrong_node_follow_wrong_node_to_the_owner() {
    let redis = RedisServer::start();
    let node = |id: &str| Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        ..Config::default()
    };
    let owner = spawn_server_with(node("owner")).await;
    let other = spawn_server_with(node("other")).await;
    let clients = CLIENTS.to_string();
    let args = |url: &str| {
        [
            "--url",
            url,
            "--clients",
            &clients,
            "--lobby-size",
            "8",
            "--lobby-prefix",
            "fleet",
            "--duration",
            "4s",
            "--warmup",
            "0s",
        ]
        .map(str::to_owned)
    };
    // The first run creates the lobbies on the node it joins; the second, pointed at the
    // other node, is sent there.
    let holders = args(&owner.url());
    let holders: Vec<&str> = holders.iter().map(String::as_str).collect();
    let holding = loadgen_report(&holders);
    let detour = async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while owner.metric("tickrelay_connections").await < Some(CLIENTS as f64) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first run never joined"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let sent = args(&other.url());
        let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
        loadgen_report(&sent).await
    };
    let ((_, _), (output, report)) = tokio::join!(holding, detour);
    assert!(output.status.success(), "{}", describe(&output));
    let counters = &report["counters"];
    assert_eq!(
        report["wrong_node_followed"],
        CLIENTS,
        "{}",
        describe(&output)
    );
    assert_clean(&output, &report);
    assert!(counters["snapshots_received"].as_u64().unwrap() > 0);
    assert_eq!(
        other
            .metric("tickrelay_errors_sent_total{code=\"wrong_node\"}")
            .await,
        Some(CLIENTS as f64)
    );
    // Every member of the lobbies is on the owner: none ever ran on the other node.
    assert_eq!(other.metric("tickrelay_lobbies").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_drained_node_follow_the_redirect_and_keep_their_seats() {
    let redis = RedisServer::start();
    let node = |id: &str| Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        resume_secret: Some("a fleet secret every node shares, 32 bytes or more".into()),
        ..Config::default()
    };
    let drained = spawn_server_with(node("drained")).await;
    let survivor = spawn_server_with(node("survivor")).await;
    let clients = CLIENTS.to_string();
    let url = drained.url();
    let args = [
        "--url",
        &url,
        "--clients",
        &clients,
        "--lobby-size",
        "8",
        "--lobby-prefix",
        "drained",
        "--event-rate",
        "5",
        "--duration",
        "6s",
        "--warmup",
        "0s",
    ];
    let run = loadgen_report(&args);
    let drain = async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        // Every client joined (both lobbies full), and has been playing a while.
        let joined = async || {
            let response = drained.request("GET", "/lobbies").await.unwrap_or_default();
            let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            let page: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            let lobbies = page["lobbies"].as_array().cloned().unwrap_or_default();
            lobbies
                .iter()
                .map(|lobby| lobby["member_count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == CLIENTS as u64
        };
        while !joined().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the run never joined"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        drained
            .request("POST", "/drain")
            .await
            .expect("a drain report")
    };
    let ((output, report), drain) = tokio::join!(run, drain);
    assert!(drain.starts_with("HTTP/1.1 200"), "{drain}");
    assert!(output.status.success(), "{}", describe(&output));
    let counters = &report["counters"];
    assert_eq!(
        counters["redirects"],
        CLIENTS,
        "{drain}\n{}",
        describe(&output)
    );
    assert_eq!(counters["resumes"], CLIENTS, "{}", describe(&output));
    assert_eq!(counters["resume_lost"], 0, "{}", describe(&output));
    assert_eq!(counters["resumes_refused"], 0, "{}", describe(&output));
    // Close 4008 after a redirect is expected, not an error.
    assert_eq!(counters["close_codes"]["4008"], CLIENTS);
    assert_clean(&output, &report);
    assert_eq!(drained.metric("tickrelay_lobbies").await, Some(0.0));
    // Both lobbies ran on there from their handoffs (they retired when the run left).
    assert_eq!(
        survivor
            .metric("tickrelay_fleet_leases_total{event=\"adopted\"}")
            .await,
        Some(2.0)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("redirects (drains)   16 followed"),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_route_the_runs_lobbies_spread_over_the_fleet() {
    let redis = RedisServer::start();
    let node = |id: &str| Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        ..Config::default()
    };
    let first = spawn_server_with(node("first")).await;
    let second = spawn_server_with(node("second")).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !first
        .request("GET", "/cluster")
        .await
        .is_some_and(|response| response.contains("\"total\":2"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both nodes registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let route = format!("http://{}", first.addr);
    let clients = CLIENTS.to_string();
    let args = [
        "--route",
        &route,
        "--clients",
        &clients,
        "--lobby-size",
        "4",
        "--lobby-prefix",
        "routed",
        "--duration",
        "3s",
        "--warmup",
        "0s",
    ];
    let (output, report) = loadgen_report(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_clean(&output, &report);
    assert!(
        report["routed"].as_u64().unwrap() >= CLIENTS as u64,
        "{}",
        describe(&output)
    );
    assert_eq!(report["wrong_node_followed"], 0, "{}", describe(&output));
    // The four lobbies were placed on both nodes, each run where it was placed.
    for node in [&first, &second] {
        let acquired = node
            .metric("tickrelay_fleet_leases_total{event=\"acquired\"}")
            .await;
        assert!(acquired >= Some(1.0), "{acquired:?}\n{}", describe(&output));
    }
    // The report gives each node's share beside the totals.
    let nodes = report["nodes"].as_object().unwrap();
    let mut expected = [first.url(), second.url()];
    expected.sort();
    let urls: Vec<&String> = nodes.keys().collect();
    assert_eq!(
        urls,
        expected.iter().collect::<Vec<_>>(),
        "{}",
        describe(&output)
    );
    let per_node: u64 = nodes
        .values()
        .map(|node| {
            assert!(node["broadcast"]["count"].as_u64().unwrap() > 0);
            node["snapshots"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(
        per_node,
        report["counters"]["snapshots_received"].as_u64().unwrap()
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("by node"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_matchmake_clients_fill_a_pools_lobbies_showing_their_tickets() {
    const SECRET: &str = "a ticket secret of at least thirty-two bytes";
    let redis = RedisServer::start();
    let node = |id: &str| Config {
        redis: Some(redis.url()),
        node_id: Some(id.to_owned()),
        ticket_secret: tickrelay_server::config::TicketSecret {
            ticket_secret: Some(SECRET.into()),
            ticket_secret_file: None,
        },
        ..Config::default()
    };
    let first = spawn_server_with(node("first")).await;
    let _second = spawn_server_with(node("second")).await;
    let route = format!("http://{}", first.addr);
    let clients = CLIENTS.to_string();
    let args = [
        "--route",
        &route,
        "--matchmake",
        "pool",
        "--ticket-secret",
        SECRET,
        "--clients",
        &clients,
        "--lobby-size",
        "8",
        "--duration",
        "2s",
        "--warmup",
        "0s",
    ];
    let (output, report) = loadgen_report(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_clean(&output, &report);
    assert_eq!(report["matchmade"], CLIENTS, "{}", describe(&output));
    assert_eq!(
        report["counters"]["snapshots_received"],
        report["counters"]["snapshots_expected"]
    );
    // Every seat was a pool's: 16 players in lobbies of 8 opened exactly two.
    let mut redis_connection = redis.connection().unwrap();
    let opened: u64 = redis::cmd("GET")
        .arg("tickrelay:pool-next:pool")
        .query(&mut redis_connection)
        .unwrap();
    assert_eq!(opened, (CLIENTS / 8) as u64, "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("matchmade"),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matchmaking_question_the_node_refuses_is_not_asked_again() {
    let redis = RedisServer::start();
    let node = spawn_server_with(Config {
        redis: Some(redis.url()),
        node_id: Some("only".to_owned()),
        max_lobby_size: 4,
        ..Config::default()
    })
    .await;
    let route = format!("http://{}", node.addr);
    let args = [
        "--route",
        &route,
        "--matchmake",
        "big",
        "--clients",
        "3",
        "--lobby-size",
        "6",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connect-timeout",
        "2s",
    ];
    let (output, report) = loadgen_report(&args).await;
    // Each client asked once, was told why not, and stopped: no retry storm.
    assert_eq!(
        report["errors_whole_run"],
        serde_json::json!({"matchmake_refused": 3}),
        "{}",
        describe(&output)
    );
    assert_eq!(report["clients_joined_at_end"], 0);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("HTTP 400"),
        "{}",
        describe(&output)
    );
}
