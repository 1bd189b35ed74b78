//! tickrelay-loadgen integration tests: the real binary against a real server on loopback
//! (those need the `self-host` feature, which brings the server crate) or a stand-in.

mod support;

#[cfg(feature = "self-host")]
mod distributed;
#[cfg(feature = "self-host")]
mod fleet;
mod redirects;
#[cfg(feature = "self-host")]
mod runs;
mod slo_gates;
#[cfg(feature = "self-host")]
mod storm;
#[cfg(feature = "self-host")]
mod tickets;
#[cfg(not(feature = "self-host"))]
mod without_self_host;
#[cfg(feature = "self-host")]
mod wss;
