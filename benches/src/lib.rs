//! Support for tickrelay's benchmarks: the end-to-end benchmark's process sampling and
//! statistics (see `src/bin/e2e.rs`), shared by its presets and by `src/bin/sends.rs`.

pub mod procfs;
pub mod summary;
