//! The lobby directory: finds or creates the lobby a `join` names, and removes lobbies when
//! their last member leaves. It owns no game state; lobbies are reached through their actor's
//! command channel. Later this is where a node consults the fleet-wide directory (Redis).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tickrelay_protocol::{Codec, ErrorCode, Member, PlayerId};
use tokio::sync::{mpsc, oneshot};

use super::actor::{self, Command, LobbyHandle};
use super::input::InputSlot;
use crate::outbox::Outbox;
use crate::{ServerContext, lock};

/// What a connection asks for when it joins.
pub(crate) struct JoinRequest {
    pub(crate) lobby: String,
    pub(crate) name: String,
    pub(crate) codec: Codec,
    pub(crate) outbox: Arc<Outbox>,
    /// Where the connection puts its states for the lobby to take at tick time.
    pub(crate) input: Arc<InputSlot>,
}

/// A successful join: where to send this player's commands from now on.
pub(crate) struct JoinAccepted {
    pub(crate) lobby: LobbyHandle,
    pub(crate) key: usize,
    pub(crate) player_id: PlayerId,
}

/// A lobby as the directory (and `/lobbies`) sees it.
pub(crate) struct LobbyInfo {
    pub(crate) name: String,
    pub(crate) tick_hz: u32,
    pub(crate) created: Instant,
    pub(crate) created_unix: SystemTime,
    /// Current roster, refreshed by the lobby's actor on every join and leave.
    pub(crate) members: Mutex<Vec<Member>>,
    /// Traffic since the lobby was created, added by its actor once per tick.
    pub(crate) traffic: LobbyTraffic,
}

impl LobbyInfo {
    pub(crate) fn roster(&self) -> Vec<Member> {
        lock(&self.members).clone()
    }

    pub(crate) fn member_count(&self) -> usize {
        lock(&self.members).len()
    }
}

/// A lobby's traffic counters. Only its actor adds to them, once per tick (never per member or
/// per message), so they cost a handful of uncontended atomic adds per tick.
#[derive(Default)]
pub(crate) struct LobbyTraffic {
    pub(crate) ticks: AtomicU64,
    /// `state` messages the lobby received.
    pub(crate) states_in: AtomicU64,
    /// `event` messages the lobby received (each relayed to every member).
    pub(crate) events_in: AtomicU64,
    /// Snapshots handed to members' outboxes.
    pub(crate) snapshots_out: AtomicU64,
    /// Every message handed to members' outboxes: snapshots, events, welcomes, member news.
    pub(crate) messages_out: AtomicU64,
    /// The bytes of those messages.
    pub(crate) bytes_out: AtomicU64,
}

/// Plain copies of [`LobbyTraffic`], for reading and for the actor's per-tick accumulation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TrafficCounts {
    pub(crate) ticks: u64,
    pub(crate) states_in: u64,
    pub(crate) events_in: u64,
    pub(crate) snapshots_out: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_out: u64,
}

impl LobbyTraffic {
    /// Adds counts accumulated since the last call (the actor calls this once per tick).
    pub(crate) fn add(&self, counts: &TrafficCounts) {
        let pairs = [
            (&self.ticks, counts.ticks),
            (&self.states_in, counts.states_in),
            (&self.events_in, counts.events_in),
            (&self.snapshots_out, counts.snapshots_out),
            (&self.messages_out, counts.messages_out),
            (&self.bytes_out, counts.bytes_out),
        ];
        for (counter, value) in pairs {
            if value > 0 {
                counter.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn get(&self) -> TrafficCounts {
        TrafficCounts {
            ticks: self.ticks.load(Ordering::Relaxed),
            states_in: self.states_in.load(Ordering::Relaxed),
            events_in: self.events_in.load(Ordering::Relaxed),
            snapshots_out: self.snapshots_out.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Entry {
    pub(crate) info: Arc<LobbyInfo>,
    commands: mpsc::Sender<Command>,
    /// Joins routed to this lobby that its actor has not processed yet. Changed and read under
    /// the directory lock, so a lobby is only removed when no join is on its way to it.
    pending_joins: AtomicUsize,
}

#[derive(Default)]
pub(crate) struct Directory {
    lobbies: Mutex<HashMap<String, Arc<Entry>>>,
}

/// Directory critical sections cannot panic; a poisoned lock still holds consistent data.
impl Directory {
    /// Joins `request.lobby`, creating it if needed. The lobby itself sends `welcome` (and the
    /// first keyframe) through the outbox; the caller gets the handle for further commands.
    pub(crate) async fn join(
        &self,
        ctx: &Arc<ServerContext>,
        request: JoinRequest,
    ) -> Result<JoinAccepted, (ErrorCode, String)> {
        let entry = {
            let mut lobbies = lock(&self.lobbies);
            let entry = match lobbies.get(&request.lobby) {
                Some(entry) => entry.clone(),
                None => {
                    if lobbies.len() >= ctx.config.max_lobbies {
                        return Err((
                            ErrorCode::TooManyLobbies,
                            format!(
                                "server already runs its maximum of {} lobbies",
                                ctx.config.max_lobbies
                            ),
                        ));
                    }
                    let entry = self.spawn_lobby(ctx, request.lobby.clone());
                    lobbies.insert(request.lobby.clone(), entry.clone());
                    entry
                }
            };
            entry.pending_joins.fetch_add(1, Ordering::Relaxed);
            entry
        };
        let (reply, accepted) = oneshot::channel();
        let sent = entry
            .commands
            .send(Command::Join {
                request: Box::new(request),
                reply,
            })
            .await;
        let internal = || (ErrorCode::Unknown, "lobby stopped".to_owned());
        sent.map_err(|_| internal())?;
        accepted.await.map_err(|_| internal())?
    }

    fn spawn_lobby(&self, ctx: &Arc<ServerContext>, name: String) -> Arc<Entry> {
        let (commands, inbox) = mpsc::channel(actor::INBOX_CAPACITY);
        let entry = Arc::new(Entry {
            info: Arc::new(LobbyInfo {
                name,
                tick_hz: ctx.config.tick_hz,
                created: Instant::now(),
                created_unix: SystemTime::now(),
                members: Mutex::new(Vec::new()),
                traffic: LobbyTraffic::default(),
            }),
            commands: commands.clone(),
            pending_joins: AtomicUsize::new(0),
        });
        ctx.metrics.lobbies.inc();
        actor::spawn(
            ctx.clone(),
            entry.clone(),
            LobbyHandle::new(commands),
            inbox,
        );
        entry
    }

    /// Called by a lobby's actor after processing a join.
    pub(crate) fn join_processed(&self, entry: &Entry) {
        let _lobbies = lock(&self.lobbies);
        entry.pending_joins.fetch_sub(1, Ordering::Relaxed);
    }

    /// Called by an empty lobby's actor: removes the lobby unless a join is on its way.
    /// Returns true when the actor must stop.
    pub(crate) fn retire_if_unused(&self, entry: &Arc<Entry>) -> bool {
        let mut lobbies = lock(&self.lobbies);
        if entry.pending_joins.load(Ordering::Relaxed) > 0 {
            return false;
        }
        if lobbies
            .get(&entry.info.name)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            lobbies.remove(&entry.info.name);
        }
        true
    }

    /// Every running lobby, for `/lobbies`.
    pub(crate) fn list(&self) -> Vec<Arc<LobbyInfo>> {
        let mut list: Vec<_> = lock(&self.lobbies)
            .values()
            .map(|entry| entry.info.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

impl Entry {
    pub(crate) fn set_roster(&self, roster: Vec<Member>) {
        *lock(&self.info.members) = roster;
    }
}
