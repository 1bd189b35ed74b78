//! Lobbies: the sans-I/O state (`state`) and tick schedule (`schedule`), the task that owns
//! one lobby and ticks it (`actor`), the slot through which a member's newest state reaches it
//! (`input`), the lobby's public face (`info`), and the directory that maps lobby names to
//! running lobbies (`directory`).

mod actor;
pub(crate) mod directory;
mod history;
mod info;
mod input;
mod schedule;
mod state;

pub use actor::bench_tick;
pub(crate) use actor::{
    Command, JoinAccepted, JoinRefusal, JoinRequest, LobbyHandle, LobbySettings, LobbyStopped,
    ResumeRequest, ResumeSettings,
};
pub(crate) use directory::{Directory, LocalDirectory};
pub(crate) use history::HistoryLimits;
pub(crate) use info::{LobbyInfo, TrafficCounts};
pub(crate) use input::InputSlot;
pub(crate) use state::{Joiner, Seat};
