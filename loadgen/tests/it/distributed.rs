//! A distributed run: shards as separate load-generator processes coordinating through a
//! real redis-server, and `watch` as a third, against one real server on loopback. The
//! merged report must be exactly the sum of the shards' shares.

use std::process::Output;
use std::time::Duration;

use tickrelay_testkit::RedisServer;

use crate::support::{describe, loadgen, read_json, spawn_server, temp_path};

const CLIENTS: &str = "32";

/// The common arguments of a shard of run `run`.
fn shard_args(url: &str, redis: &str, run: &str, shard: &str, duration: &str) -> Vec<String> {
    [
        "--url",
        url,
        "--clients",
        CLIENTS,
        "--lobby-size",
        "8",
        "--duration",
        duration,
        "--warmup",
        "1s",
        "--coordinate",
        redis,
        "--run",
        run,
        "--shard",
        shard,
        "--wait-shards",
        "60s",
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The loadgen binary with `args` and `extra` (taken at once: the run borrows nothing).
fn run_with(mut args: Vec<String>, extra: &[&str]) -> impl Future<Output = Output> + use<> {
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        loadgen(&args).await
    }
}

fn count(report: &serde_json::Value, metric: &str) -> u64 {
    report["latency"][metric]["count"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_start_together_and_their_merged_report_is_the_exact_sum() {
    let redis = RedisServer::start();
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| temp_path(&dir, name);
    let (own1, merged0, watched, watched_hlog, html, hlog0) = (
        path("shard1.json"),
        path("merged0.json"),
        path("watched.json"),
        path("watched.hlog"),
        path("watched.html"),
        path("merged0.hlog"),
    );
    let shard = |index: &str| shard_args(&server.url(), &redis.url(), "sum", index, "3s");
    let text = |path: &std::path::PathBuf| path.to_str().unwrap().to_owned();
    let (own1_, merged0_, watched_, watched_hlog_, html_, hlog0_) = (
        text(&own1),
        text(&merged0),
        text(&watched),
        text(&watched_hlog),
        text(&html),
        text(&hlog0),
    );
    let (zero, one, watch) = tokio::join!(
        run_with(
            shard("0/2"),
            &[
                "--json",
                &merged0_,
                "--hlog",
                &hlog0_,
                "--slo",
                "errors=0,delivery>0.99"
            ]
        ),
        run_with(shard("1/2"), &["--json", &own1_, "--slo", "errors=0"]),
        run_with(
            ["watch", &redis.url(), "--run", "sum", "--quiet"]
                .map(str::to_owned)
                .to_vec(),
            &[
                "--json",
                &watched_,
                "--hlog",
                &watched_hlog_,
                "--html",
                &html_
            ]
        ),
    );
    for output in [&zero, &one, &watch] {
        assert!(output.status.success(), "{}", describe(output));
    }
    assert!(
        String::from_utf8_lossy(&one.stderr).contains("judged on the merged figures"),
        "a share gets no verdict, and says so: {}",
        describe(&one)
    );
    let (merged, own1, watched) = (read_json(&merged0), read_json(&own1), read_json(&watched));
    assert_eq!(merged["slo"]["passed"], true, "{}", describe(&zero));

    // Shard 0 and `watch` merged the same figures.
    for key in [
        "latency",
        "counters",
        "errors_whole_run",
        "clients_joined_at_end",
    ] {
        assert_eq!(merged[key], watched[key], "{key}");
    }
    let shards = &merged["shards"];
    assert_eq!(shards["count"], 2);
    assert_eq!(shards["missing"], serde_json::json!([]));
    let by_shard = shards["by_shard"].as_array().unwrap();
    assert_eq!(by_shard.len(), 2);
    // Shard 1's share is its own report's figures, and the total is the sum of the shares.
    assert_eq!(
        by_shard[1]["snapshots"],
        own1["counters"]["snapshots_received"]
    );
    assert_eq!(by_shard[1]["broadcast"], own1["latency"]["broadcast"]);
    let shares: u64 = by_shard
        .iter()
        .map(|s| s["snapshots"].as_u64().unwrap())
        .sum();
    assert_eq!(merged["counters"]["snapshots_received"], shares);
    assert_eq!(
        count(&merged, "broadcast"),
        shares,
        "every snapshot's latency, once"
    );
    assert!(shares > 0);
    assert_eq!(merged["clients_joined_at_end"], 32);
    assert_eq!(own1["clients_joined_at_end"], 16);

    // The windows opened together (a barrier, not each shard on its own).
    let start = |report: &serde_json::Value| report["window_start_unix_ms"].as_i64().unwrap();
    assert!(
        (start(&merged) - start(&own1)).abs() < 500,
        "windows opened {} ms apart",
        start(&merged) - start(&own1)
    );

    // The merged interval logs hold every second of the run, measured or not: merged again,
    // they give at least the window's samples, and shard 0's and watch's are the same.
    assert_eq!(
        std::fs::read_to_string(&hlog0)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        std::fs::read_to_string(&watched_hlog)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count()
    );
    let remerged = path("remerged.json");
    let merge = run_with(
        ["merge", &watched_hlog_, "--json", &text(&remerged)]
            .map(str::to_owned)
            .to_vec(),
        &[],
    )
    .await;
    assert!(merge.status.success(), "{}", describe(&merge));
    assert!(count(&read_json(&remerged), "broadcast") >= shares);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("by shard"), "the HTML names the shards");

    // Watched after the run: the same figures, and a timeline spread over the run's seconds
    // (not every snapshot in the first second read).
    let late = path("late.json");
    let after = run_with(
        [
            "watch",
            &redis.url(),
            "--run",
            "sum",
            "--quiet",
            "--json",
            &text(&late),
        ]
        .map(str::to_owned)
        .to_vec(),
        &[],
    )
    .await;
    assert!(after.status.success(), "{}", describe(&after));
    let late = read_json(&late);
    for key in ["latency", "counters", "clients_joined_at_end"] {
        assert_eq!(late[key], merged[key], "{key}");
    }
    let busy = late["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|point| point["snapshots_per_second"].as_f64() > Some(0.0))
        .count();
    assert!(busy >= 3, "{}", late["timeline"]);
    // `--next` waits for a run that has not started yet, never the one that ended.
    let next = run_with(
        [
            "watch",
            &redis.url(),
            "--run",
            "sum",
            "--next",
            "--wait-shards",
            "2s",
            "--quiet",
        ]
        .map(str::to_owned)
        .to_vec(),
        &[],
    )
    .await;
    assert!(!next.status.success());
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("did not start"),
        "{}",
        describe(&next)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_other_parameters_or_a_taken_index_is_refused_clearly() {
    let redis = RedisServer::start();
    // Nothing needs to listen: registration comes before any connection.
    let url = "ws://127.0.0.1:9/ws";
    let mut patient = shard_args(url, &redis.url(), "strict", "0/2", "1s");
    let wait = patient
        .iter()
        .position(|arg| arg == "--wait-shards")
        .unwrap();
    patient[wait + 1] = "20s".to_owned();
    let waiting = tokio::spawn(run_with(patient, &[]));
    // Until shard 0 has registered, a second one would simply be shard 0.
    let mut connection = redis.connection().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !redis::cmd("EXISTS")
        .arg("tickrelay-loadgen:{strict}:meta")
        .query::<bool>(&mut connection)
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "shard 0 never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut other = shard_args(url, &redis.url(), "strict", "1/2", "1s");
    other[3] = "64".to_owned();
    let refused = run_with(other, &[]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("other parameters") && stderr.contains("total_clients: theirs 32, ours 64"),
        "{stderr}"
    );

    let twin = run_with(shard_args(url, &redis.url(), "strict", "0/2", "1s"), &[]).await;
    let stderr = String::from_utf8_lossy(&twin.stderr);
    assert!(stderr.contains("already running"), "{}", describe(&twin));

    let three = run_with(shard_args(url, &redis.url(), "strict", "1/3", "1s"), &[]).await;
    let stderr = String::from_utf8_lossy(&three.stderr);
    assert!(stderr.contains("has 2 shards"), "{}", describe(&three));

    let ramp = run_with(
        shard_args(url, &redis.url(), "strict", "1/2", "1s"),
        &["--scenario", "ramp"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&ramp.stderr);
    assert!(stderr.contains("--scenario ramp"), "{}", describe(&ramp));

    // Shard 1 never comes: shard 0 gives up when told, saying why.
    let waited = waiting.await.unwrap();
    assert!(!waited.status.success());
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(
        stderr.contains("not every shard came"),
        "{}",
        describe(&waited)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_dies_is_named_missing_and_the_merged_run_fails() {
    let redis = RedisServer::start();
    let server = spawn_server(30).await;
    let dir = tempfile::tempdir().unwrap();
    let merged = temp_path(&dir, "merged.json");
    let zero = run_with(
        shard_args(&server.url(), &redis.url(), "dies", "0/2", "2s"),
        &["--json", merged.to_str().unwrap()],
    );
    let one = async {
        let mut args = shard_args(&server.url(), &redis.url(), "dies", "1/2", "2s");
        args.insert(0, env!("CARGO_BIN_EXE_tickrelay-loadgen").to_owned());
        let mut child = tokio::process::Command::new(&args[0])
            .args(&args[1..])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Both shards' clients joined: the run is under way.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while server.metric("tickrelay_connections").await < Some(32.0) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shards never joined"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().await.unwrap();
    };
    let (zero, ()) = tokio::join!(zero, one);
    assert_eq!(zero.status.code(), Some(1), "{}", describe(&zero));
    let report = read_json(&merged);
    assert_eq!(report["shards"]["missing"], serde_json::json!([1]));
    assert_eq!(report["shards"]["by_shard"].as_array().unwrap().len(), 1);
    assert_eq!(report["clients_joined_at_end"], 16);
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(stderr.contains("never sent their figures"), "{stderr}");
}
