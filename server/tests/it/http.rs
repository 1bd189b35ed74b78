//! The HTTP side: health, lobby listing, metrics, and upgrade refusals.

use tickrelay_protocol::Codec;

use crate::support::{Client, http_get, spawn_server, test_config};

#[tokio::test]
async fn healthz_lobbies_and_metrics_are_served() {
    let server = spawn_server(test_config()).await;
    assert_eq!(server.http_get("/healthz").await, (200, "ok\n".into()));

    let (_ann, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (_bob, _, _) = Client::join(&server, Codec::Json, "arena", "bob").await;
    let (status, body) = server.http_get("/lobbies").await;
    assert_eq!(status, 200);
    let lobbies: serde_json::Value = serde_json::from_str(&body).unwrap();
    let arena = &lobbies[0];
    assert_eq!(arena["name"], "arena");
    assert_eq!(arena["member_count"], 2);
    assert_eq!(arena["tick_hz"], 50);
    assert!(arena["age_seconds"].as_f64().unwrap() >= 0.0);
    let names: Vec<_> = arena["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, ["ann", "bob"]);

    // Wait a few ticks, then the metrics reflect the traffic.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, metrics) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("tickrelay_connections 2"), "{metrics}");
    assert!(metrics.contains("tickrelay_lobbies 1"), "{metrics}");
    for family in [
        "tickrelay_messages_in_total",
        "tickrelay_bytes_out_total",
        "tickrelay_tick_duration_seconds_bucket",
        "tickrelay_snapshots_coalesced_total",
        "tickrelay_ticks_total",
    ] {
        assert!(metrics.contains(family), "missing {family}");
    }
    assert!(server.metric("tickrelay_snapshots_queued_total").await >= 2.0);
}

#[tokio::test]
async fn unknown_subprotocol_is_refused_with_400() {
    let server = spawn_server(test_config()).await;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat.v2"),
    ];
    let (status, body) = http_get(server.addr, "/ws", &upgrade).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("unsupported websocket subprotocol") && body.contains("tickrelay.v1.json"),
        "{body}"
    );
    assert!(
        server
            .metric("tickrelay_upgrades_refused_total{reason=\"subprotocol\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn plain_get_on_ws_and_unknown_paths_are_explained() {
    let server = spawn_server(test_config()).await;
    let (status, body) = server.http_get("/ws").await;
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket"));
    let (status, body) = server.http_get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/ws"));
}
