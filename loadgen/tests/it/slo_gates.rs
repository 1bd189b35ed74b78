//! `--slo` gates cannot pass on nothing: against a server that welcomes every client and never
//! sends a snapshot, a bound on broadcast latency is broken ("no samples"), not met.

use crate::support::{describe, loadgen, read_json, spawn_silent_server, temp_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latency_bound_without_samples_breaks_the_slo() {
    let server = spawn_silent_server().await;
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "silent.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--clients",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--quiet",
        "--slo",
        "broadcast.p99<20ms,errors=0",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let report = read_json(&json);
    // Every client joined and nothing went wrong: the only thing missing is the snapshots.
    assert_eq!(report["clients_joined_at_end"], 4, "{}", describe(&output));
    assert_eq!(report["counters"]["snapshots_received"], 0);
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));
    let violations = report["slo"]["violations"].as_array().unwrap();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0]["bound"]
            .as_str()
            .unwrap()
            .starts_with("broadcast.p99<20ms"),
        "{violations:?}"
    );
    assert!(violations[0]["actual"].is_null(), "{violations:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("(no samples)"),
        "{stdout}"
    );
}
