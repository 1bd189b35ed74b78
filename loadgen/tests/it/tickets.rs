//! Load against servers that require join tickets: the load generator signs one per join.

use std::path::Path;

use tickrelay_server::Config;

use crate::support::{describe, loadgen_report, spawn_server_with};

const SECRET: &str = "loadgen-test-secret-0123456789abcdef";

fn keys() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/tests/keys"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tickets_get_every_client_in_and_back_after_a_storm() {
    let server = spawn_server_with(Config {
        ticket_public_key: Some(keys().join("ed25519-test.pub.pem")),
        ..Config::default()
    })
    .await;
    let key = keys().join("ed25519-test.pem");
    let (output, report) = loadgen_report(&[
        "--url",
        &server.url(),
        "--ticket-private-key",
        key.to_str().unwrap(),
        "--scenario",
        "storm",
        "--clients",
        "16",
        "--storm-after",
        "500ms",
        "--duration",
        "5s",
        "--warmup",
        "0s",
        "--backoff-max",
        "500ms",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let parameters = &report["parameters"];
    assert_eq!(parameters["tickets"], "EdDSA", "{parameters}");
    assert_eq!(report["storm"]["clients_back"], 16, "{}", report["storm"]);
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_hosted_runs_with_a_secret_require_and_sign_tickets() {
    let (output, report) = loadgen_report(&[
        "--self-host",
        "--ticket-secret",
        SECRET,
        "--clients",
        "16",
        "--duration",
        "1s",
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(report["clients_joined_at_end"], 16);
    assert_eq!(report["parameters"]["tickets"], "HS256");
    // The join rate of the ramp-up, the figure to compare with and without tickets.
    let rate = &report["join_rate"];
    assert_eq!(rate["clients"], 16, "{rate}");
    assert!(
        rate["per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{rate}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("joins (ramp-up)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tickets_the_refusals_are_counted_by_code() {
    let server = spawn_server_with(Config {
        ticket_secret: tickrelay_server::config::TicketSecret {
            ticket_secret: Some(SECRET.into()),
            ticket_secret_file: None,
        },
        ..Config::default()
    })
    .await;
    let (output, report) =
        loadgen_report(&["--url", &server.url(), "--clients", "4", "--duration", "1s"]).await;
    let errors = &report["errors_whole_run"];
    let refused = errors["join_refused:unauthorized"].as_u64();
    assert!(
        refused.is_some_and(|n| n >= 4),
        "{errors}\n{}",
        describe(&output)
    );
}
