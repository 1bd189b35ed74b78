//! The end-to-end benchmark: the real server and the real load generator as separate
//! processes, pinned to different cores, each preset run several times; prints medians and
//! min–max and records them in `benches/RESULTS.md` (plus JSON under `benches/results/`).
//!
//!     cargo run --release -p tickrelay-benches --bin e2e -- --preset standard
//!
//! By default it builds and runs the server and load generator that sit beside its own
//! binary (`target/release/`). `--bin-dir DIR` takes both from DIR instead and builds nothing,
//! so one session can measure a previous build against the current one, e.g. after
//! `git worktree add ../prev HEAD~1 && cargo build --release -p tickrelay-server -p
//! tickrelay-loadgen` in `../prev`:
//!
//!     cargo run --release -p tickrelay-benches --bin e2e -- --bin-dir ../prev/target/release
//!
//! `--transport ws wss` measures each preset over plain WebSocket and over TLS (a certificate
//! made for the run, trusted by the load generator with `--ca`), alternating the two run by
//! run, and adds a table of wss/ws ratios.
//!
//! The load generator's JSON report is read through typed structures holding exactly the
//! fields used here: a missing or renamed field is an error naming the file, never a zero.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Deserializer, Serialize};
use tickrelay_benches::processes::{self, Guard, free_port};
use tickrelay_benches::procfs::{self, Sample};
use tickrelay_benches::summary::Spread;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Preset {
    /// 1,000 clients, lobbies of 8, 30 Hz ticks, 30 Hz inputs of 32-byte states.
    Standard,
    /// 50 lobbies of 64 at 20 Hz.
    Fanout,
    /// As many clients as one server holds (lobbies of 8, 2 Hz ticks and inputs), from
    /// several load-generator processes.
    Scale,
    /// The load generator's ramp (lobbies of 8, 30 Hz): largest client count with broadcast
    /// p99 under 10 ms and no missed ticks.
    Knee,
}

/// How the clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Transport {
    /// Plain WebSocket over TCP.
    Ws,
    /// WebSocket over TLS (a certificate made for the run; the clients trust it with --ca).
    Wss,
}

/// The certificate and key a `wss` run's server serves.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// A fresh self-signed ECDSA P-256 certificate for `localhost` in `dir`.
    fn make(dir: &Path) -> anyhow::Result<Self> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        std::fs::create_dir_all(dir)?;
        let files = Self {
            cert: dir.join("localhost.crt"),
            key: dir.join("localhost.key"),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, signing_key.serialize_pem())?;
        Ok(files)
    }
}

/// Runs tickrelay's end-to-end benchmark and records the figures in benches/RESULTS.md.
#[derive(Debug, Parser)]
#[command(name = "e2e", about, long_about)]
struct Args {
    /// Which workload(s) to run.
    #[arg(long, value_enum, num_args = 1.., default_value = "standard")]
    preset: Vec<Preset>,
    /// Transports to measure, each preset over each: `--transport ws wss` alternates the two
    /// run by run and adds a table of wss/ws ratios.
    #[arg(long, value_enum, num_args = 1.., default_value = "ws")]
    transport: Vec<Transport>,
    /// Repetitions per preset and transport (figures are medians with min–max).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds per run (after ramp-up and warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Do not pin the server and load generator to different cores.
    #[arg(long)]
    no_pin: bool,
    /// Skip `cargo build --release` of the server and load generator.
    #[arg(long)]
    no_build: bool,
    /// Take `tickrelay-server` and `tickrelay-loadgen` from DIR (e.g. another worktree's
    /// `target/release`) instead of this binary's directory; implies `--no-build`.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Do not append to benches/RESULTS.md (still prints and writes JSON).
    #[arg(long)]
    no_record: bool,
    /// Free-form note recorded with the results (what changed since the last run).
    #[arg(long, default_value = "")]
    note: String,
}

struct Workload {
    clients: usize,
    lobby_size: usize,
    tick_hz: u32,
    input_hz: u32,
    loadgens: usize,
    connect_rate: u32,
    extra: Vec<String>,
}

impl Preset {
    fn workload(self) -> Workload {
        let base = |clients, lobby_size, tick_hz, input_hz| Workload {
            clients,
            lobby_size,
            tick_hz,
            input_hz,
            loadgens: 1,
            connect_rate: 1000,
            extra: Vec::new(),
        };
        match self {
            Self::Standard => base(1000, 8, 30, 30),
            Self::Fanout => base(50 * 64, 64, 20, 20),
            // Pings every 10 s: at 2 Hz inputs the default 1 s ping would be a third of all
            // traffic and the load generators, not the server, would be measured.
            Self::Scale => Workload {
                loadgens: 2,
                connect_rate: 1500,
                extra: ["--ping-interval", "10s"].map(String::from).to_vec(),
                ..base(19_200, 8, 2, 2)
            },
            Self::Knee => Workload {
                extra: [
                    "--scenario",
                    "ramp",
                    "--ramp-step",
                    "500",
                    "--ramp-interval",
                    "5s",
                    "--ramp-bound",
                    "10ms",
                    "--ramp-gap-tolerance",
                    "0",
                ]
                .map(String::from)
                .to_vec(),
                ..base(8000, 8, 30, 30)
            },
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
struct RunFigures {
    deliveries: f64,
    measured_seconds: f64,
    server_cpu_us_per_delivery: f64,
    deliveries_per_server_core_second: f64,
    server_rss_mib: f64,
    server_rss_kib_per_connection: f64,
    loadgen_cpu_us_per_delivery: f64,
    broadcast_p50_ms: f64,
    broadcast_p99_ms: f64,
    broadcast_p999_ms: f64,
    broadcast_max_ms: f64,
    input_p99_ms: f64,
    missed_ticks: f64,
    delivery_ratio: f64,
    generator_late_fraction: f64,
    clients_joined: f64,
    errors: f64,
    knee_clients: f64,
}

const FIGURES: &[(&str, &str, usize)] = &[
    (
        "server_cpu_us_per_delivery",
        "server CPU per delivery (µs)",
        2,
    ),
    (
        "deliveries_per_server_core_second",
        "deliveries per server-core-second",
        0,
    ),
    ("server_rss_mib", "server RSS (MiB)", 1),
    (
        "server_rss_kib_per_connection",
        "server RSS per connection (KiB)",
        2,
    ),
    (
        "loadgen_cpu_us_per_delivery",
        "loadgen CPU per delivery (µs)",
        2,
    ),
    ("broadcast_p50_ms", "broadcast p50 (ms)", 3),
    ("broadcast_p99_ms", "broadcast p99 (ms)", 3),
    ("broadcast_p999_ms", "broadcast p99.9 (ms)", 3),
    ("broadcast_max_ms", "broadcast max (ms)", 3),
    ("input_p99_ms", "input-to-visible p99 (ms)", 3),
    ("missed_ticks", "missed ticks (gaps)", 0),
    ("delivery_ratio", "snapshots received / expected", 5),
    ("generator_late_fraction", "generator late fraction", 4),
    ("clients_joined", "clients joined", 0),
    ("errors", "errors", 0),
    ("knee_clients", "knee (clients)", 0),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    if !args.no_build && args.bin_dir.is_none() {
        processes::build_release(&root)?;
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => {
            std::fs::canonicalize(dir).with_context(|| format!("--bin-dir {}", dir.display()))?
        }
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    for binary in ["tickrelay-server", "tickrelay-loadgen"] {
        let path = bin_dir.join(binary);
        ensure!(path.is_file(), "{} does not exist", path.display());
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = !args.no_pin && cores > 1 && which("taskset");
    if !pin {
        eprintln!("e2e: not pinning (cores: {cores}); figures from shared cores are noisier");
    }
    let tls_dir = std::env::temp_dir().join(format!("tickrelay-e2e-tls-{}", std::process::id()));
    let tls = if args.transport.contains(&Transport::Wss) {
        Some(TlsFiles::make(&tls_dir).context("making the wss certificate")?)
    } else {
        None
    };
    for preset in &args.preset {
        let workload = preset.workload();
        let mut runs: Vec<Vec<RunFigures>> = vec![Vec::new(); args.transport.len()];
        // Run by run, the transports alternate: drift on the box hits both alike.
        for run in 1..=args.runs {
            for (transport, runs) in args.transport.iter().zip(&mut runs) {
                eprintln!("e2e: {preset:?} over {transport:?} run {run}/{}", args.runs);
                let tls = (*transport == Transport::Wss)
                    .then_some(tls.as_ref())
                    .flatten();
                runs.push(run_once(
                    &bin_dir,
                    *preset,
                    &workload,
                    args.seconds,
                    pin,
                    tls,
                )?);
            }
        }
        let mut tables = Vec::new();
        for (transport, runs) in args.transport.iter().zip(&runs) {
            let table = summarize(
                *preset,
                *transport,
                &workload,
                runs,
                pin,
                args.bin_dir.is_some().then_some(bin_dir.as_path()),
                &args.note,
            );
            println!("{table}");
            tables.push(table);
        }
        if let [ws, wss] = &runs[..]
            && args.transport == [Transport::Ws, Transport::Wss]
        {
            let table = ratios(*preset, ws, wss);
            println!("{table}");
            tables.push(table);
        }
        save(
            &root,
            *preset,
            &args.transport,
            &runs,
            &tables.join("\n"),
            args.no_record,
        )?;
    }
    let _ = std::fs::remove_dir_all(&tls_dir);
    Ok(())
}

/// wss against ws, figure by figure: the ratio of the medians.
fn ratios(preset: Preset, ws: &[RunFigures], wss: &[RunFigures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {preset:?}: wss against ws (medians of runs alternating the two)\n\n| figure | ws | wss | wss/ws |\n|---|---|---|---|"
    );
    let values = |runs: &[RunFigures]| -> Vec<serde_json::Value> {
        runs.iter()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect()
    };
    let (ws, wss) = (values(ws), values(wss));
    for (key, label, decimals) in FIGURES {
        let median = |values: &[serde_json::Value]| {
            let series: Vec<f64> = values.iter().filter_map(|v| v[*key].as_f64()).collect();
            Spread::of(&series).map(|spread| spread.median)
        };
        if let (Some(a), Some(b)) = (median(&ws), median(&wss)) {
            let ratio = if a == 0.0 { f64::NAN } else { b / a };
            let _ = writeln!(
                out,
                "| {label} | {a:.decimals$} | {b:.decimals$} | {ratio:.2}× |"
            );
        }
    }
    out
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn pinned(pin: bool, core: usize, program: &Path) -> Command {
    if pin {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run_once(
    bin_dir: &Path,
    preset: Preset,
    workload: &Workload,
    seconds: u64,
    pin: bool,
    tls: Option<&TlsFiles>,
) -> anyhow::Result<RunFigures> {
    let port = free_port()?;
    let mut server = pinned(pin, 0, &bin_dir.join("tickrelay-server"));
    // Over TLS the health check goes to the (plain) admin listener.
    let health_port = match tls {
        None => port,
        Some(tls) => {
            let admin = free_port()?;
            server
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
            admin
        }
    };
    let url = match tls {
        None => format!("ws://127.0.0.1:{port}/ws"),
        Some(_) => format!("wss://localhost:{port}/ws"),
    };
    // A TLS handshake costs the one server core far more than a plain upgrade: at the plain
    // rate (3,000/s at `scale`) some first attempts hit the handshake timeout. The ramp is
    // not what is measured, so wss ramps at most 500/s per load generator.
    let connect_rate = match tls {
        None => workload.connect_rate,
        Some(_) => workload.connect_rate.min(500),
    };
    server
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tick-hz", &workload.tick_hz.to_string()])
        .args(["--max-lobby-size", &workload.lobby_size.max(8).to_string()])
        .args(["--max-connections", "100000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if pin {
        server.args(["--worker-threads", "1"]);
    }
    let server = Guard(server.spawn().context("starting tickrelay-server")?);
    let server_pid = server.0.id();
    wait_healthy(health_port)?;
    let baseline = procfs::sample(server_pid).context("server exited at start")?;

    let dir = std::env::temp_dir().join(format!("tickrelay-e2e-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut loadgens = Vec::new();
    for shard in 0..workload.loadgens {
        let mut loadgen = pinned(pin, 1, &bin_dir.join("tickrelay-loadgen"));
        loadgen
            .args(["--url", &url])
            .args(["--clients", &workload.clients.to_string()])
            .args(["--lobby-size", &workload.lobby_size.to_string()])
            .args(["--state-rate", &workload.input_hz.to_string()])
            .args(["--state-size", "32"])
            .args(["--duration", &format!("{seconds}s"), "--warmup", "2s"])
            .args(["--connect-rate", &connect_rate.to_string()])
            .args(["--shard", &format!("{shard}/{}", workload.loadgens)])
            .args([
                "--json",
                dir.join(format!("shard{shard}.json"))
                    .to_str()
                    .context("temp path")?,
            ])
            .args(&workload.extra)
            .args(
                tls.map(|tls| [OsStr::new("--ca"), tls.cert.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--quiet")
            .stdout(Stdio::null());
        if pin {
            loadgen.args(["--threads", "1"]);
        }
        loadgens.push(Guard(
            loadgen.spawn().context("starting tickrelay-loadgen")?,
        ));
    }
    let pids: Vec<u32> = std::iter::once(server_pid)
        .chain(loadgens.iter().map(|g| g.0.id()))
        .collect();
    let samples: Arc<Mutex<Vec<Vec<Sample>>>> = Arc::new(Mutex::new(vec![Vec::new(); pids.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, pids) = (samples.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(sample) = procfs::sample(*pid) {
                        samples.lock().unwrap_or_else(|p| p.into_inner())[i].push(sample);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(seconds + 180);
    for loadgen in &mut loadgens {
        loop {
            if let Some(status) = loadgen.0.try_wait()? {
                ensure!(
                    status.code().is_some_and(|c| c == 0 || c == 2),
                    "load generator failed: {status}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "load generator did not finish in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The sampler's last round may predate the load generators' window end by up to one
    // interval; the server still runs, so one more sample always covers the window.
    samples[0].extend(procfs::sample(server_pid));
    drop(server);
    let reports: Vec<Report> = (0..workload.loadgens)
        .map(|shard| read_report(&dir.join(format!("shard{shard}.json"))))
        .collect::<anyhow::Result<_>>()?;
    let _ = std::fs::remove_dir_all(&dir);
    figures(preset, &reports, &samples, baseline)
}

fn wait_healthy(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ =
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut response = String::new();
            let _ = std::io::Read::read_to_string(&mut stream, &mut response);
            if response.contains("200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("server did not become healthy within 10 s")
}

/// The parts of the load generator's JSON report (`loadgen/src/report.rs`) that the figures
/// use, and nothing else. No field has a default: one the report lacks is an error.
#[derive(Debug, Deserialize)]
struct Report {
    window_start_unix_ms: u128,
    window_end_unix_ms: u128,
    measured_seconds: f64,
    clients_joined_at_end: u64,
    latency: Latency,
    counters: Counters,
    errors_whole_run: std::collections::BTreeMap<String, u64>,
    /// Null unless the scenario was a ramp; the key itself must be there.
    #[serde(deserialize_with = "nullable")]
    ramp: Option<Ramp>,
}

/// Latency summaries in microseconds. The load generator leaves out a metric without
/// samples; a run that measured no broadcast or no input latency is an error, not 0 ms.
#[derive(Debug, Deserialize)]
struct Latency {
    broadcast: LatencySummary,
    input: LatencySummary,
}

#[derive(Debug, Deserialize)]
struct LatencySummary {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Debug, Deserialize)]
struct Counters {
    snapshots_received: u64,
    snapshots_expected: u64,
    states_sent: u64,
    sends_skipped: u64,
    sends_late: u64,
    tick_gaps: u64,
}

#[derive(Debug, Deserialize)]
struct Ramp {
    /// Null when the first step already broke the bound.
    #[serde(deserialize_with = "nullable")]
    knee: Option<u64>,
}

/// A field that must be present but may be null (a plain `Option` field may be absent).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::deserialize(deserializer)
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the load generator's report {}", path.display()))?;
    parse_report(path, &text)
}

fn parse_report(path: &Path, text: &str) -> anyhow::Result<Report> {
    serde_json::from_str(text)
        .with_context(|| format!("parsing the load generator's report {}", path.display()))
}

fn figures(
    preset: Preset,
    reports: &[Report],
    samples: &[Vec<Sample>],
    baseline: Sample,
) -> anyhow::Result<RunFigures> {
    // All shards measure over the same interval give or take a collection; take the overlap.
    let start = reports
        .iter()
        .map(|r| r.window_start_unix_ms as f64)
        .fold(f64::MIN, f64::max);
    let end = reports
        .iter()
        .map(|r| r.window_end_unix_ms as f64)
        .fold(f64::MAX, f64::min);
    ensure!(
        end > start,
        "load generators' measured windows do not overlap"
    );
    // `+ 0.0`: an empty float sum is -0.0, which would print as "-0".
    let sum = |field: &dyn Fn(&Report) -> f64| reports.iter().map(field).sum::<f64>() + 0.0;
    // Latency percentiles: the worst shard (conservative; shards are independent samples).
    let worst = |stat: &dyn Fn(&Report) -> u64| {
        reports
            .iter()
            .map(|r| stat(r) as f64 / 1000.0)
            .fold(0.0, f64::max)
    };
    let deliveries = sum(&|r| r.counters.snapshots_received as f64);
    let measured_seconds = reports
        .iter()
        .map(|r| r.measured_seconds)
        .fold(0.0, f64::max);
    let server_cpu = procfs::cpu_between(&samples[0], start, end)
        .context("server CPU samples do not cover the window")?;
    let loadgen_cpu: f64 = samples[1..]
        .iter()
        .map(|s| {
            procfs::cpu_between_until_exit(s, start, end)
                .context("load generator CPU samples do not cover the window")
        })
        .sum::<anyhow::Result<f64>>()?;
    let server_rss = procfs::rss_at(&samples[0], end).unwrap_or(0);
    let joined = sum(&|r| r.clients_joined_at_end as f64);
    let expected = sum(&|r| r.counters.snapshots_expected as f64);
    let scheduled = sum(&|r| r.counters.states_sent as f64 + r.counters.sends_skipped as f64);
    let late = sum(&|r| r.counters.sends_late as f64 + r.counters.sends_skipped as f64);
    let errors = sum(&|r| r.errors_whole_run.values().map(|&n| n as f64).sum());
    let knee_clients = if preset == Preset::Knee {
        let mut knees = 0.0;
        for report in reports {
            let ramp = report
                .ramp
                .as_ref()
                .context("the knee preset's report has no ramp result")?;
            // No knee (the first step broke the bound) counts as 0 clients.
            knees += ramp.knee.unwrap_or(0) as f64;
        }
        knees
    } else {
        f64::NAN
    };
    let per_delivery = |cpu: f64| {
        if deliveries > 0.0 {
            cpu / deliveries
        } else {
            f64::NAN
        }
    };
    Ok(RunFigures {
        deliveries,
        measured_seconds,
        server_cpu_us_per_delivery: per_delivery(server_cpu),
        deliveries_per_server_core_second: if server_cpu > 0.0 {
            deliveries / (server_cpu / 1e6)
        } else {
            f64::NAN
        },
        server_rss_mib: server_rss as f64 / 1024.0,
        server_rss_kib_per_connection: if joined > 0.0 {
            server_rss.saturating_sub(baseline.rss_kib) as f64 / joined
        } else {
            f64::NAN
        },
        loadgen_cpu_us_per_delivery: per_delivery(loadgen_cpu),
        broadcast_p50_ms: worst(&|r| r.latency.broadcast.p50),
        broadcast_p99_ms: worst(&|r| r.latency.broadcast.p99),
        broadcast_p999_ms: worst(&|r| r.latency.broadcast.p999),
        broadcast_max_ms: worst(&|r| r.latency.broadcast.max),
        input_p99_ms: worst(&|r| r.latency.input.p99),
        missed_ticks: sum(&|r| r.counters.tick_gaps as f64),
        delivery_ratio: if expected > 0.0 {
            deliveries / expected
        } else {
            f64::NAN
        },
        generator_late_fraction: if scheduled > 0.0 {
            late / scheduled
        } else {
            0.0
        },
        clients_joined: joined,
        errors,
        knee_clients,
    })
}

fn summarize(
    preset: Preset,
    transport: Transport,
    workload: &Workload,
    runs: &[RunFigures],
    pin: bool,
    bin_dir: Option<&Path>,
    note: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {preset:?}{}: {} clients, lobbies of {}, {} Hz ticks, {} Hz inputs, {} load generator(s), {} runs{}",
        if transport == Transport::Wss {
            " over wss"
        } else {
            ""
        },
        workload.clients,
        workload.lobby_size,
        workload.tick_hz,
        workload.input_hz,
        workload.loadgens,
        runs.len(),
        if pin {
            ", server on core 0, load generator(s) on core 1"
        } else {
            ", unpinned"
        }
    );
    if let Some(dir) = bin_dir {
        let _ = writeln!(out, "\nBinaries: `{}`", dir.display());
    }
    if !note.is_empty() {
        let _ = writeln!(out, "\nNote: {note}");
    }
    let _ = writeln!(out, "\n| figure | median (min–max) |\n|---|---|");
    let values = runs
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect::<Vec<_>>();
    for (key, label, decimals) in FIGURES {
        // Figures a preset does not produce (NaN, serialized as null) get no row.
        let series: Vec<f64> = values.iter().filter_map(|v| v[*key].as_f64()).collect();
        if let Some(spread) = Spread::of(&series) {
            let _ = writeln!(out, "| {label} | {} |", spread.show(*decimals));
        }
    }
    out
}

fn save(
    root: &Path,
    preset: Preset,
    transports: &[Transport],
    runs: &[Vec<RunFigures>],
    table: &str,
    no_record: bool,
) -> anyhow::Result<()> {
    let stamp = procfs::now_unix_ms() as u64 / 1000;
    let results = root.join("benches/results");
    std::fs::create_dir_all(&results)?;
    let json = if transports == [Transport::Ws] {
        serde_json::json!({ "version": 1, "preset": preset, "unix_time": stamp, "runs": runs[0] })
    } else {
        let by_transport: serde_json::Map<String, serde_json::Value> = transports
            .iter()
            .zip(runs)
            .map(|(t, runs)| (format!("{t:?}").to_lowercase(), serde_json::json!(runs)))
            .collect();
        serde_json::json!({ "version": 1, "preset": preset, "unix_time": stamp, "runs_by_transport": by_transport })
    };
    let path = results.join(format!(
        "e2e-{}-{stamp}.json",
        format!("{preset:?}").to_lowercase()
    ));
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("e2e: wrote {}", path.display());
    if !no_record {
        let results_md = root.join("benches/RESULTS.md");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results_md)?;
        writeln!(
            file,
            "\n{table}\nRecorded at Unix time {stamp}; raw figures: `benches/results/{}`.",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("")
        )?;
        eprintln!("e2e: appended to {}", results_md.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A load generator report with every field the figures read (and one they do not).
    const COMPLETE: &str = r#"{
        "version": 1,
        "window_start_unix_ms": 1000,
        "window_end_unix_ms": 11000,
        "measured_seconds": 10.0,
        "clients_joined_at_end": 8,
        "latency": {
            "broadcast": {"count": 9, "p50": 1500, "p99": 2500, "p999": 3000, "max": 4000},
            "input": {"count": 9, "p50": 1000, "p99": 2000, "p999": 2100, "max": 2200}
        },
        "counters": {
            "snapshots_received": 2400,
            "snapshots_expected": 2400,
            "states_sent": 2400,
            "sends_skipped": 0,
            "sends_late": 3,
            "tick_gaps": 0
        },
        "errors_whole_run": {"connect": 1},
        "ramp": {"bound_us": 10000, "steps": [], "knee": null}
    }"#;

    fn parse(text: &str) -> anyhow::Result<Report> {
        parse_report(Path::new("/tmp/shard0.json"), text)
    }

    #[test]
    fn a_complete_report_parses() {
        let report = parse(COMPLETE).unwrap();
        assert_eq!(report.window_end_unix_ms, 11000);
        assert_eq!(report.latency.broadcast.p999, 3000);
        assert_eq!(report.latency.input.p99, 2000);
        assert_eq!(report.counters.sends_late, 3);
        assert_eq!(report.errors_whole_run["connect"], 1);
        assert_eq!(report.ramp.unwrap().knee, None);
        // Outside a ramp the load generator writes `"ramp": null`.
        let no_ramp = COMPLETE.replace(r#"{"bound_us": 10000, "steps": [], "knee": null}"#, "null");
        assert!(parse(&no_ramp).unwrap().ramp.is_none());
    }

    #[test]
    fn a_report_missing_a_field_is_an_error_naming_the_file_and_the_field() {
        for (parent, field) in [
            ("/counters", "tick_gaps"),
            ("", "window_end_unix_ms"),
            ("/latency", "input"),
            ("/latency/broadcast", "p99"),
            ("/ramp", "knee"),
            ("", "ramp"),
        ] {
            let mut value: serde_json::Value = serde_json::from_str(COMPLETE).unwrap();
            let object = value.pointer_mut(parent).unwrap().as_object_mut().unwrap();
            assert!(object.remove(field).is_some(), "{parent}/{field}");
            let message = format!("{:#}", parse(&value.to_string()).unwrap_err());
            assert!(
                message.contains("/tmp/shard0.json")
                    && message.contains(&format!("missing field `{field}`")),
                "{message}"
            );
        }
    }
}
