//! The server binary run as a process: a bad configuration is refused before anything starts,
//! the log on a pipe carries no colour codes (and is one JSON object a line with
//! `--log-format json`), and a log pipe that nobody reads never stalls the lobbies' ticks.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tickrelay_protocol::{Codec, ServerMessage};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{Client, Closed, RECV_TIMEOUT, WAIT_TIMEOUT, wait_until};

/// The binary cargo built for this test run (a debug build in CI).
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_tickrelay-server");

/// What the test does with the child's stderr once the server is listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stderr {
    /// A reader thread keeps every byte for the test to look at.
    Collect,
    /// Nobody reads it any more, so the pipe fills up (64 KiB on Linux) and stays full. The
    /// read end stays open: the server's writes block (or would) rather than fail with EPIPE.
    LeftUnread,
}

/// Everything the server wrote to stderr so far, appended line by line by a reader thread.
#[derive(Default)]
pub(crate) struct Log {
    bytes: Mutex<Vec<u8>>,
    /// Set once stderr reached its end (the server exited), so `bytes` is complete.
    ended: AtomicBool,
}

impl Log {
    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// The server binary running as a child process. Dropping it kills (SIGKILL) and reaps the
/// child, so a failing test never leaves a server behind.
pub(crate) struct ServerProcess {
    child: Child,
    mode: Stderr,
    pub(crate) log: Arc<Log>,
    /// Where the reader thread hands the stderr pipe back in [`Stderr::LeftUnread`] mode.
    handoff: mpsc::Receiver<BufReader<ChildStderr>>,
    /// The pipe's read end, held open and unread ([`Stderr::LeftUnread`] only).
    unread: Option<BufReader<ChildStderr>>,
}

impl ServerProcess {
    /// Starts the binary with `args` after `--listen 127.0.0.1:0` (unless `args` give one)
    /// and `--worker-threads 2` (two
    /// workers: when both block, nothing in the server runs) and `RUST_LOG=rust_log`. The
    /// caller's `TICKRELAY_*` and `NO_COLOR` variables are not passed on, so neither can change
    /// what a test sees.
    pub(crate) fn start(args: &[&str], rust_log: &str, stderr: Stderr) -> Self {
        Self::start_with(Command::new(SERVER_BIN), args, &[], rust_log, stderr)
    }

    /// [`start`](Self::start), with the child's open-file limit (soft and hard) set to
    /// `max_files`, so the server itself meets EMFILE.
    fn start_with_file_limit(
        args: &[&str],
        rust_log: &str,
        stderr: Stderr,
        max_files: u64,
    ) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut command = Command::new(SERVER_BIN);
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // setrlimit system call, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                rlimit::setrlimit(rlimit::Resource::NOFILE, max_files, max_files)
            });
        }
        Self::start_with(command, args, &[], rust_log, stderr)
    }

    /// [`start`](Self::start) at `info`, collecting stderr, with `env` set for the child.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(Command::new(SERVER_BIN), args, env, "info", Stderr::Collect)
    }

    fn start_with(
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        rust_log: &str,
        stderr: Stderr,
    ) -> Self {
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--worker-threads", "2"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        without_tickrelay_env(&mut command).envs(env.iter().copied());
        let mut child = command.spawn().expect("start the server binary");
        let pipe = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let log = Arc::new(Log::default());
        let (handoff_tx, handoff) = mpsc::channel();
        let thread_log = log.clone();
        std::thread::spawn(move || read_stderr(pipe, &thread_log, stderr, &handoff_tx));
        Self {
            child,
            mode: stderr,
            log,
            handoff,
            unread: None,
        }
    }

    /// Waits for the `tickrelay listening` line and returns the address it names. In
    /// [`Stderr::LeftUnread`] mode, nothing reads stderr after this line.
    pub(crate) async fn wait_listening(&mut self) -> SocketAddr {
        let mut addr = None;
        let log = self.log.clone();
        wait_until(WAIT_TIMEOUT, "the `tickrelay listening` line", async || {
            let bytes = log.bytes();
            addr = bytes.split(|&b| b == b'\n').find_map(listening_addr);
            assert!(
                addr.is_some() || !log.ended.load(Ordering::Acquire),
                "the server exited before listening; its stderr:\n{}",
                String::from_utf8_lossy(&bytes)
            );
            addr.is_some()
        })
        .await;
        if self.mode == Stderr::LeftUnread {
            let pipe = self.handoff.recv_timeout(WAIT_TIMEOUT);
            self.unread = Some(pipe.expect("the reader thread hands the pipe back"));
        }
        addr.expect("wait_until returned, so the line was found")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `WAIT_TIMEOUT`) for the process to exit and for its stderr to end.
    pub(crate) async fn wait_for_exit(&mut self) -> ExitStatus {
        let mut status = None;
        let child = &mut self.child;
        wait_until(WAIT_TIMEOUT, "the server to exit", async || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        let log = &self.log;
        wait_until(WAIT_TIMEOUT, "the end of the server's stderr", async || {
            log.ended.load(Ordering::Acquire)
        })
        .await;
        status.expect("wait_until returned, so the server exited")
    }

    /// Waits until a log line contains `needle`.
    pub(crate) async fn wait_log(&self, needle: &str) {
        let what = format!("a log line with {needle:?}");
        wait_until(WAIT_TIMEOUT, &what, async || {
            self.log.text().contains(needle)
        })
        .await;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Kill first: a server blocked writing to a full pipe must not wait for a reader.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stderr reader thread: appends each line to `log`; in [`Stderr::LeftUnread`] mode it
/// stops after the `tickrelay listening` line and hands the still-open pipe back.
fn read_stderr(
    mut pipe: BufReader<ChildStderr>,
    log: &Log,
    mode: Stderr,
    handoff: &mpsc::Sender<BufReader<ChildStderr>>,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match pipe.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => log.bytes.lock().unwrap().extend_from_slice(&line),
        }
        if mode == Stderr::LeftUnread && listening_addr(&line).is_some() {
            // The receiver lives as long as the test's `ServerProcess`; if the test is already
            // gone, dropping the pipe here is as good.
            let _ = handoff.send(pipe);
            return;
        }
    }
    log.ended.store(true, Ordering::Release);
}

/// The address in a `tickrelay listening` line: the `addr=` field of a text line (colour
/// codes, if any, removed first) or `fields.addr` of a JSON line.
fn listening_addr(line: &[u8]) -> Option<SocketAddr> {
    let line = strip_ansi(&String::from_utf8_lossy(line));
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
        let fields = &json["fields"];
        return (fields["message"] == "tickrelay listening")
            .then(|| fields["addr"].as_str()?.parse().ok())?;
    }
    if !line.contains("tickrelay listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))?
        .parse()
        .ok()
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), so that the port can be found
/// even in a coloured log and a test about colours fails on its own assertion.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            plain.push(c);
        }
    }
    plain
}

/// One client's whole life: connect (JSON codec), join lobby `lobby`, get the welcome, close
/// and wait for the server's close echo.
async fn join_and_close(addr: SocketAddr, lobby: &str) {
    let (mut client, _, _) = Client::join_at(addr, Codec::Json, lobby, "n").await;
    client.ws.close(None).await.expect("send close");
    assert_eq!(client.expect_close().await, Closed::EmptyFrame);
}

#[tokio::test]
async fn process_refuses_an_invalid_configuration_at_start() {
    let huge = usize::MAX.to_string();
    let cases: [(&[&str], &str); 3] = [
        (&["--ping-interval", "0s"], "ping-interval"),
        (&["--max-queued-messages", "0"], "max-queued-messages"),
        (&["--max-message-size", &huge], "max-message-size"),
    ];
    for (args, flag) in cases {
        let mut server = ServerProcess::start(args, "info", Stderr::Collect);
        let status = server.wait_for_exit().await;
        let stderr = server.log.text();
        assert_eq!(status.code(), Some(1), "{args:?}; stderr:\n{stderr}");
        let expected = format!("tickrelay-server: invalid configuration: --{flag} ");
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected {expected:?} in stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("tickrelay listening"),
            "{args:?}: refused, yet it listened:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn process_logs_no_colour_codes_to_a_pipe() {
    let mut server = ServerProcess::start(&[], "info", Stderr::Collect);
    let addr = server.wait_listening().await;
    join_and_close(addr, "a").await;
    server.wait_log("connection closed").await;
    let log = server.log.bytes();
    assert!(
        !log.contains(&0x1b),
        "ESC (0x1b) in a log written to a pipe:\n{}",
        String::from_utf8_lossy(&log).escape_debug()
    );
}

#[tokio::test]
async fn process_logs_one_json_object_a_line_with_log_format_json() {
    let mut server = ServerProcess::start(&["--log-format", "json"], "info", Stderr::Collect);
    let addr = server.wait_listening().await;
    join_and_close(addr, "a").await;
    server.wait_log("connection closed").await;
    let log = server.log.text();
    let mut messages = Vec::new();
    for line in log.lines() {
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}\nwhole log:\n{log}"));
        assert!(json["level"].is_string(), "no level: {line}");
        let message = json["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        if message.starts_with("connection ") {
            assert_eq!(json["level"], "INFO", "{line}");
        }
        if message == "connection closed" {
            assert_eq!(json["fields"]["reason"], "peer_closed", "{line}");
        }
        messages.push(message.to_owned());
    }
    for expected in [
        "tickrelay listening",
        "connection opened",
        "connection closed",
    ] {
        assert!(
            messages.iter().any(|message| message == expected),
            "no {expected:?} line in:\n{log}"
        );
    }
}

/// Whether some thread of process `pid` is asleep inside `write(2)` on its stderr (fd 2), as
/// `/proc/PID/task/TID/{stat,syscall}` show it: on a pipe, that means the pipe is full. This
/// and the flood below are Linux-only (procfs, syscall numbers), as is the test using them.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn blocked_writing_stderr(pid: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    const SYS_WRITE: u32 = 1;
    #[cfg(target_arch = "aarch64")]
    const SYS_WRITE: u32 = 64;
    let write_to_stderr = format!("{SYS_WRITE} 0x2 ");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let read = |file| std::fs::read_to_string(task.path().join(file)).unwrap_or_default();
        // The state follows the parenthesised thread name, which may itself hold spaces.
        let sleeping = read("stat")
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'));
        sleeping && read("syscall").starts_with(&write_to_stderr)
    })
}

/// One connect/join/close cycle of the log flood, in lobby `lobby`. It never panics: against
/// a stalled server it fails or hangs (the caller bounds it), and the flood goes on.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
async fn flood_cycle(addr: SocketAddr, lobby: &str) -> Option<()> {
    let mut request = format!("ws://{addr}/ws").into_client_request().ok()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(Codec::Json.subprotocol()),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.ok()?;
    let join = format!(r#"{{"t":"join","lobby":"{lobby}","name":"n"}}"#);
    ws.send(Message::Text(join.into())).await.ok()?;
    loop {
        if let Message::Text(text) = ws.next().await?.ok()? {
            let message = Codec::Json.decode_server(text.as_bytes()).ok()?;
            if matches!(message, ServerMessage::Welcome { .. }) {
                break;
            }
        }
    }
    ws.close(None).await.ok()?;
    while let Some(Ok(_)) = ws.next().await {}
    Some(())
}

/// Runs flood cycles one after another, each client in a fresh lobby so that `RUST_LOG=debug`
/// adds the lobby's start and stop lines to the connection's opened and closed ones (about
/// 440 bytes of log a cycle); counts the cycles that completed. A pause between cycles keeps
/// the flood to at most 100 cycles a second a worker: enough to fill the pipe within a second,
/// not so many that thousands of sockets linger in TIME_WAIT.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
async fn flood(addr: SocketAddr, worker: usize, completed: Arc<AtomicUsize>) {
    for cycle in 0_u64.. {
        let lobby = format!("flood-{worker}-{cycle}");
        if let Ok(Some(())) = timeout(RECV_TIMEOUT, flood_cycle(addr, &lobby)).await {
            completed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_keeps_ticking_while_nobody_reads_its_log_pipe() {
    const TICK_HZ: u32 = 20;
    const FLOOD_WORKERS: usize = 4;
    /// Snapshots the watcher must get within `WINDOW` once the pipe is full: 30 in 3 s is
    /// half the tick rate, room for a loaded box but far from a stall's none.
    const MIN_SNAPSHOTS: usize = 30;
    const WINDOW: Duration = Duration::from_secs(3);

    let mut server = ServerProcess::start(
        &["--tick-hz", &TICK_HZ.to_string()],
        "debug",
        Stderr::LeftUnread,
    );
    let addr = server.wait_listening().await;
    assert!(server.unread.is_some(), "the stderr pipe was handed back");
    let pid = server.child.id();

    // The watcher notes when each snapshot arrives.
    let (mut watcher, _, _) = Client::join_at(addr, Codec::Json, "watch", "watcher").await;
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let watcher_arrivals = arrivals.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some(Ok(message)) = watcher.ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            if let Ok(ServerMessage::Snapshot(_)) = watcher.codec.decode_server(text.as_bytes()) {
                watcher_arrivals.lock().unwrap().push(Instant::now());
            }
        }
    });

    let completed = Arc::new(AtomicUsize::new(0));
    for worker in 0..FLOOD_WORKERS {
        tasks.spawn(flood(addr, worker, completed.clone()));
    }
    wait_until(WAIT_TIMEOUT, "the log pipe to fill up", async || {
        blocked_writing_stderr(pid)
    })
    .await;

    // From here on the pipe stays full, and the flood keeps logging into it.
    let full_at = Instant::now();
    let cycles_at_full = completed.load(Ordering::Relaxed);
    let in_window = || {
        let arrivals = arrivals.lock().unwrap();
        let window = full_at..=full_at + WINDOW;
        arrivals.iter().filter(|at| window.contains(at)).count()
    };
    wait_until(WAIT_TIMEOUT, "the snapshot window to pass", async || {
        in_window() >= MIN_SNAPSHOTS || Instant::now() > full_at + WINDOW
    })
    .await;
    let snapshots = in_window();
    assert!(
        snapshots >= MIN_SNAPSHOTS,
        "{snapshots} snapshots in the {WINDOW:?} after the log pipe filled, at {TICK_HZ} Hz"
    );

    // The server still takes joins, and the flood went on logging while the pipe was full.
    timeout(
        WAIT_TIMEOUT,
        Client::join_at(addr, Codec::Json, "late", "late"),
    )
    .await
    .expect("a new connection gets its welcome while the log pipe is full");
    let cycles_at_end = completed.load(Ordering::Relaxed);
    assert!(
        cycles_at_end > cycles_at_full,
        "no flood cycle completed while the pipe was full ({cycles_at_full} before it filled)"
    );
    assert!(
        blocked_writing_stderr(pid),
        "the log pipe is still full at the end"
    );
    tasks.abort_all();
}

#[tokio::test]
async fn process_out_of_file_descriptors_keeps_serving_live_clients_and_recovers() {
    // 64 files: the server's own (listener, epoll, runtime, pipes) leave room for a few dozen
    // connections, and connections past that hit EMFILE on accept.
    let mut server =
        ServerProcess::start_with_file_limit(&["--tick-hz", "20"], "info", Stderr::Collect, 64);
    let addr = server.wait_listening().await;
    let (mut live, _, _) = Client::join_at(addr, Codec::MessagePack, "live", "live").await;
    // Silent TCP connections: the kernel completes them all (the backlog is deep), the server
    // accepts until it runs out of descriptors.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    server.wait_log("accept failed").await;
    // The accept loop backs off instead of spinning: the live lobby keeps its tick rate.
    let started = Instant::now();
    for _ in 0..20 {
        live.next_snapshot().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "20 snapshots at 20 Hz took {:?} while accept failed",
        started.elapsed()
    );
    // Descriptors come back when the silent connections go, and a new client gets in.
    drop(silent);
    let (mut late, _, _) = Client::join_at(addr, Codec::MessagePack, "live", "late").await;
    late.next_snapshot().await;
    live.next_snapshot().await;
}

#[tokio::test]
async fn process_warns_when_admin_endpoints_or_unauthenticated_joins_are_public() {
    let unauthenticated = "joins are unauthenticated";
    // A wildcard address is not loopback: without --admin-listen and without a ticket key
    // the server says so.
    let mut server = ServerProcess::start(&["--listen", "0.0.0.0:0"], "info", Stderr::Collect);
    server.wait_listening().await;
    server.wait_log("--admin-listen").await;
    server.wait_log(unauthenticated).await;
    // With a ticket key it says that joins need tickets instead.
    let mut ticketed = ServerProcess::start_with_env(
        &["--listen", "0.0.0.0:0"],
        &[("TICKRELAY_TICKET_SECRET", TICKET_SECRET)],
    );
    ticketed.wait_listening().await;
    ticketed.wait_log("joins require a signed ticket").await;
    assert!(!ticketed.log.text().contains(unauthenticated));
    // On loopback (the quickstart) it warns about neither.
    let mut quiet = ServerProcess::start(&[], "info", Stderr::Collect);
    let addr = quiet.wait_listening().await;
    join_and_close(addr, "a").await;
    quiet.wait_log("connection closed").await;
    let text = quiet.log.text();
    assert!(
        !text.contains("--admin-listen") && !text.contains(unauthenticated),
        "{text}"
    );
}

#[tokio::test]
async fn process_reloads_its_tls_certificate_on_sighup() {
    let dir = crate::tls::temp_dir("sighup");
    let cert = crate::tls::make_cert(&dir, "server");
    let (cert_path, key_path) = (
        cert.cert_path.to_str().unwrap(),
        cert.key_path.to_str().unwrap(),
    );
    let args = [
        "--tls-cert",
        cert_path,
        "--tls-key",
        key_path,
        "--tls-reload-check",
        "0s",
    ];
    let mut server = ServerProcess::start(&args, "info", Stderr::Collect);
    server.wait_listening().await;
    server.wait_log("scheme=\"https\"").await;
    let hangup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hangup.success());
    server.wait_log("TLS certificate reloaded").await;
    assert!(
        server.log.text().contains("SIGHUP"),
        "{}",
        server.log.text()
    );
    // Still serving after the signal (the default action would have ended it).
    assert!(server.child.try_wait().unwrap().is_none());
    let _ = std::fs::remove_dir_all(dir);
}

const TICKET_SECRET: &str = "process-test-secret-0123456789abcdef";

/// `tickrelay-server ticket` with `args`, the secret in the environment; returns its stdout.
fn mint(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(SERVER_BIN);
    command.arg("ticket").args(args);
    without_tickrelay_env(&mut command)
        .envs(env.iter().copied())
        .output()
        .expect("run the ticket subcommand")
}

/// The caller's `TICKRELAY_*` variables are not passed on, so none can change what a test sees.
fn without_tickrelay_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TICKRELAY_") {
            command.env_remove(name);
        }
    }
    command
}

#[tokio::test]
async fn process_ticket_subcommand_signs_tickets_the_server_accepts() {
    let env = [("TICKRELAY_TICKET_SECRET", TICKET_SECRET)];
    let mut server = ServerProcess::start_with_env(&[], &env);
    let addr = server.wait_listening().await;
    let out = mint(&["--lobby", "arena", "--sub", "u1", "--name", "Ann"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ticket = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut client = Client::connect_to(addr, Codec::MessagePack).await;
    client
        .send(&tickrelay_protocol::ClientMessage::Join {
            lobby: "arena".into(),
            name: "whatever".into(),
            ticket: Some(ticket),
            role: None,
            resume: None,
            offset: None,
        })
        .await;
    match client.recv().await {
        ServerMessage::Welcome { members, .. } => assert_eq!(members[0].name, "Ann"),
        other => panic!("expected welcome, got {other:?}"),
    }

    // An Ed25519 key signs as well; no key at all, or a short secret, is a clear error.
    let keys = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../protocol/tests/keys/ed25519-test.pem"
    );
    let ed = mint(&["--lobby", "a", "--sub", "u", "--private-key", keys], &[]);
    assert!(
        ed.status.success(),
        "{}",
        String::from_utf8_lossy(&ed.stderr)
    );
    assert_eq!(String::from_utf8(ed.stdout).unwrap().split('.').count(), 3);
    let none = mint(&["--lobby", "a", "--sub", "u"], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("--ticket-secret"));
    let short = mint(
        &["--lobby", "a", "--sub", "u", "--ticket-secret", "short"],
        &[],
    );
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 32"));
}
