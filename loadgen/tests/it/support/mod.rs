//! Helpers: a real tickrelay server in the test process (`server`, with the `self-host`
//! feature), a silent stand-in that welcomes clients and never sends a snapshot (`silent`),
//! the upgrade such stand-ins accept, and the loadgen binary as a child.

#[cfg(feature = "self-host")]
mod server;
mod silent;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

#[cfg(feature = "self-host")]
pub(crate) use server::{TestServer, spawn_server, spawn_server_with};
pub(crate) use silent::{echo_msgpack_subprotocol, spawn_silent_server};

/// A debug build on a busy two-core box can be slow; a run that takes longer than this hangs.
const RUN_DEADLINE: Duration = Duration::from_secs(90);

fn loadgen_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickrelay-loadgen"));
    command.args(args).kill_on_drop(true);
    command
}

async fn finish(mut command: tokio::process::Command) -> Output {
    tokio::time::timeout(RUN_DEADLINE, command.output())
        .await
        .expect("loadgen finished in time")
        .expect("loadgen ran")
}

/// Runs the loadgen binary with `args`, bounded in time.
pub(crate) async fn loadgen(args: &[&str]) -> Output {
    finish(loadgen_command(args)).await
}

/// Runs the loadgen binary with its RLIMIT_NOFILE (soft and hard) set to `max_open_files`,
/// whatever this machine's limit is.
#[cfg(feature = "self-host")]
pub(crate) async fn loadgen_with_open_file_limit(args: &[&str], max_open_files: u64) -> Output {
    let mut command = loadgen_command(args);
    // SAFETY: the closure runs in the child between fork and exec; it only calls setrlimit,
    // which is async-signal-safe, and builds an io::Error from errno without allocating.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: max_open_files,
                rlim_max: max_open_files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    finish(command).await
}

/// Runs the loadgen binary quietly with `args` plus `--json FILE`; returns its output and the
/// JSON report it wrote.
pub(crate) async fn loadgen_report(args: &[&str]) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = temp_path(&dir, "report.json");
    let mut args = args.to_vec();
    args.extend(["--quiet", "--json", json.to_str().unwrap()]);
    let output = loadgen(&args).await;
    assert!(
        json.exists(),
        "no report written
{}",
        describe(&output)
    );
    (output, read_json(&json))
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
