//! Lobbies: the sans-I/O state (`state`), the task that owns one lobby and ticks it (`actor`),
//! the slot through which a member's newest state reaches it (`input`), and the directory
//! that maps lobby names to running lobbies (`directory`).

mod actor;
mod directory;
mod input;
mod state;

pub use actor::bench_tick;
pub(crate) use actor::{Command, LobbyHandle, encode, unix_micros};
pub(crate) use directory::{Directory, JoinAccepted, JoinRequest, LobbyInfo, TrafficCounts};
pub(crate) use input::InputSlot;
