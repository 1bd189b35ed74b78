//! What the end-to-end benchmark, the soak and the fleet figures share about the processes
//! they run: building them, a guard that never leaves one behind, a free loopback port to put
//! them on, and waiting for them to get somewhere.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

/// The flags the soak and the fleet figures share: which binaries, and whether to record.
#[derive(Debug, clap::Args)]
pub struct RunOptions {
    /// Take `tickrelay-server` and `tickrelay-loadgen` from DIR instead of building them.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Do not append to benches/RESULTS.md.
    #[arg(long)]
    pub no_record: bool,
}

impl RunOptions {
    /// The directory of the binaries to run: `--bin-dir`, or the release build of the
    /// workspace at `root`, built now.
    pub fn binaries(&self, root: &Path) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => {
                build_release(root)?;
                Ok(root.join("target/release"))
            }
        }
    }

    /// Appends `table` to benches/RESULTS.md, unless `--no-record`.
    pub fn record(&self, root: &Path, table: &str) -> anyhow::Result<()> {
        if self.no_record {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("benches/RESULTS.md"))?;
        writeln!(file, "\n{table}")?;
        Ok(())
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the release server and load generator of the workspace at `root`.
pub fn build_release(root: &Path) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "tickrelay-server",
            "-p",
            "tickrelay-loadgen",
        ])
        .current_dir(root)
        .status()
        .context("running cargo build")?;
    ensure!(
        status.success(),
        "building the server and load generator failed"
    );
    Ok(())
}

/// Kills the child on drop, so a failed run never leaves a process behind.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free now (the caller binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `condition` every 200 ms until it holds; an error naming `what` after `timeout`.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
