//! `wss://`: the load generator's clients over TLS against a real server serving a
//! certificate made in the test: trusted through `--ca`, or taken blindly with `--insecure`;
//! refused, and counted, when nothing vouches for it.

use std::path::PathBuf;

use tickrelay_server::Config;

use crate::support::{TestServer, describe, loadgen_report, spawn_server_with};

/// A server with a fresh self-signed certificate for localhost; returns it, the certificate's
/// file and the directory holding both (deleted on drop).
async fn tls_server() -> (TestServer, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let server = spawn_server_with(Config {
        tls_cert: Some(cert_path.clone()),
        tls_key: Some(key_path),
        ..Config::default()
    })
    .await;
    (server, cert_path, dir)
}

fn wss_url(server: &TestServer) -> String {
    format!("wss://localhost:{}/ws", server.addr.port())
}

const RUN: [&str; 6] = ["--clients", "16", "--lobby-size", "8", "--warmup", "0s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_trusting_the_servers_ca_play_like_ws_ones() {
    let (server, cert, _dir) = tls_server().await;
    let url = wss_url(&server);
    let mut args = vec![
        "--url",
        &url,
        "--ca",
        cert.to_str().unwrap(),
        "--duration",
        "2s",
    ];
    args.extend(RUN);
    let (output, report) = loadgen_report(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(report["clients_joined_at_end"], 16, "{}", describe(&output));
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));
    let counters = &report["counters"];
    assert!(counters["snapshots_received"].as_f64().unwrap() > 0.0);
    assert_eq!(
        counters["snapshots_expected"],
        counters["snapshots_received"]
    );
    assert!(report["latency"]["broadcast"]["count"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_refuses_an_untrusted_certificate_unless_told_to_be_insecure() {
    let (server, _cert, _dir) = tls_server().await;
    let url = wss_url(&server);
    // The system's roots do not vouch for a self-signed certificate: every attempt fails.
    let mut args = vec!["--url", &url, "--duration", "1s"];
    args.extend(RUN);
    let (_, report) = loadgen_report(&args).await;
    assert_eq!(report["clients_joined_at_end"], 0);
    let refused = &report["errors_whole_run"]["connect_tls"];
    assert!(
        refused.as_f64().unwrap_or(0.0) >= 16.0,
        "{}",
        report["errors_whole_run"]
    );

    let mut args = vec!["--url", &url, "--insecure", "--duration", "2s"];
    args.extend(RUN);
    let (output, report) = loadgen_report(&args).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(report["clients_joined_at_end"], 16);
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));
}
