//! Fleet figures: Redis commands per second per node, idle and with `--lobbies` lobbies
//! running, join latency through `/route` and through `POST /matchmake` (the question,
//! WebSocket upgrade, `join`, `welcome`), and a drain: how long each lobby is frozen, what
//! its players miss, what is lost.
//!
//!     cargo run --release -p tickrelay-benches --bin fleet -- --nodes 3 --lobbies 1000
//!
//! It starts a `redis-server` of its own on a free loopback port and `--nodes` release server
//! processes sharing it, counts what Redis executes over `--window` with no lobby, then with
//! the lobbies held by one load generator per node (one player each, states at 10 Hz), then
//! times `--joins` sequential joins through `/route` of new lobbies spread over the nodes,
//! and as many through `/matchmake` into one pool of lobbies of 8,
//! then drains the first node (`POST /drain`) while a load generator plays
//! `--drain-lobbies` lobbies of 8 players on it (states at 30 Hz, 2 events/s each) and reads
//! the drain's report, the load generator's (redirects, snapshots missed, resume time, lost)
//! and the events the node dropped while lobbies were frozen.
//! Prints a table and appends it to benches/RESULTS.md unless `--no-record`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use tickrelay_benches::processes::{self, Guard, RunOptions, free_port, wait_for};
use tickrelay_benches::wire;
use tickrelay_testkit::RedisServer;

/// Measures a fleet's Redis load and join latency (see the module docs).
#[derive(Debug, Parser)]
#[command(name = "fleet", about, long_about)]
struct Args {
    /// Server nodes sharing the Redis.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Lobbies running during the loaded window (one player each).
    #[arg(long, default_value_t = 1000)]
    lobbies: usize,
    /// Each measuring window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Joins through `/route` to time.
    #[arg(long, default_value_t = 500)]
    joins: usize,
    /// Lobbies of 8 players on the drained node (0: no drain).
    #[arg(long, default_value_t = 50)]
    drain_lobbies: usize,
    #[command(flatten)]
    run: RunOptions,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    ensure!(args.joins >= 10, "--joins must be at least 10");
    let root = processes::workspace_root();
    let bin_dir = args.run.binaries(&root)?;
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let port = free_port()?;
        let node = Guard(
            Command::new(bin_dir.join("tickrelay-server"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--redis", &redis.url(), "--node-id", &format!("n{i}")])
                .args([
                    "--resume-secret",
                    "the fleet bench's secret, shared by every node",
                ])
                .args([
                    "--max-connections-per-ip",
                    "0",
                    "--max-handshakes-per-ip",
                    "0",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context("starting tickrelay-server")?,
        );
        nodes.push((node, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let addrs: Vec<_> = nodes.iter().map(|(_, addr)| *addr).collect();
    let mut exited = None;
    let registered = wait_for(Duration::from_secs(20), "every node to register", || {
        for (node, _) in &mut nodes {
            if let Ok(Some(status)) = node.0.try_wait() {
                exited = Some(status);
                return true;
            }
        }
        wire::http_get(addrs[0], "/cluster").is_ok_and(|(status, body)| {
            status == 200 && json(&body)["total"] == serde_json::json!(args.nodes)
        })
    });
    if let Some(status) = exited {
        bail!(
            "a node exited at start ({status}); is {} current?",
            bin_dir.display()
        );
    }
    registered?;

    eprintln!("fleet: idle window ({:?})", args.window);
    let idle = redis_rate(&redis, args.window)?;

    eprintln!("fleet: starting {} lobbies", args.lobbies);
    let per_node = args.lobbies.div_ceil(args.nodes);
    let hold = args.window * 2 + Duration::from_secs(30);
    let mut loadgens = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let clients = per_node.min(args.lobbies - i * per_node);
        loadgens.push(Guard(
            Command::new(bin_dir.join("tickrelay-loadgen"))
                .args(["--url", &format!("ws://{addr}/ws"), "--quiet"])
                .args(["--clients", &clients.to_string(), "--lobby-size", "1"])
                .args(["--lobby-prefix", &format!("held{i}"), "--state-rate", "10"])
                .args([
                    "--duration",
                    &format!("{}s", hold.as_secs()),
                    "--warmup",
                    "0s",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting tickrelay-loadgen")?,
        ));
    }
    wait_for(Duration::from_secs(60), "every lobby to run", || {
        lobbies_running(addrs[0]).is_ok_and(|running| running >= args.lobbies as u64)
    })?;
    eprintln!("fleet: loaded window ({:?})", args.window);
    let loaded = redis_rate(&redis, args.window)?;

    eprintln!("fleet: {} joins through /route", args.joins);
    let (route, join) = timed_joins(&addrs, args.joins, Ask::Route)?;
    eprintln!("fleet: {} joins through /matchmake", args.joins);
    let (matchmake, matched_join) = timed_joins(&addrs, args.joins, Ask::Matchmake)?;
    drop(loadgens);
    let drain = if args.drain_lobbies > 0 && args.nodes > 1 {
        eprintln!(
            "fleet: drain of n0 with {} lobbies of 8",
            args.drain_lobbies
        );
        drain_figures(&bin_dir, &addrs, args.drain_lobbies)?
    } else {
        String::new()
    };

    let nodes_f = args.nodes as f64;
    let table = format!(
        "### Fleet: {} nodes on one redis-server, {} lobbies, {:?} windows\n\n\
         | figure | idle | {} lobbies |\n|---|---|---|\n\
         | Redis round trips/s per node (heartbeat transactions and script calls) | {:.1} | {:.1} |\n\
         | Redis commands executed/s per node (the scripts' own included) | {:.1} | {:.1} |\n\n\
         | join through `/route` ({} joins of new lobbies, sequential) | p50 | p99 | max |\n|---|---|---|---|\n\
         | `GET /route` (placement included) | {} | {} | {} |\n\
         | route + upgrade + `join` → `welcome` | {} | {} | {} |\n\
         | `POST /matchmake` (pool lobbies of 8) | {} | {} | {} |\n\
         | matchmake + upgrade + `join` → `welcome` | {} | {} | {} |\n{drain}",
        args.nodes,
        args.lobbies,
        args.window,
        args.lobbies,
        idle.round_trips / nodes_f,
        loaded.round_trips / nodes_f,
        idle.executed / nodes_f,
        loaded.executed / nodes_f,
        args.joins,
        ms(percentile(&route, 0.50)),
        ms(percentile(&route, 0.99)),
        ms(percentile(&route, 1.0)),
        ms(percentile(&join, 0.50)),
        ms(percentile(&join, 0.99)),
        ms(percentile(&join, 1.0)),
        ms(percentile(&matchmake, 0.50)),
        ms(percentile(&matchmake, 0.99)),
        ms(percentile(&matchmake, 1.0)),
        ms(percentile(&matched_join, 0.50)),
        ms(percentile(&matched_join, 0.99)),
        ms(percentile(&matched_join, 1.0)),
    );
    println!("{table}");
    args.run.record(&root, &table)?;
    drop(nodes);
    Ok(())
}

/// Redis work per second over a window, all nodes together.
struct Rate {
    /// Requests the nodes made: at steady state (no routes, no claims) a node sends only its
    /// heartbeat (one `MULTI`…`EXEC`) and its renewal batches (`EVALSHA`).
    round_trips: f64,
    /// Every command Redis executed, those the scripts ran included (`INFO commandstats`).
    executed: f64,
}

/// What Redis executes over `window`, less this measurement's own commands.
fn redis_rate(redis: &RedisServer, window: Duration) -> anyhow::Result<Rate> {
    let mut connection = redis.connection()?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query::<()>(&mut connection)?;
    std::thread::sleep(window);
    let commands: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)?;
    // Lines like `cmdstat_evalsha:calls=12,usec=...`.
    let calls: Vec<(&str, f64)> = commands
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name, calls))
        })
        .collect();
    let of = |names: &[&str]| -> f64 {
        calls
            .iter()
            .filter(|(name, _)| names.contains(name))
            .map(|(_, n)| n)
            .sum()
    };
    // This measurement's own RESETSTAT is counted after the reset; the INFO is not yet.
    let executed = calls.iter().map(|(_, n)| n).sum::<f64>() - of(&["config"]);
    let seconds = window.as_secs_f64();
    Ok(Rate {
        round_trips: of(&["exec", "evalsha", "eval"]) / seconds,
        executed: executed / seconds,
    })
}

/// Lobbies the fleet runs, from `/cluster` (the nodes' last heartbeats).
fn lobbies_running(node: SocketAddr) -> anyhow::Result<u64> {
    let (status, body) = wire::http_get(node, "/cluster")?;
    ensure!(status == 200, "/cluster answered {status}");
    Ok(json(&body)["nodes"]
        .as_array()
        .context("no nodes")?
        .iter()
        .filter_map(|node| node["lobbies"].as_u64())
        .sum())
}

/// How a timed join finds its lobby.
#[derive(Clone, Copy)]
enum Ask {
    /// `GET /route` for a new lobby.
    Route,
    /// `POST /matchmake` in one pool of lobbies of 8.
    Matchmake,
}

/// Times `count` joins on the nodes in turn: the question alone, and question + upgrade +
/// `join` until `welcome` (then the player leaves).
fn timed_joins(
    nodes: &[SocketAddr],
    count: usize,
    ask: Ask,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut asks, mut joins) = (Vec::new(), Vec::new());
    for i in 0..count {
        let node = nodes[i % nodes.len()];
        let started = Instant::now();
        let (status, body) = match ask {
            Ask::Route => wire::http_get(node, &format!("/route?lobby=routed-{i}"))?,
            Ask::Matchmake => {
                wire::http_post(node, "/matchmake?pool=bench&size=8", Duration::from_secs(5))?
            }
        };
        ensure!(status == 200, "the node answered {status}: {body}");
        asks.push(started.elapsed());
        let answer = json(&body);
        let lobby = answer["lobby"].as_str().context("no lobby")?.to_owned();
        let url = answer["url"].as_str().context("no url")?.to_owned();
        let addr: SocketAddr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .context("a ws:// URL")?
            .parse()?;
        let mut socket = wire::upgrade(addr, "/ws", "tickrelay.v1.json")?;
        let join = format!(r#"{{"t":"join","lobby":"{lobby}","name":"p"}}"#);
        socket.write_all(&wire::masked(0x81, join.as_bytes()))?;
        loop {
            let (opcode, payload) = wire::read_frame(&mut socket)?;
            if opcode == 0x8 {
                bail!("closed before welcome");
            }
            let message = json(&String::from_utf8_lossy(&payload));
            match message["t"].as_str() {
                Some("welcome") => break,
                Some("error") => bail!("join refused: {message}"),
                _ => {}
            }
        }
        joins.push(started.elapsed());
        socket.write_all(&wire::masked(0x81, br#"{"t":"leave"}"#))?;
    }
    Ok((asks, joins))
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_default()
}

/// Drains the node at `nodes[0]` while one load generator plays `lobbies` lobbies of 8 on
/// it; the figures as a table.
fn drain_figures(
    bin_dir: &std::path::Path,
    nodes: &[SocketAddr],
    lobbies: usize,
) -> anyhow::Result<String> {
    const SIZE: usize = 8;
    let clients = lobbies * SIZE;
    let drained = nodes[0];
    let report_path =
        std::env::temp_dir().join(format!("tickrelay-drain-{}.json", std::process::id()));
    let mut loadgen = Guard(
        Command::new(bin_dir.join("tickrelay-loadgen"))
            .args(["--url", &format!("ws://{drained}/ws"), "--quiet"])
            .args([
                "--clients",
                &clients.to_string(),
                "--lobby-size",
                &SIZE.to_string(),
            ])
            .args(["--lobby-prefix", "drain", "--event-rate", "2"])
            .args(["--duration", "20s", "--warmup", "0s"])
            .arg("--json")
            .arg(&report_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tickrelay-loadgen")?,
    );
    wait_for(
        Duration::from_secs(60),
        "every drain player to join",
        || {
            wire::http_get(drained, "/lobbies?limit=1000").is_ok_and(|(status, body)| {
                let page = json(&body);
                status == 200
                    && page["lobbies"].as_array().is_some_and(|lobbies| {
                        lobbies
                            .iter()
                            .filter_map(|lobby| lobby["member_count"].as_u64())
                            .sum::<u64>()
                            == clients as u64
                    })
            })
        },
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = wire::http_post(drained, "/drain", Duration::from_secs(60))?;
    ensure!(status == 200, "/drain answered {status}: {body}");
    let report = json(&body);
    let mut frozen: Vec<Duration> = report["moved"]
        .as_array()
        .context("no moved lobbies")?
        .iter()
        .filter_map(|lobby| lobby["frozen_ms"].as_f64())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    frozen.sort();
    ensure!(!frozen.is_empty(), "the drain moved nothing: {body}");
    let stayed = report["stayed"].as_array().map_or(0, Vec::len);
    let dropped = metric(drained, "tickrelay_fleet_events_dropped_moving_total")?;
    let status = loadgen.0.wait()?;
    ensure!(
        status.success(),
        "the drain's load generator failed ({status})"
    );
    let run = json(&std::fs::read_to_string(&report_path)?);
    let _ = std::fs::remove_file(&report_path);
    let counters = &run["counters"];
    let number = |field: &str| counters[field].as_u64().unwrap_or(0);
    let resume = &run["latency"]["resume"];
    let micros = |field: &str| Duration::from_micros(resume[field].as_u64().unwrap_or(0));
    Ok(format!(
        "\n| drain of one node ({lobbies} lobbies × {SIZE} players, 30 Hz, 2 events/s each) | figure |\n|---|---|\n\
         | lobbies moved / left behind | {} / {stayed} |\n\
         | whole drain | {:.0} ms |\n\
         | lobby frozen (handoff, Redis move, redirects), p50 / p99 / max | {} / {} / {} |\n\
         | players redirected / resumed / refused | {} / {} / {} |\n\
         | redirect → resumed `welcome` on the new node, p50 / p99 / max | {} / {} / {} |\n\
         | snapshots missed per player across the move | {:.1} |\n\
         | events that reached the node while their lobby was frozen (dropped there) | {dropped} |\n\
         | events the players sent again (never echoed before the resume) | {} |\n\
         | reliable messages lost (resumed seats' `lost` + events never confirmed) | {} + {} |\n",
        frozen.len(),
        report["seconds"].as_f64().unwrap_or(0.0) * 1e3,
        ms(percentile(&frozen, 0.50)),
        ms(percentile(&frozen, 0.99)),
        ms(percentile(&frozen, 1.0)),
        number("redirects"),
        number("resumes"),
        number("resumes_refused"),
        ms(micros("p50")),
        ms(micros("p99")),
        ms(micros("max")),
        number("redirect_ticks_missed") as f64 / number("redirects").max(1) as f64,
        number("events_resent"),
        number("resume_lost"),
        number("events_unconfirmed"),
    ))
}

/// One series of a node's `/metrics` (0 when absent).
fn metric(node: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let (status, body) = wire::http_get(node, "/metrics")?;
    ensure!(status == 200, "/metrics answered {status}");
    Ok(body
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(series, _)| *series == name)
        .and_then(|(_, value)| value.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}
