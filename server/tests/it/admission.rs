//! Admission before the upgrade: the Origin allowlist, per-IP connection caps and handshake
//! rates (per IP and global), the client IP behind trusted proxies. Each refusal is an HTTP
//! answer (403, or 503 with Retry-After), counted, and leaves a witness lobby ticking.

use tickrelay_protocol::Codec;
use tickrelay_server::Config;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Client, TestServer, WAIT_TIMEOUT, spawn_server, test_config, wait_until};

/// What an upgrade attempt with `headers` got: the open socket, or the HTTP refusal's status
/// and `Retry-After` (seconds).
enum Attempt {
    Open(Box<Client>),
    Refused(u16, Option<u64>),
}

async fn attempt(server: &TestServer, headers: &[(&'static str, &str)]) -> Attempt {
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(Codec::MessagePack.subprotocol()),
    );
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Attempt::Open(Box::new(Client {
            ws,
            codec: Codec::MessagePack,
        })),
        Err(WsError::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().parse().unwrap());
            Attempt::Refused(response.status().as_u16(), retry_after)
        }
        Err(other) => panic!("neither open nor refused: {other}"),
    }
}

fn open(attempt: Attempt) -> Client {
    match attempt {
        Attempt::Open(client) => *client,
        Attempt::Refused(status, _) => panic!("refused with {status}"),
    }
}

fn refused(attempt: Attempt) -> (u16, Option<u64>) {
    match attempt {
        Attempt::Refused(status, retry_after) => (status, retry_after),
        Attempt::Open(_) => panic!("expected a refusal, the socket opened"),
    }
}

/// A witness member in its own lobby, checked for snapshots after each attack.
async fn witness(server: &TestServer) -> Client {
    let (client, _, _) = Client::join(server, Codec::MessagePack, "witness", "w").await;
    client
}

#[tokio::test]
async fn origins_outside_the_allowlist_are_refused_before_the_upgrade() {
    let server = spawn_server(Config {
        allowed_origins: vec!["https://game.example".into()],
        ..test_config()
    })
    .await;
    let mut witness = witness(&server).await;
    let evil = attempt(&server, &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused(evil), (403, None));
    open(attempt(&server, &[("Origin", "https://GAME.example")]).await);
    // Not a browser: no Origin, nothing to check (any client can send any Origin anyway).
    open(attempt(&server, &[]).await);
    let series = "tickrelay_upgrades_refused_total{reason=\"origin\"}";
    assert_eq!(server.metric(series).await, Some(1.0));
    witness.next_snapshot().await;
}

#[tokio::test]
async fn per_ip_connection_caps_count_the_forwarded_client_only_behind_trusted_proxies() {
    let server = spawn_server(Config {
        max_connections_per_ip: 2,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap()],
        ip_limit_exempt: Vec::new(),
        ..test_config()
    })
    .await;
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    let first = open(attempt(&server, &from("198.51.100.1")).await);
    let _second = open(attempt(&server, &from("198.51.100.1")).await);
    let (status, retry_after) = refused(attempt(&server, &from("198.51.100.1")).await);
    assert_eq!(status, 503);
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    // Another client behind the same proxy has its own count.
    let _other = open(attempt(&server, &from("198.51.100.2")).await);
    // A closed connection gives its place back.
    drop(first);
    wait_until(
        WAIT_TIMEOUT,
        "the closed connection's place is back",
        async || {
            matches!(
                attempt(&server, &from("198.51.100.1")).await,
                Attempt::Open(_)
            )
        },
    )
    .await;
    let series = "tickrelay_upgrades_refused_total{reason=\"ip_connections\"}";
    assert!(server.metric(series).await.is_some_and(|n| n >= 1.0));

    // Without --trusted-proxies the header is ignored: the peer (loopback here) is the client.
    let direct = spawn_server(Config {
        max_connections_per_ip: 1,
        ip_limit_exempt: Vec::new(),
        ..test_config()
    })
    .await;
    let _one = open(attempt(&direct, &from("198.51.100.1")).await);
    let (status, _) = refused(attempt(&direct, &from("198.51.100.9")).await);
    assert_eq!(status, 503, "a forged X-Forwarded-For changes nothing");
}

#[tokio::test]
async fn handshake_rates_shed_with_retry_after_and_running_lobbies_keep_ticking() {
    let server = spawn_server(Config {
        max_handshakes_per_ip: 3,
        ip_limit_exempt: Vec::new(),
        ..test_config()
    })
    .await;
    let mut witness = witness(&server).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(match attempt(&server, &[]).await {
            Attempt::Open(_) => (101, None),
            Attempt::Refused(status, retry_after) => (status, retry_after),
        });
    }
    // The witness's own handshake took one token of the burst of 3.
    assert_eq!(statuses[..2], [(101, None), (101, None)], "{statuses:?}");
    assert!(
        statuses[2..].iter().all(|s| *s == (503, Some(1))),
        "{statuses:?}"
    );
    let series = "tickrelay_upgrades_refused_total{reason=\"ip_rate\"}";
    assert_eq!(server.metric(series).await, Some(4.0));
    // The bucket refills (a refused attempt takes no token): the same address gets in again.
    wait_until(WAIT_TIMEOUT, "the handshake bucket refilled", async || {
        matches!(attempt(&server, &[]).await, Attempt::Open(_))
    })
    .await;
    witness.next_snapshot().await;

    let global = spawn_server(Config {
        max_handshakes_per_second: 2,
        ..test_config()
    })
    .await;
    open(attempt(&global, &[]).await);
    open(attempt(&global, &[]).await);
    let (status, retry_after) = refused(attempt(&global, &[]).await);
    assert_eq!(
        (status, retry_after),
        (503, Some(1)),
        "loopback is not exempt globally"
    );
    let series = "tickrelay_upgrades_refused_total{reason=\"handshake_rate\"}";
    assert_eq!(global.metric(series).await, Some(1.0));
}
