//! The soak: one server process for `--minutes` under churn, reconnect storms with resume,
//! events, spectators and a trickle of hostile input, then a check that everything came back.
//!
//!     cargo run --release -p tickrelay-benches --bin soak -- --minutes 10
//!
//! Each cycle runs three load generators at once (a churn of players sending states and
//! events; a storm that drops every connection halfway and resumes the seats; players whose
//! every connection goes through a fault-injecting proxy that in turn adds latency, throttles
//! the link, opens partitions shorter and longer than the idle timeout and resets every
//! connection), spectators that only watch, and a hostile client every half second (garbage,
//! bad frames, oversized headers, invalid UTF-8, half-open sockets, a handshake that never
//! ends). Afterwards, with every client gone, it asserts: no panic and no error-level log
//! line; RSS within 10% of the baseline taken after a warm-up cycle; open file descriptors
//! back to that baseline; every connection accounted for (opened = closed by reason + open);
//! no lobby left; no reliable message lost by a resumed seat; every fault injected after the
//! baseline. It prints the figures, appends them to benches/RESULTS.md (unless
//! `--no-record`) and exits 1 when a check fails.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use tickrelay_benches::processes::{self, Guard, RunOptions, free_port, wait_for};
use tickrelay_benches::procfs;
use tickrelay_benches::wire::{self, masked};
use tickrelay_testkit::{FaultProxy, Link};

/// Soaks one tickrelay server and checks it afterwards (see the module docs).
#[derive(Debug, Parser)]
#[command(name = "soak", about, long_about)]
struct Args {
    /// How long to soak, after the warm-up cycle.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Simulated players per cycle (a quarter through the fault proxy; of the rest, two thirds
    /// churn and one third storm).
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Spectator connections per cycle.
    #[arg(long, default_value_t = 20)]
    spectators: usize,
    /// Length of one cycle.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    cycle: Duration,
    #[command(flatten)]
    run: RunOptions,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.clients >= 8, "--clients must be at least 8");
    ensure!(
        args.cycle >= MIN_CYCLE,
        "--cycle must be at least {} (the longest fault and the load generators' leaving)",
        humantime::format_duration(MIN_CYCLE)
    );
    let root = processes::workspace_root();
    let bin_dir = args.run.binaries(&root)?;
    let work = std::env::temp_dir().join(format!("tickrelay-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = soak(&args, &bin_dir, &work);
    let _ = std::fs::remove_dir_all(&work);
    let report = result?;
    println!("{}", report.table);
    args.run.record(&root, &report.table)?;
    if !report.failures.is_empty() {
        bail!("soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// The shortest cycle: the longest fault step, and time for the load generators to leave
/// after the faults are cleared.
const MIN_CYCLE: Duration = Duration::from_secs(15);
const LEAVING: Duration = Duration::from_secs(4);

struct Report {
    table: String,
    failures: Vec<String>,
}

/// What the server's `/metrics` says, by series.
struct Metrics(Vec<(String, f64)>);

impl Metrics {
    fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .find(|(name, _)| name == series)
            .map_or(0.0, |(_, value)| *value)
    }

    /// The sum of every series of `family` (e.g. every reason of the disconnects).
    fn sum(&self, family: &str) -> f64 {
        let prefix = format!("{family}{{");
        self.0
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(_, value)| value)
            .sum()
    }
}

fn soak(args: &Args, bin_dir: &Path, work: &Path) -> anyhow::Result<Report> {
    let port = free_port()?;
    let admin = free_port()?;
    let log_path = work.join("server.log");
    let log = std::fs::File::create(&log_path)?;
    let server = Guard(
        Command::new(bin_dir.join("tickrelay-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--max-connections", "100000", "--max-lobby-size", "64"])
            // Seats cut off by the long partition come back well within the grace.
            .args(["--resume-grace", "20s"])
            // Hostile half-open sockets are found in seconds, not the default 30.
            .args([
                "--idle-timeout",
                "6s",
                "--ping-interval",
                "2s",
                "--handshake-timeout",
                "5s",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tickrelay-server")?,
    );
    let pid = server.0.id();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    wait_for(Duration::from_secs(10), "the server to answer", || {
        metrics(admin).is_ok()
    })?;
    let server_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let url = format!("ws://127.0.0.1:{port}/ws");
    let faults = Faults::start(server_addr)?;

    eprintln!("soak: warm-up cycle");
    let warmup = Duration::from_secs(20).min(args.cycle);
    let mut cycles = Cycles {
        args,
        bin_dir,
        work,
        url,
        server: server_addr,
        faults,
        resumed: 0.0,
        lost: 0.0,
    };
    cycles.run(warmup, 0)?;
    settle(admin)?;
    // Faults count from the baseline on: those are the ones the memory check covers.
    cycles.faults.applied.clear();
    let baseline = (rss_kib(pid)?, settled_open_files(pid, 0)?);
    eprintln!(
        "soak: baseline {} KiB RSS, {} open files",
        baseline.0, baseline.1
    );

    let deadline = Instant::now() + Duration::from_secs_f64(args.minutes * 60.0);
    let mut count = 0;
    let mut peak_rss = baseline.0;
    while Instant::now() < deadline {
        count += 1;
        let length = args.cycle.min(deadline - Instant::now()).max(MIN_CYCLE);
        eprintln!("soak: cycle {count} ({:.0} s)", length.as_secs_f64());
        cycles.run(length, count)?;
        peak_rss = peak_rss.max(rss_kib(pid)?);
    }
    settle(admin)?;
    let end = (rss_kib(pid)?, settled_open_files(pid, baseline.1)?);
    let m = metrics(admin)?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let bad_lines = log_text
        .lines()
        .filter(|line| line.contains("ERROR") || line.contains("panicked"))
        .count();

    let (resumed, lost) = (cycles.resumed, cycles.lost);
    let opened = m.get("tickrelay_connections_opened_total");
    let closed = m.sum("tickrelay_disconnects_total");
    let open = m.get("tickrelay_connections");
    let lobbies = m.get("tickrelay_lobbies");
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        bad_lines == 0,
        format!("{bad_lines} error or panic lines in the server's log"),
    );
    check(
        (end.0 as f64) <= baseline.0 as f64 * 1.10,
        format!(
            "RSS {} KiB is more than 10% over the baseline {} KiB",
            end.0, baseline.0
        ),
    );
    check(
        end.1 <= baseline.1,
        format!("{} open files, {} at the baseline", end.1, baseline.1),
    );
    check(
        opened == closed + open,
        format!("{opened} connections opened, {closed} closed and {open} open"),
    );
    check(lobbies == 0.0, format!("{lobbies} lobbies left"));
    check(
        lost == 0.0,
        format!("{lost} reliable messages lost by resumed seats"),
    );
    check(
        resumed > 0.0,
        "no seat was resumed: the storms did not run".into(),
    );
    let faults = &cycles.faults;
    let missing: Vec<_> = Fault::ALL
        .iter()
        .filter(|fault| !faults.applied.contains_key(fault.name()))
        .map(|fault| fault.name())
        .collect();
    check(
        missing.is_empty(),
        format!("never injected after the baseline (soak longer): {missing:?}"),
    );

    let verdict = if failures.is_empty() {
        "passed"
    } else {
        "FAILED"
    };
    let table = format!(
        "### Soak: {:.1} min after a warm-up, {} cycles of {:.0} s, {} players and {} spectators per cycle: {verdict}\n\n\
         | figure | value |\n|---|---|\n\
         | connections opened (WebSocket) | {opened:.0} |\n\
         | closed, by reason (sum) | {closed:.0} |\n\
         | open at the end | {open:.0} |\n\
         | lobbies at the end | {lobbies:.0} |\n\
         | seats resumed / reliable messages they lost | {resumed:.0} / {lost:.0} |\n\
         | hostile connections refused or closed (upgrade refusals, protocol and join-timeout closes) | {hostile:.0} |\n\
         | connections through the fault proxy | {proxied} |\n\
         | faults injected after the baseline | {applied} |\n\
         | faulted players: resumed / refused (seat_expired) / lost | {f_resumed:.0} / {f_refused:.0} / {f_lost:.0} |\n\
         | error or panic log lines | {bad_lines} |\n\
         | RSS baseline / peak / end (KiB) | {} / {peak_rss} / {} ({:+.1}%) |\n\
         | open files baseline / end | {} / {} |\n",
        args.minutes,
        count,
        args.cycle.as_secs_f64(),
        args.clients,
        args.spectators,
        baseline.0,
        end.0,
        (end.0 as f64 / baseline.0 as f64 - 1.0) * 100.0,
        baseline.1,
        end.1,
        proxied = faults.proxy.accepted(),
        applied = faults
            .applied
            .iter()
            .map(|(name, times)| format!("{name} ×{times}"))
            .collect::<Vec<_>>()
            .join(", "),
        f_resumed = faults.resumed,
        f_refused = faults.refused,
        f_lost = faults.lost,
        hostile = m.sum("tickrelay_upgrades_refused_total")
            + m.get("tickrelay_disconnects_total{reason=\"protocol_error\"}")
            + m.get("tickrelay_disconnects_total{reason=\"bad_message\"}")
            + m.get("tickrelay_disconnects_total{reason=\"message_too_big\"}")
            + m.get("tickrelay_disconnects_total{reason=\"join_timeout\"}"),
    );
    Ok(Report { table, failures })
}

/// The soak's cycles and what they add up: the resumed seats of storms and faults, and their
/// lost messages.
struct Cycles<'a> {
    args: &'a Args,
    bin_dir: &'a Path,
    work: &'a Path,
    url: String,
    server: SocketAddr,
    faults: Faults,
    resumed: f64,
    lost: f64,
}

impl Cycles<'_> {
    /// One cycle: the two load generators, the spectators and the hostile trickle, all for
    /// `length`.
    fn run(&mut self, length: Duration, index: usize) -> anyhow::Result<()> {
        let (args, bin_dir, work, url, server) = (
            self.args,
            self.bin_dir,
            self.work,
            self.url.as_str(),
            self.server,
        );
        let seconds = format!("{}s", length.as_secs());
        let faulted = args.clients / 4;
        let churners = (args.clients - faulted) * 2 / 3;
        let stormers = args.clients - faulted - churners;
        let churn_report = work.join(format!("churn-{index}.json"));
        let storm_report = work.join(format!("storm-{index}.json"));
        let fault_report = work.join(format!("faults-{index}.json"));
        let proxy_url = format!("ws://{}/ws", self.faults.proxy.addr);
        let loadgen = |url: &str, extra: &[String], report: &Path| -> anyhow::Result<Guard> {
            Ok(Guard(
                Command::new(bin_dir.join("tickrelay-loadgen"))
                    .args([
                        "--url",
                        url,
                        "--quiet",
                        "--warmup",
                        "0s",
                        "--lobby-size",
                        "8",
                    ])
                    .args([
                        "--duration",
                        &seconds,
                        "--state-rate",
                        "10",
                        "--event-rate",
                        "1",
                    ])
                    .arg("--json")
                    .arg(report)
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting tickrelay-loadgen")?,
            ))
        };
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let churn = loadgen(
            url,
            &strings(&[
                "--scenario",
                "churn",
                "--clients",
                &churners.to_string(),
                "--churn-rate",
                &(churners / 20).max(1).to_string(),
                "--lobby-prefix",
                &format!("churn{index}"),
            ]),
            &churn_report,
        )?;
        let storm = loadgen(
            url,
            &strings(&[
                "--scenario",
                "storm",
                "--clients",
                &stormers.to_string(),
                "--storm-after",
                &format!("{}s", (length.as_secs() / 2).max(3)),
                "--lobby-prefix",
                &format!("storm{index}"),
            ]),
            &storm_report,
        )?;
        let through_faults = loadgen(
            &proxy_url,
            &strings(&[
                "--scenario",
                "steady",
                "--clients",
                &faulted.to_string(),
                "--lobby-prefix",
                &format!("fault{index}"),
            ]),
            &fault_report,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let hostile_sent = Arc::new(AtomicU64::new(0));
        let mut helpers = Vec::new();
        for spectator in 0..args.spectators {
            let (stop, lobby) = (stop.clone(), format!("storm{index}-{}", spectator % 4));
            helpers.push(std::thread::spawn(move || spectate(server, &lobby, &stop)));
        }
        {
            let (stop, sent) = (stop.clone(), hostile_sent.clone());
            helpers.push(std::thread::spawn(move || hostile(server, &stop, &sent)));
        }
        let deadline = Instant::now() + length + Duration::from_secs(120);
        let faults = &mut self.faults;
        let finished = std::thread::scope(|scope| {
            // The faults end before the load generators do, so they leave over a clear link.
            scope.spawn(|| faults.inject(faulted, length.saturating_sub(LEAVING)));
            for mut child in [churn, storm, through_faults] {
                loop {
                    if let Some(status) = child.0.try_wait()? {
                        // 0, or 2 (an --slo broken: none is given here, so 0 is expected).
                        ensure!(status.success(), "a load generator failed: {status}");
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "a load generator did not finish in time"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Ok(())
        });
        stop.store(true, Ordering::Relaxed);
        for helper in helpers {
            let _ = helper.join();
        }
        let storm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&storm_report)?)?;
        self.resumed += storm["storm"]["resumed"].as_f64().unwrap_or(0.0);
        self.lost += storm["storm"]["lost"].as_f64().unwrap_or(0.0);
        finished?;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&fault_report)?)?;
        let counter = |name: &str| report["counters"][name].as_f64().unwrap_or(0.0);
        eprintln!(
            "soak:   faulted players: {} reconnects, {} resumed, {} refused, errors {}",
            counter("reconnects"),
            counter("resumes"),
            counter("resumes_refused"),
            report["errors_whole_run"]
        );
        self.faults.resumed += counter("resumes");
        self.faults.refused += counter("resumes_refused");
        self.faults.lost += counter("resume_lost");
        self.resumed += counter("resumes");
        self.lost += counter("resume_lost");
        Ok(())
    }
}

/// A fault the proxy injects into the faulted players' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// 40 ms each way.
    Latency,
    /// Server-to-client bytes at 4 KiB/s, under the ~20 KiB/s a lobby of 8 sends each member.
    Throttle,
    /// A partition shorter than the server's idle timeout (6 s): nobody should notice.
    ShortPartition,
    /// A partition longer than ping interval + idle timeout (8 s): the server finds the
    /// half-open connections, the seats wait, the clients resume once it heals.
    LongPartition,
    /// Every connection reset (RST to both ends), then a clear link to reconnect over.
    Reset,
}

impl Fault {
    const ALL: [Self; 5] = [
        Self::Latency,
        Self::Throttle,
        Self::ShortPartition,
        Self::LongPartition,
        Self::Reset,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Throttle => "throttle",
            Self::ShortPartition => "short partition",
            Self::LongPartition => "long partition",
            Self::Reset => "reset",
        }
    }

    /// How long the fault lasts; each is followed by `CLEAR_AFTER` of a clear link.
    fn length(self) -> Duration {
        Duration::from_secs(match self {
            Self::Latency => 3,
            Self::Throttle => 4,
            Self::ShortPartition => 2,
            Self::LongPartition => 10,
            Self::Reset => 0,
        })
    }
}

/// A clear link after each fault, for the clients to recover over.
const CLEAR_AFTER: Duration = Duration::from_secs(2);

/// The fault proxy (on a runtime of its own) and the faults' schedule, which carries over
/// from one cycle to the next.
struct Faults {
    proxy: Arc<FaultProxy>,
    _runtime: tokio::runtime::Runtime,
    /// The next fault in `Fault::ALL`.
    next: usize,
    /// Times each fault was injected, by name.
    applied: BTreeMap<&'static str, u64>,
    resumed: f64,
    refused: f64,
    lost: f64,
}

impl Faults {
    fn start(server: SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let proxy = runtime
            .block_on(FaultProxy::start(server))
            .context("starting the fault proxy")?;
        Ok(Self {
            proxy,
            _runtime: runtime,
            next: 0,
            applied: BTreeMap::new(),
            resumed: 0.0,
            refused: 0.0,
            lost: 0.0,
        })
    }

    /// Injects the schedule's next faults for `window`, once the cycle's `players` have
    /// connected through the proxy and had a moment to join: each fault that still fits, then
    /// a clear link. A fault that does not fit waits for the next window.
    fn inject(&mut self, players: usize, window: Duration) {
        let until = Instant::now() + window;
        let connected = self.proxy.accepted() + players as u64;
        while self.proxy.accepted() < connected && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(CLEAR_AFTER);
        loop {
            let fault = Fault::ALL[self.next];
            if Instant::now() + fault.length() + CLEAR_AFTER > until {
                break;
            }
            match fault {
                Fault::Latency => self.proxy.set(Link::Pass {
                    delay: Duration::from_millis(40),
                }),
                Fault::Throttle => self.proxy.throttle(Some(4 * 1024)),
                Fault::ShortPartition | Fault::LongPartition => self.proxy.set(Link::BlackHole),
                Fault::Reset => self.proxy.reset_all(),
            }
            std::thread::sleep(fault.length());
            self.proxy.set(Link::CLEAR);
            self.proxy.throttle(None);
            *self.applied.entry(fault.name()).or_default() += 1;
            std::thread::sleep(CLEAR_AFTER);
            self.next = (self.next + 1) % Fault::ALL.len();
        }
    }
}

/// Waits until no connection and no lobby is left (half-open hostile sockets need their idle
/// timeout, away seats their resume grace).
fn settle(admin: SocketAddr) -> anyhow::Result<()> {
    let mut last = (0.0, 0.0, 0.0);
    wait_for(
        Duration::from_secs(90),
        "every connection and lobby to end",
        || {
            metrics(admin).is_ok_and(|m| {
                last = (
                    m.get("tickrelay_connections"),
                    m.get("tickrelay_lobbies"),
                    m.get("tickrelay_connections_pending"),
                );
                // The one pending connection is this request for /metrics itself.
                last == (0.0, 0.0, 1.0)
            })
        },
    )
    .with_context(|| {
        format!(
            "still {} connections, {} lobbies and {} pending connections",
            last.0,
            last.1,
            last.2 - 1.0
        )
    })
}

/// A spectator: joins `lobby` to watch, reads everything, pings now and then, until `stop`.
fn spectate(server: SocketAddr, lobby: &str, stop: &AtomicBool) {
    let Ok(mut socket) = wire::upgrade(server, "/ws", "tickrelay.v1.json") else {
        return;
    };
    let join = format!(r#"{{"t":"join","lobby":"{lobby}","name":"watcher","role":"spectator"}}"#);
    if socket.write_all(&masked(0x81, join.as_bytes())).is_err() {
        return;
    }
    let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buffer = [0u8; 16 * 1024];
    let mut last_ping = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match socket.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        if last_ping.elapsed() > Duration::from_secs(2) {
            last_ping = Instant::now();
            let ping = br#"{"t":"ping","client_time":1.0}"#;
            if socket.write_all(&masked(0x81, ping)).is_err() {
                return;
            }
        }
    }
    // A polite goodbye: close 1000.
    let _ = socket.write_all(&masked(0x88, &1000u16.to_be_bytes()));
}

/// One hostile client every half second, cycling through the kinds of bad input, until
/// `stop`. Half-open sockets are kept until then.
fn hostile(server: SocketAddr, stop: &AtomicBool, sent: &AtomicU64) {
    let mut held = Vec::new();
    let mut kind = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let attempt = || -> std::io::Result<Option<TcpStream>> {
            match kind % 7 {
                // Not HTTP at all.
                0 => {
                    let mut socket = TcpStream::connect(server)?;
                    socket.write_all(b"\x16\x03\x01garbage that is not a request\r\n\r\n")?;
                    Ok(None)
                }
                // A frame with every reserved bit set.
                1 => {
                    let mut socket = wire::upgrade(server, "/ws", "tickrelay.v1.msgpack")?;
                    socket.write_all(&[0xF3, 0x80, 1, 2, 3, 4])?;
                    Ok(None)
                }
                // A header announcing a 1 GiB frame.
                2 => {
                    let mut socket = wire::upgrade(server, "/ws", "tickrelay.v1.msgpack")?;
                    let mut header = vec![0x82, 0xFF];
                    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
                    header.extend_from_slice(&[1, 2, 3, 4]);
                    socket.write_all(&header)?;
                    Ok(None)
                }
                // Text that is not UTF-8.
                3 => {
                    let mut socket = wire::upgrade(server, "/ws", "tickrelay.v1.json")?;
                    socket.write_all(&masked(0x81, b"{\"t\":\"join\xff\xfe"))?;
                    Ok(None)
                }
                // A message that is not a protocol message.
                4 => {
                    let mut socket = wire::upgrade(server, "/ws", "tickrelay.v1.msgpack")?;
                    socket.write_all(&masked(0x82, &[0xc1, 0xff, 0x00]))?;
                    Ok(None)
                }
                // Half-open: upgraded, then silent and never reading.
                5 => wire::upgrade(server, "/ws", "tickrelay.v1.msgpack").map(Some),
                // A request that never ends (slowloris).
                _ => {
                    let mut socket = TcpStream::connect(server)?;
                    socket.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")?;
                    Ok(Some(socket))
                }
            }
        };
        if let Ok(Some(socket)) = attempt() {
            held.push(socket);
        }
        sent.fetch_add(1, Ordering::Relaxed);
        kind += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn metrics(admin: SocketAddr) -> anyhow::Result<Metrics> {
    let (status, body) = wire::http_get(admin, "/metrics")?;
    ensure!(status == 200, "GET /metrics failed: {status}");
    Ok(Metrics(
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(' '))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
            .collect(),
    ))
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(procfs::sample(pid).context("the server exited")?.rss_kib)
}

fn open_files(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("the server exited")?
        .count())
}

/// The server's open files once they stop moving: the socket of the last `/metrics` request
/// takes a moment to close on the server's side. The lowest count over a second, or the first
/// at or under `target`.
fn settled_open_files(pid: u32, target: usize) -> anyhow::Result<usize> {
    let mut lowest = open_files(pid)?;
    let until = Instant::now() + Duration::from_secs(1);
    while lowest > target && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        lowest = lowest.min(open_files(pid)?);
    }
    Ok(lowest)
}
