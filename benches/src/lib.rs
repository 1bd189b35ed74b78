//! Support for tickrelay's benchmarks: the end-to-end benchmark's process sampling and
//! statistics (see `src/bin/e2e.rs`), shared by its presets, `src/bin/sends.rs` and the soak
//! (`src/bin/soak.rs`), and the processes they run.

pub mod processes;
pub mod procfs;
pub mod summary;
