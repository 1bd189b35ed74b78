//! A reconnect storm of ten times the server's sustainable handshake rate: the server sheds
//! the excess with 503 and Retry-After, the load generator honours the hint (with jitter), and
//! every client is back in bounded time while a lobby that kept its connection keeps ticking.

use tickrelay_server::Config;

use crate::support::{describe, loadgen_report, spawn_server_with};

/// Handshakes per second the server admits in this test; the storm brings ten times as many
/// clients at once.
const RATE: u32 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_ten_times_the_handshake_rate_ends_with_everyone_back_and_others_ticking() {
    let server = spawn_server_with(Config {
        max_handshakes_per_second: RATE,
        ..Config::default()
    })
    .await;
    let url = server.url();
    let clients = (RATE * 10).to_string();
    let rate = RATE.to_string();
    // The witness connects first and never drops: its lobby must keep its snapshot rate.
    let witness_args = [
        "--url",
        &url,
        "--clients",
        "8",
        "--lobby-prefix",
        "witness",
        "--duration",
        "22s",
        "--warmup",
        "0s",
    ];
    let witness = loadgen_report(&witness_args);
    let storm = async {
        // The witness is in before the crowd takes every handshake token.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while server.metric("tickrelay_connections").await < Some(8.0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the witness never joined"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        loadgen_report(&[
            "--url",
            &url,
            "--scenario",
            "storm",
            "--clients",
            &clients,
            "--connect-rate",
            &rate,
            "--storm-after",
            "1s",
            "--duration",
            "16s",
            "--warmup",
            "0s",
            "--backoff-base",
            "100ms",
            "--backoff-max",
            "2s",
        ])
        .await
    };
    let ((witness_out, witness), (storm_out, storm)) = tokio::join!(witness, storm);
    assert!(storm_out.status.success(), "{}", describe(&storm_out));
    let back = &storm["storm"];
    assert_eq!(
        back["clients_back"],
        RATE * 10,
        "{back}\n{}",
        describe(&storm_out)
    );
    let recovery_ms = back["recovery_ms"].as_f64().unwrap();
    assert!(recovery_ms < 15_000.0, "{back}");
    eprintln!(
        "storm of {clients} at {RATE} handshakes/s: all back in {recovery_ms:.0} ms, {} attempts shed",
        storm["errors_whole_run"]["connect_shed_503"]
    );
    // The only errors are the shed attempts, and there were some: the limit did its work.
    let errors = storm["errors_whole_run"].as_object().unwrap();
    assert!(
        errors.keys().all(|kind| kind == "connect_shed_503"),
        "{errors:?}"
    );
    assert!(errors.contains_key("connect_shed_503"), "{errors:?}");

    assert!(witness_out.status.success(), "{}", describe(&witness_out));
    let counters = &witness["counters"];
    assert_eq!(counters["tick_gaps"], 0, "{counters}");
    let received = counters["snapshots_received"].as_f64().unwrap();
    let nominal = witness["snapshots_nominal"].as_f64().unwrap();
    assert!(
        received / nominal > 0.95,
        "received {received} of {nominal}"
    );
}
