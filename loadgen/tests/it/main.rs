//! tickrelay-loadgen integration tests: the real binary against a real server on loopback.

mod support;

mod runs;
mod slo_gates;
