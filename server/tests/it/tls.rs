//! `wss://`: the server's TLS (rustls) against an independent WebSocket client
//! (tokio-tungstenite) over a TLS client connection, with certificates made in the test
//! (rcgen). The admin listener stays plain, so the tests read `/metrics` there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tickrelay_protocol::{Codec, close};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{
    Client, RECV_TIMEOUT, TestServer, WAIT_TIMEOUT, metric_at, spawn_server_with_admin,
    test_config, wait_metric_at,
};

/// A certificate for `localhost` and 127.0.0.1 and its key, written as PEM files.
pub(crate) struct TestCert {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) der: CertificateDer<'static>,
}

pub(crate) fn make_cert(dir: &Path, name: &str) -> TestCert {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    TestCert {
        cert_path,
        key_path,
        der: cert.der().clone(),
    }
}

pub(crate) fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tickrelay-tls-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server serving `cert` on its public listener; returns it and its (plain) admin address.
async fn spawn_tls_server(
    cert: &TestCert,
    tweak: impl FnOnce(&mut tickrelay_server::Config),
) -> (TestServer, SocketAddr) {
    let mut config = tickrelay_server::Config {
        tls_cert: Some(cert.cert_path.clone()),
        tls_key: Some(cert.key_path.clone()),
        ..test_config()
    };
    tweak(&mut config);
    spawn_server_with_admin(config).await
}

fn client_config(trusted: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` trusting `trusted`.
async fn tls_connect(addr: SocketAddr, trusted: &CertificateDer<'static>) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(client_config(trusted));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(RECV_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// A `wss://` WebSocket client speaking `codec`.
async fn wss_client(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    codec: Codec,
) -> Client<TlsStream<TcpStream>> {
    let tls = tls_connect(addr, trusted).await;
    let mut request = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(codec.subprotocol()),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("websocket over TLS");
    Client { ws, codec }
}

#[tokio::test]
async fn wss_serves_both_codecs_and_the_tick_writes_snapshots_directly() {
    let dir = temp_dir("serve");
    let cert = make_cert(&dir, "server");
    let (server, admin) = spawn_tls_server(&cert, |_| {}).await;
    let mut json = wss_client(server.addr, &cert.der, Codec::Json).await;
    let mut msgpack = wss_client(server.addr, &cert.der, Codec::MessagePack).await;
    let (json_id, _) = json.join_lobby("secure", "ada").await;
    let (msgpack_id, _) = msgpack.join_lobby("secure", "bob").await;
    json.send_state(1, b"json-state").await;
    msgpack.send_state(1, b"msgpack-state").await;
    // Each sees the other's state in a snapshot.
    for (client, other, data) in [
        (&mut json, msgpack_id, &b"msgpack-state"[..]),
        (&mut msgpack, json_id, &b"json-state"[..]),
    ] {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let snapshot = client.next_snapshot().await;
            let seen = snapshot
                .players
                .iter()
                .any(|p| p.id == other && p.data == crate::support::payload(data));
            if seen {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot with the other's state"
            );
        }
    }
    // Over TLS as over TCP the tick encrypts and writes snapshots itself.
    wait_metric_at(admin, "tickrelay_snapshots_written_direct_total", 10.0).await;
    let handshakes = metric_at(admin, "tickrelay_tls_handshakes_total{result=\"ok\"}").await;
    assert_eq!(handshakes, Some(2.0));
    // A leave over TLS closes with 1000 like over TCP.
    json.send(&tickrelay_protocol::ClientMessage::Leave).await;
    assert_eq!(json.expect_close_code().await, close::NORMAL);
    server.shutdown.cancel();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn large_messages_cross_tls_through_the_writer() {
    let dir = temp_dir("large");
    let cert = make_cert(&dir, "server");
    let (server, admin) = spawn_tls_server(&cert, |config| {
        config.max_state_size = 60_000;
        config.max_message_size = 64 * 1024;
    })
    .await;
    let mut a = wss_client(server.addr, &cert.der, Codec::MessagePack).await;
    let mut b = wss_client(server.addr, &cert.der, Codec::MessagePack).await;
    a.join_lobby("big", "a").await;
    let (b_id, _) = b.join_lobby("big", "b").await;
    // Larger than a TLS record and than one read of the reader: several records each way.
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    b.send_state(1, &big).await;
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let snapshot = a.next_snapshot().await;
        if snapshot
            .players
            .iter()
            .any(|p| p.id == b_id && p.data == crate::support::payload(&big))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the large state never arrived intact"
        );
    }
    assert_eq!(
        metric_at(
            admin,
            "tickrelay_disconnects_total{reason=\"protocol_error\"}"
        )
        .await,
        None
    );
    server.shutdown.cancel();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_stalled_handshake_is_cut_and_plain_http_is_refused_without_harm() {
    let dir = temp_dir("stall");
    let cert = make_cert(&dir, "server");
    let (server, admin) = spawn_tls_server(&cert, |config| {
        config.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut live = wss_client(server.addr, &cert.der, Codec::MessagePack).await;
    live.join_lobby("calm", "live").await;

    // Half a ClientHello (a record header promising 512 bytes, then 3 of them), then silence.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT_TIMEOUT, stalled.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the stalled handshake was never cut");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "cut before its timeout: {:?}",
        started.elapsed()
    );
    wait_metric_at(
        admin,
        "tickrelay_tls_handshakes_total{result=\"timeout\"}",
        1.0,
    )
    .await;

    // Plain HTTP on the TLS port: not a handshake. Refused, counted, nothing else disturbed.
    let (status, _) = crate::support::http_get(server.addr, "/healthz", &[]).await;
    assert_ne!(status, 200);
    wait_metric_at(
        admin,
        "tickrelay_tls_handshakes_total{result=\"failed\"}",
        1.0,
    )
    .await;
    for _ in 0..3 {
        live.next_snapshot().await;
    }
    server.shutdown.cancel();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn certificates_reload_under_live_connections_and_a_bad_reload_keeps_the_old_one() {
    let dir = temp_dir("reload");
    let first = make_cert(&dir, "first");
    let (server, admin) = spawn_tls_server(&first, |config| {
        config.tls_reload_check = Duration::from_millis(100);
    })
    .await;
    let mut live = wss_client(server.addr, &first.der, Codec::MessagePack).await;
    let (live_id, _) = live.join_lobby("reload", "live").await;

    // A new certificate and key in the same files: the next handshake gets it.
    let second = make_cert(&dir, "second");
    std::fs::copy(&second.key_path, &first.key_path).unwrap();
    std::fs::copy(&second.cert_path, &first.cert_path).unwrap();
    wait_metric_at(admin, "tickrelay_tls_reloads_total{result=\"ok\"}", 1.0).await;
    let fresh = tls_connect(server.addr, &second.der).await;
    let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, second.der, "the reloaded certificate is served");
    drop(fresh);

    // The connection from before the reload never noticed.
    live.send_state(7, b"still here").await;
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let snapshot = live.next_snapshot().await;
        if snapshot
            .players
            .iter()
            .any(|p| p.id == live_id && p.data == crate::support::payload(b"still here"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the live connection stopped");
    }

    // A broken key file: the reload fails and the current certificate stays.
    std::fs::write(&first.key_path, "-----BEGIN PRIVATE KEY-----\nnot base64\n").unwrap();
    wait_metric_at(admin, "tickrelay_tls_reloads_total{result=\"failed\"}", 1.0).await;
    let after = tls_connect(server.addr, &second.der).await;
    assert_eq!(
        after.get_ref().1.peer_certificates().unwrap()[0],
        second.der
    );
    live.next_snapshot().await;
    server.shutdown.cancel();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn unusable_certificates_stop_the_server_with_the_flag_at_fault() {
    let dir = temp_dir("unusable");
    let cert = make_cert(&dir, "server");
    let other = make_cert(&dir, "other");
    let run = |cert_path: &Path, key_path: &Path| {
        let config = tickrelay_server::Config {
            tls_cert: Some(cert_path.to_owned()),
            tls_key: Some(key_path.to_owned()),
            ..test_config()
        };
        async move {
            let listener = tickrelay_server::bind(config.listen).unwrap();
            let shutdown = tokio_util::sync::CancellationToken::new();
            tickrelay_server::run(listener, config, shutdown)
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let mismatched = run(&cert.cert_path, &other.key_path).await;
    assert!(mismatched.contains("--tls-key"), "{mismatched}");
    let missing = run(&dir.join("missing.crt"), &cert.key_path).await;
    assert!(missing.contains("--tls-cert"), "{missing}");
    let not_a_key = run(&cert.cert_path, &cert.cert_path).await;
    assert!(not_a_key.contains("--tls-key"), "{not_a_key}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn rsa_and_ec_keys_serve_wss_in_every_pem_form() {
    let dir = temp_dir("keys");
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let rsa = &rcgen::PKCS_RSA_SHA256;
    let ec = &rcgen::PKCS_ECDSA_P256_SHA256;
    // (the key as PKCS#8, which rcgen signs the certificate with; the file the server gets)
    let forms = [
        ("rsa.pkcs8.pem", "rsa.pkcs1.pem", rsa),
        ("rsa.pkcs8.pem", "rsa.pkcs8.pem", rsa),
        ("ec.pkcs8.pem", "ec.sec1.pem", ec),
        ("ec.pkcs8.pem", "ec.pkcs8.pem", ec),
    ];
    for (pkcs8, served, algorithm) in forms {
        let pem = std::fs::read_to_string(keys.join(pkcs8)).unwrap();
        let key = rcgen::KeyPair::from_pem_and_sign_algo(&pem, algorithm).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_path = dir.join(format!("{served}.crt"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let test_cert = TestCert {
            cert_path,
            key_path: keys.join(served),
            der: cert.der().clone(),
        };
        let (server, _) = spawn_tls_server(&test_cert, |_| {}).await;
        let mut client = wss_client(server.addr, &test_cert.der, Codec::MessagePack).await;
        client.join_lobby("keys", "holder").await;
        client.next_snapshot().await;
        server.shutdown.cancel();
    }
    let _ = std::fs::remove_dir_all(dir);
}
