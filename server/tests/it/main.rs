//! tickrelay server integration tests: a real server on loopback, real WebSocket clients.

mod support;

mod admission;
mod browser;
mod echo;
mod faults;
mod fleet;
mod http;
mod limits;
mod lobby;
mod matchmaking;
mod process;
mod resume;
mod robustness;
mod slow_consumers;
mod tickets;
mod tls;
