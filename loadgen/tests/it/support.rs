//! Helpers: a real tickrelay server in the test process, and the loadgen binary as a child.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use tickrelay_server::Config;
use tokio_util::sync::CancellationToken;

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestServer {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn spawn_server(tick_hz: u32) -> TestServer {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tick_hz,
        ..Config::default()
    };
    let listener = tickrelay_server::bind(config.listen).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(tickrelay_server::run(listener, config, shutdown.clone()));
    TestServer { addr, shutdown }
}

/// Runs the loadgen binary with `args`, bounded in time.
pub(crate) async fn loadgen(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickrelay-loadgen"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(90), child)
        .await
        .expect("loadgen finished in time")
        .expect("loadgen ran")
}

pub(crate) fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written"))
        .expect("valid JSON")
}

pub(crate) fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub(crate) fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
