//! The load generator against a fleet: clients pointed at a node that does not run their
//! lobby follow `wrong_node` to the one that does, keeping nothing from the detour but a
//! counter.

use tickrelay_server::Config;
use tickrelay_testkit::RedisServer;

use crate::support::{describe, loadgen_report, spawn_server_with};

const CLIENTS: usize = 16;

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
    assert_eq!(
        report["errors_whole_run"],
        serde_json::json!({}),
        "{}",
        describe(&output)
    );
    assert_eq!(report["clients_joined_at_end"], CLIENTS);
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
