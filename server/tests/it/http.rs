//! The HTTP side: health, lobby listing, metrics, and upgrade refusals.

use tickrelay_protocol::{ClientMessage, Codec, ServerMessage};

use crate::support::{
    Client, RECV_TIMEOUT, WAIT_TIMEOUT, http_get, http_get_with_headers, spawn_server,
    spawn_server_with_admin, test_config, wait_until,
};

#[tokio::test]
async fn healthz_lobbies_and_metrics_are_served() {
    let server = spawn_server(test_config()).await;
    assert_eq!(server.http_get("/healthz").await, (200, "ok\n".into()));

    let (_ann, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    let (_bob, _, _) = Client::join(&server, Codec::Json, "arena", "bob").await;
    let (status, body) = server.http_get("/lobbies").await;
    assert_eq!(status, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (page["total"].as_u64(), page["next"].is_null()),
        (Some(1), true)
    );
    let arena = &page["lobbies"][0];
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

    // A few ticks later, the metrics reflect the traffic.
    wait_until(
        WAIT_TIMEOUT,
        "two ticks and two snapshots sent",
        async || {
            let ticks = server.metric("tickrelay_ticks_total").await;
            let sent = server.metric("tickrelay_snapshots_sent_total").await;
            ticks.is_some_and(|n| n >= 2.0) && sent.is_some_and(|n| n >= 2.0)
        },
    )
    .await;
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
    // Counted before the response is sent.
    assert_eq!(
        server
            .metric("tickrelay_upgrades_refused_total{reason=\"subprotocol\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn plain_get_on_ws_and_unknown_paths_are_explained() {
    let server = spawn_server(test_config()).await;
    let (status, head, body) = http_get_with_headers(server.addr, "/ws", &[]).await;
    assert_eq!(status, 426);
    assert!(
        head.contains("\r\nupgrade: websocket"),
        "a 426 names the protocol: {head}"
    );
    assert!(body.contains("WebSocket"));
    let (status, body) = server.http_get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains("/ws"));
}

#[tokio::test]
async fn browser_files_are_served_embedded_with_their_content_types() {
    let server = spawn_server(test_config()).await;
    for (path, content_type, marker) in [
        ("/", "text/html", "tickrelayDemo"),
        ("/monitor", "text/html", "/stats"),
        (
            "/tickrelay.js",
            "application/javascript",
            "export function connect",
        ),
    ] {
        let (status, headers, body) = http_get_with_headers(server.addr, path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers.contains(&format!("content-type: {content_type}")),
            "{path}: {headers}"
        );
        assert!(
            headers.contains("cache-control: no-cache"),
            "{path}: {headers}"
        );
        assert!(body.contains(marker), "{path} lacks {marker:?}");
    }
    let (status, body) = server.http_get("/monitor.html").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("/monitor") && body.contains("/tickrelay.js"),
        "{body}"
    );
}

#[tokio::test]
async fn stats_report_counters_tick_timing_and_per_lobby_traffic() {
    let server = spawn_server(test_config()).await;
    let (mut ann, ann_id, _) = Client::join(&server, Codec::Json, "arena", "ann").await;
    let (mut bob, _, _) = Client::join(&server, Codec::MessagePack, "arena", "bob").await;
    ann.send_state(1, b"ann-state").await;
    ann.send(&ClientMessage::Event {
        data: crate::support::payload(b"hi"),
    })
    .await;
    // Bob sees both (in either order), so the lobby has processed them; one tick later its
    // counters include them.
    let (mut saw_event, mut saw_state) = (false, false);
    let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
    while !(saw_event && saw_state) {
        assert!(tokio::time::Instant::now() < deadline, "event and state");
        match bob.recv().await {
            ServerMessage::Event { from, .. } => saw_event |= from == ann_id,
            ServerMessage::Snapshot(s) => saw_state |= s.players.iter().any(|p| p.id == ann_id),
            _ => {}
        }
    }
    bob.next_snapshot().await;

    // The lobby adds its members' message counts to the metrics at its next tick.
    let mut stats = serde_json::Value::Null;
    wait_until(WAIT_TIMEOUT, "messages_in >= 4 in /stats", async || {
        let (status, body) = server.http_get("/stats").await;
        assert_eq!(status, 200);
        stats = serde_json::from_str(&body).unwrap();
        stats["messages_in"].as_u64().unwrap() >= 4
    })
    .await;
    assert_eq!(stats["version"], 1);
    assert_eq!(stats["tick_hz"], 50);
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["lobby_count"], 1);
    assert!(stats["messages_in"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["bytes_out"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["ticks"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["uptime_seconds"].as_f64().unwrap() > 0.0);
    let tick = &stats["tick_duration"];
    assert!(tick["count"].as_u64().unwrap() >= 2, "{tick}");
    assert!(tick["p99_ms"].as_f64().unwrap() > 0.0, "{tick}");
    let buckets = tick["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 16, "the finite buckets");
    assert!(buckets.last().unwrap()[1].as_u64().unwrap() <= tick["count"].as_u64().unwrap());
    assert!(stats["tick_lateness"]["count"].as_u64().unwrap() >= 2);
    assert!(stats["disconnects"].is_object() && stats["errors_sent"].is_object());

    let arena = &stats["lobbies"][0];
    assert_eq!(arena["name"], "arena");
    assert_eq!(arena["member_count"], 2);
    let traffic = &arena["traffic"];
    assert_eq!(traffic["states_in"], 1, "{traffic}");
    assert_eq!(traffic["events_in"], 1, "{traffic}");
    let ticks = traffic["ticks"].as_u64().unwrap();
    assert!(ticks >= 2, "{traffic}");
    // Every tick queues one snapshot per member (bob joined a little after ann).
    let snapshots = traffic["snapshots_out"].as_u64().unwrap();
    assert!(snapshots > ticks && snapshots <= 2 * ticks, "{traffic}");
    // Messages out: the snapshots plus welcomes, bob's arrival for ann, and the event for both.
    assert!(
        traffic["messages_out"].as_u64().unwrap() >= snapshots + 5,
        "{traffic}"
    );
    assert!(traffic["bytes_out"].as_u64().unwrap() > 0, "{traffic}");

    // Someone leaving is counted by reason.
    drop(ann);
    server
        .wait_metric("tickrelay_disconnects_total{reason=\"peer_vanished\"}", 1.0)
        .await;
    let (_, body) = server.http_get("/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["disconnects"]["peer_vanished"], 1, "{stats}");
    assert_eq!(stats["connections"], 1);
}

#[tokio::test]
async fn lobbies_are_listed_a_page_at_a_time_by_name() {
    let server = spawn_server(test_config()).await;
    let mut members = Vec::new();
    for name in ["e", "b", "d", "a", "c"] {
        members.push(Client::join(&server, Codec::MessagePack, name, "p").await);
    }
    let page = async |query: &str| server.http_get(&format!("/lobbies{query}")).await;
    let names = |body: &str| -> (Vec<String>, serde_json::Value) {
        let page: serde_json::Value = serde_json::from_str(body).unwrap();
        let names = page["lobbies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_owned())
            .collect();
        (names, page)
    };
    let (status, body) = page("?limit=2").await;
    assert_eq!(status, 200);
    assert!(!body.contains('\n'), "compact JSON: {body}");
    let (first, json) = names(&body);
    assert_eq!(first, ["a", "b"]);
    assert_eq!(
        (json["total"].as_u64(), json["next"].as_str()),
        (Some(5), Some("b"))
    );
    let (_, body) = page("?limit=2&after=b").await;
    let (second, json) = names(&body);
    assert_eq!(second, ["c", "d"]);
    let (_, body) = page(&format!(
        "?limit=2&after={}",
        json["next"].as_str().unwrap()
    ))
    .await;
    let (last, json) = names(&body);
    assert_eq!(last, ["e"]);
    assert!(json["next"].is_null(), "the last page has no next");
    // The page size is capped, however much is asked; nonsense is refused.
    let (_, body) = page("?limit=1000000").await;
    assert_eq!(names(&body).1["limit"], 1000);
    for bad in ["?limit=0", "?limit=many", "?page=2"] {
        assert_eq!(page(bad).await.0, 400, "{bad}");
    }
}

#[tokio::test]
async fn with_an_admin_listener_the_admin_endpoints_leave_the_public_one() {
    let (server, admin) = spawn_server_with_admin(test_config()).await;
    // The public listener: the WebSocket, the demo, the health check; no admin endpoint.
    let (mut client, _, _) = Client::join(&server, Codec::MessagePack, "arena", "ann").await;
    client.next_snapshot().await;
    for (path, status) in [("/healthz", 200), ("/", 200), ("/tickrelay.js", 200)] {
        assert_eq!(server.http_get(path).await.0, status, "public {path}");
    }
    for path in ["/metrics", "/stats", "/lobbies", "/monitor"] {
        let (status, body) = server.http_get(path).await;
        assert_eq!(status, 404, "public {path}");
        assert!(body.contains("admin listener"), "{body}");
    }
    // The admin listener: those, and nothing a player uses.
    for path in ["/metrics", "/stats", "/lobbies", "/monitor", "/healthz"] {
        assert_eq!(http_get(admin, path, &[]).await.0, 200, "admin {path}");
    }
    for path in ["/ws", "/", "/tickrelay.js"] {
        assert_eq!(http_get(admin, path, &[]).await.0, 404, "admin {path}");
    }
    let (_, metrics) = http_get(admin, "/metrics", &[]).await;
    assert!(metrics.contains("tickrelay_connections 1"), "{metrics}");
}
