//! Support for tickrelay's benchmarks: the end-to-end benchmark's process sampling and
//! statistics (see `src/bin/e2e.rs`), shared by its presets, `src/bin/sends.rs`, the soak
//! (`src/bin/soak.rs`) and the fleet figures (`src/bin/fleet.rs`), the processes they run,
//! and the plain sockets they use on the side (`wire`).

pub mod processes;
pub mod procfs;
pub mod summary;
pub mod wire;
