//! Helpers: a real tickrelay server in the test process (`server`, with the `self-host`
//! feature), a silent stand-in that welcomes clients and never sends a snapshot (`silent`),
//! and the loadgen binary as a child.

#[cfg(feature = "self-host")]
mod server;
mod silent;

use std::path::{Path, PathBuf};
use std::process::Output;

#[cfg(feature = "self-host")]
pub(crate) use server::spawn_server;
pub(crate) use silent::spawn_silent_server;

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
