//! What the end-to-end benchmark and the soak share about the processes they run: building
//! them, a guard that never leaves one behind, and a free loopback port to put them on.

use std::path::Path;
use std::process::{Child, Command};

use anyhow::{Context as _, ensure};

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
