//! Whole runs: the report's counters are consistent with what the server did.

use crate::support::{
    describe, loadgen, loadgen_with_open_file_limit, read_json, spawn_server, temp_path,
};

fn num(value: &serde_json::Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_run_receives_a_snapshot_per_tick_per_member_without_errors() {
    let server = spawn_server(20).await;
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "steady.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--clients",
        "24",
        "--lobby-size",
        "8",
        "--duration",
        "3s",
        "--warmup",
        "500ms",
        "--state-rate",
        "20",
        "--event-rate",
        "2",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report = read_json(&json);
    let counters = &report["counters"];
    assert_eq!(report["version"], 1);
    assert_eq!(report["tick_hz"], 20);
    assert_eq!(report["clients_joined_at_end"], 24);
    assert_eq!(
        report["errors_whole_run"],
        serde_json::json!({}),
        "{}",
        describe(&output)
    );
    let received = num(&counters["snapshots_received"]);
    let nominal = num(&report["snapshots_nominal"]);
    // 24 members x 20 Hz x ~3 s ≈ 1440: received tracks ticks x members closely.
    assert!(received > 1000.0, "{received}");
    assert!(
        (received / nominal - 1.0).abs() < 0.05,
        "received {received} vs nominal {nominal}"
    );
    assert_eq!(
        counters["snapshots_expected"], counters["snapshots_received"],
        "no tick gaps"
    );
    assert_eq!(counters["tick_gaps"], 0);
    // Every event reaches the 8 members of its lobby.
    let (sent, got) = (
        num(&counters["events_sent"]),
        num(&counters["events_received"]),
    );
    assert!(
        sent > 0.0 && (got / (sent * 8.0) - 1.0).abs() < 0.2,
        "events {sent} sent, {got} received"
    );
    for metric in ["broadcast", "input", "rtt", "event"] {
        assert!(
            num(&report["latency"][metric]["count"]) > 0.0,
            "no {metric} samples"
        );
    }
    assert!(report["clock_offset"]["uncertainty_us"].is_number());
    // The human report is on stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("broadcast") && stdout.contains("p99.9"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_exit_code_gates_on_bounds() {
    let server = spawn_server(30).await;
    let common = [
        "--url",
        &server.url(),
        "--clients",
        "8",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--quiet",
    ];
    let impossible =
        loadgen(&[&common[..], &["--slo", "broadcast.p99<1us,errors=0"]].concat()).await;
    assert_eq!(
        impossible.status.code(),
        Some(2),
        "{}",
        describe(&impossible)
    );
    let stdout = String::from_utf8_lossy(&impossible.stdout);
    assert!(
        stdout.contains("FAILED") && stdout.contains("broadcast.p99<1us"),
        "{stdout}"
    );

    let generous = loadgen(
        &[
            &common[..],
            &["--slo", "broadcast.p99<5s,errors=0,delivery>=0.9"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(generous.status.code(), Some(0), "{}", describe(&generous));

    let malformed = loadgen(&[&common[..], &["--slo", "broadcast.p99 fast"]].concat()).await;
    assert_eq!(malformed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("invalid --slo clause"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_of_two_runs_adds_their_histograms() {
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let mut snapshots_measured = 0.0;
    let mut logs = Vec::new();
    // Two "machines": shards 0/2 and 1/2 of the same 16 clients.
    for shard in ["0/2", "1/2"] {
        let name = shard.replace('/', "of");
        let (json, hlog) = (
            temp_path(&dir, &format!("{name}.json")),
            temp_path(&dir, &format!("{name}.hlog")),
        );
        let output = loadgen(&[
            "--url",
            &server.url(),
            "--clients",
            "16",
            "--lobby-size",
            "4",
            "--shard",
            shard,
            "--duration",
            "1500ms",
            "--warmup",
            "0s",
            "--quiet",
            "--json",
            json.to_str().unwrap(),
            "--hlog",
            hlog.to_str().unwrap(),
        ])
        .await;
        assert!(output.status.success(), "{}", describe(&output));
        let report = read_json(&json);
        assert_eq!(
            report["parameters"]["shard_clients"], 8,
            "each shard runs half the lobbies"
        );
        logs.push(hlog);
        snapshots_measured += num(&report["counters"]["snapshots_received"]);
    }
    let (merged_json, merged_html) = (
        temp_path(&dir, "merged.json"),
        temp_path(&dir, "merged.html"),
    );
    let output = loadgen(&[
        "merge",
        logs[0].to_str().unwrap(),
        logs[1].to_str().unwrap(),
        "--json",
        merged_json.to_str().unwrap(),
        "--html",
        merged_html.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let page = std::fs::read_to_string(&merged_html).expect("HTML report written");
    assert_eq!(page.matches("<svg").count(), 1, "percentile plot only");
    assert!(page.contains("No timeline"));
    let merged = read_json(&merged_json);
    // The logs cover whole runs (ramp-up included), so they hold at least the measured samples.
    let merged_count = num(&merged["latency"]["broadcast"]["count"]);
    assert!(
        merged_count >= snapshots_measured,
        "merged {merged_count} < measured {snapshots_measured}"
    );
    assert!(
        merged_count <= snapshots_measured * 2.5,
        "merged {merged_count} vs measured {snapshots_measured}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_reconnects_every_client() {
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "storm.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--scenario",
        "storm",
        "--clients",
        "30",
        "--storm-after",
        "1s",
        "--duration",
        "10s",
        "--warmup",
        "0s",
        "--backoff-base",
        "50ms",
        "--backoff-max",
        "500ms",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report = read_json(&json);
    let storm = &report["storm"];
    assert_eq!(storm["clients_back"], 30, "{storm}");
    assert!(
        num(&storm["recovery_ms"]) > 0.0 && num(&storm["recovery_ms"]) < 10_000.0,
        "{storm}"
    );
    assert_eq!(report["counters"]["reconnects"], 30);
    assert_eq!(report["latency"]["reconnect"]["count"], 30);
    // By default every client took its seat back, with nothing lost.
    assert_eq!(storm["resumed"], 30, "{storm}");
    assert_eq!(storm["resumes_refused"], 0, "{storm}");
    assert_eq!(storm["lost"], 0, "{storm}");
    assert_eq!(
        report["latency"]["resume"]["count"], 30,
        "the resume-time histogram"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("30 resumed their seat (100.0%)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_no_resume_rejoins_as_new_players_and_events_survive_a_resume() {
    let server = spawn_server(30).await;
    let storm_args = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--scenario",
            "storm",
            "--clients",
            "16",
            "--storm-after",
            "1s",
            "--duration",
            "6s",
            "--warmup",
            "0s",
            "--event-rate",
            "5",
            "--backoff-base",
            "50ms",
            "--backoff-max",
            "300ms",
        ];
        args.extend_from_slice(extra);
        args
    };
    let url = server.url();
    let mut fresh = storm_args(&["--no-resume"]);
    fresh.extend(["--url", &url]);
    let (output, report) = crate::support::loadgen_report(&fresh).await;
    assert!(output.status.success(), "{}", describe(&output));
    let storm = &report["storm"];
    assert_eq!(
        (storm["clients_back"].as_u64(), storm["resumed"].as_u64()),
        (Some(16), Some(0)),
        "{storm}"
    );
    // With events flowing, a resumed storm loses none of them (the history holds them).
    let mut resumed = storm_args(&[]);
    resumed.extend(["--url", &url, "--lobby-prefix", "again"]);
    let (output, report) = crate::support::loadgen_report(&resumed).await;
    assert!(output.status.success(), "{}", describe(&output));
    let storm = &report["storm"];
    assert_eq!(
        (storm["resumed"].as_u64(), storm["lost"].as_u64()),
        (Some(16), Some(0)),
        "{storm}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_and_ramp_scenarios_complete() {
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "churn.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--scenario",
        "churn",
        "--clients",
        "16",
        "--churn-rate",
        "8",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report = read_json(&json);
    assert!(
        num(&report["counters"]["connects"]) >= 8.0,
        "churned clients rejoined: {}",
        report["counters"]
    );
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));

    let json = temp_path(&dir, "ramp.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--scenario",
        "ramp",
        "--clients",
        "24",
        "--ramp-step",
        "8",
        "--ramp-interval",
        "1500ms",
        "--ramp-bound",
        "2s",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let ramp = &read_json(&json)["ramp"];
    let steps: Vec<_> = ramp["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["clients"].clone())
        .collect();
    assert_eq!(steps, [8, 16, 24]);
    assert_eq!(ramp["knee"], 24, "{ramp}");
}

#[tokio::test]
async fn limits_fail_fast_with_a_clear_message() {
    // More sockets than the process may open (its limit set here, not the machine's): refused
    // before any connection is made, naming the limit and the way out.
    let output = loadgen_with_open_file_limit(
        &["--self-host", "--clients", "15000", "--duration", "1s"],
        1024,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("15000 clients need about 30064 open files")
            && stderr.contains("may open only 1024")
            && stderr.contains("--shard"),
        "{stderr}"
    );
    // Without a self-hosted server only the client ends count: 1000 + 64 reserved > 1024.
    let output = loadgen_with_open_file_limit(
        &[
            "--url",
            "ws://127.0.0.1:1/ws",
            "--clients",
            "1000",
            "--duration",
            "1s",
        ],
        1024,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("1000 clients need about 1064 open files")
            && stderr.contains("may open only 1024"),
        "{stderr}"
    );

    let output = loadgen(&["--url", "http://127.0.0.1:1/ws"]).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("ws://"));
    let output = loadgen(&["--clients", "5"]).await;
    assert!(!output.status.success(), "needs --url or --self-host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_codec_from_several_source_addresses() {
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "json.json");
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--clients",
        "12",
        "--codec",
        "json",
        "--source-ips",
        "127.0.0.2-127.0.0.4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let report = read_json(&json);
    assert_eq!(report["parameters"]["codec"], "json");
    assert_eq!(
        report["parameters"]["source_ips"].as_array().unwrap().len(),
        3
    );
    assert_eq!(report["clients_joined_at_end"], 12);
    assert_eq!(report["errors_whole_run"], serde_json::json!({}));
    assert!(num(&report["counters"]["snapshots_received"]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_is_one_self_contained_page_with_charts_and_tables() {
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let (html, json) = (
        temp_path(&dir, "report.html"),
        temp_path(&dir, "report.json"),
    );
    let output = loadgen(&[
        "--url",
        &server.url(),
        "--clients",
        "16",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--quiet",
        "--html",
        html.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let page = std::fs::read_to_string(&html).expect("HTML report written");
    assert!(page.starts_with("<!DOCTYPE html>"), "{}", &page[..100]);
    assert_eq!(
        page.matches("<svg").count(),
        3,
        "percentile plot, latency over time, clients and throughput"
    );
    for text in [
        "Latency by percentile",
        "Latency over time",
        "Clients and throughput",
    ] {
        assert!(page.contains(text), "{text}");
    }
    for metric in ["broadcast", "input", "rtt"] {
        assert!(page.contains(&format!("<td>{metric}</td>")), "{metric} row");
    }
    assert!(page.contains("<td>missed ticks (gaps)</td><td>0</td>"));
    // Self-contained: nothing to fetch; the SVG namespace is a name, not a request.
    let without_namespace = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !without_namespace.contains("http://") && !without_namespace.contains("https://"),
        "external reference in the page"
    );
    assert!(!page.contains("<script") && !page.contains("<link"));
    // The timeline behind the charts is in the JSON too, one point per second or so.
    let timeline = read_json(&json)["timeline"].as_array().unwrap().clone();
    assert!(timeline.len() >= 2, "{timeline:?}");
    assert!(timeline.iter().any(|point| point["measuring"] == true));
    assert_eq!(timeline.last().unwrap()["clients_joined"], 16);
}
