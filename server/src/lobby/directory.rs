//! The lobby directory: finds or creates the lobby a `join` names, and forgets lobbies when
//! their last member leaves. It owns no game state; lobbies are reached through their actor's
//! command channel. [`Directory`] is the interface the rest of the server uses;
//! [`LocalDirectory`] is the single-node, in-process implementation (the fleet adds a
//! Redis-backed one behind the same interface).
//!
//! The retire handshake: a join counts itself as pending on the lobby's entry under the
//! directory's lock before it is sent to the actor; the actor marks it processed (under the
//! same lock) when it handles it. An empty lobby's actor retires only when no join is pending,
//! removing its entry under the lock, so a join is never sent to a lobby that stops unseen.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickrelay_protocol::{ErrorCode, Handoff};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::actor::{
    self, Actor, Command, Frozen, JoinAccepted, JoinRefusal, JoinRequest, LobbyHandle,
    LobbySettings, Registration,
};
use super::info::LobbyInfo;
use crate::lease::Lease;
use crate::matchmake::{MatchError, Matched, Placement, Pools, Seats};
use crate::sync::lock;

/// A join's eventual answer.
pub(crate) type JoinFuture<'a> =
    Pin<Box<dyn Future<Output = Result<JoinAccepted, JoinRefusal>> + Send + 'a>>;

/// Where lobbies are found and created.
pub(crate) trait Directory: Send + Sync {
    /// Joins `request.lobby`, creating it if needed. The lobby itself sends `welcome` (and
    /// the first keyframe) through the outbox; the caller gets the handle for further
    /// commands. Boxed: joins are rare, and an implementation may wait on the network.
    fn join(&self, request: JoinRequest) -> JoinFuture<'_>;

    /// Every lobby running here, sorted by name.
    fn list(&self) -> Vec<Arc<LobbyInfo>>;

    /// Places a player in matchmaking pool `pool`, whose lobbies hold `size` players (`None`:
    /// the pool's size, or `--max-lobby-size` for a new pool; see `matchmake.rs`); `player`
    /// names the player (a ticket's `sub`, or a random id).
    fn matchmake<'a>(
        &'a self,
        pool: &'a str,
        size: Option<usize>,
        player: &'a str,
    ) -> MatchFuture<'a>;

    /// Moves every lobby here to other nodes, within `timeout`, and stops taking new ones;
    /// `None` when there is nowhere to move them (a single node).
    fn drain(&self, timeout: Duration) -> DrainFuture<'_> {
        let _ = timeout;
        Box::pin(async { None })
    }
}

/// A matchmaking's eventual placement.
pub(crate) type MatchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Matched, MatchError>> + Send + 'a>>;

/// A drain's eventual report.
pub(crate) type DrainFuture<'a> = Pin<Box<dyn Future<Output = Option<DrainReport>> + Send + 'a>>;

/// What a drain did.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct DrainReport {
    pub(crate) moved: Vec<MovedLobby>,
    /// Lobbies still here when the drain gave up (no node to take them, Redis unreachable,
    /// or the timeout).
    pub(crate) stayed: Vec<String>,
    pub(crate) seconds: f64,
}

/// One lobby a drain moved.
#[derive(Debug, serde::Serialize)]
pub(crate) struct MovedLobby {
    pub(crate) lobby: String,
    pub(crate) node: String,
    pub(crate) members: usize,
    /// How long the lobby was frozen here: from the handoff's start to the redirects.
    pub(crate) frozen_ms: f64,
}

/// The single-node directory: a map from name to running lobby.
pub(crate) struct LocalDirectory {
    shared: Arc<Shared>,
}

struct Shared {
    lobbies: Mutex<HashMap<String, Arc<Entry>>>,
    /// Matchmaking pools; locked after `lobbies` when both are.
    pools: Mutex<Pools>,
    settings: LobbySettings,
    max_lobbies: usize,
    tracker: TaskTracker,
}

struct Entry {
    info: Arc<LobbyInfo>,
    handle: LobbyHandle,
    /// Joins routed to this lobby that its actor has not processed yet. Changed and read under
    /// the directory lock (see the module's retire handshake).
    pending_joins: AtomicUsize,
}

impl LocalDirectory {
    /// A directory whose lobbies run with `settings`, at most `max_lobbies` at once, as tasks
    /// of `tracker`; a matchmaking promise holds its seat for `promise_ttl`.
    pub(crate) fn new(
        settings: LobbySettings,
        max_lobbies: usize,
        promise_ttl: Duration,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                lobbies: Mutex::new(HashMap::new()),
                pools: Mutex::new(Pools::new(promise_ttl, max_lobbies)),
                settings,
                max_lobbies,
                tracker,
            }),
        }
    }

    /// Places `player` in `pool` among the lobbies running here (a fleet places it in Redis
    /// instead).
    pub(crate) fn place(
        &self,
        pool: &str,
        size: Option<usize>,
        player: &str,
    ) -> Result<Placement, MatchError> {
        let lobbies = lock(&self.shared.lobbies);
        let seats = |name: &str| {
            let (players, recent) = lobbies.get(name)?.info.seats();
            Some(Seats {
                players: players as usize,
                recent: recent as usize,
            })
        };
        let default = self.shared.settings.max_members;
        lock(&self.shared.pools).place(pool, size, default, player, Instant::now(), seats)
    }

    /// Players a lobby here holds at most (`--max-lobby-size`).
    pub(crate) fn max_members(&self) -> usize {
        self.shared.settings.max_members
    }

    /// The names of the lobbies running here.
    pub(crate) fn names(&self) -> Vec<String> {
        lock(&self.shared.lobbies).keys().cloned().collect()
    }

    /// Starts a lobby moved here from another node, under `lease`, unless one of its name
    /// runs here already (one stopping under a lease it lost): false then, and the handoff
    /// is not used.
    pub(crate) fn adopt(&self, handoff: Handoff, lease: Arc<Lease>) -> bool {
        let mut lobbies = lock(&self.shared.lobbies);
        if lobbies.contains_key(&handoff.lobby) {
            return false;
        }
        let name = handoff.lobby.clone();
        let entry = self.spawn_lobby(&name, Some(lease), Some(handoff));
        lobbies.insert(name, entry);
        true
    }

    /// Freezes lobby `name` for a move (see `Command::Move`); `None` if it stopped.
    pub(crate) async fn freeze(&self, name: &str) -> Option<Frozen> {
        let handle = lock(&self.shared.lobbies).get(name)?.handle.clone();
        let (reply, frozen) = oneshot::channel();
        handle.send(Command::Move { reply }).await.ok()?;
        frozen.await.ok()
    }

    /// Whether the lobby `name` runs here.
    pub(crate) fn runs(&self, name: &str) -> bool {
        lock(&self.shared.lobbies).contains_key(name)
    }

    /// Joins `request.lobby`; a lobby created for it runs only while `lease` is valid (a
    /// fleet's lease; `None`: for as long as it has members). A lobby already running keeps
    /// its own lease.
    pub(crate) fn join_leased(
        &self,
        request: JoinRequest,
        lease: Option<Arc<Lease>>,
    ) -> JoinFuture<'_> {
        Box::pin(async move {
            let entry = self.route(&request.lobby, request.resume.is_some(), lease)?;
            let pending = PendingJoin {
                shared: &self.shared,
                entry: &entry,
                delivered: false,
            };
            let (reply, accepted) = oneshot::channel();
            let stopped = || JoinRefusal::new(ErrorCode::Unknown, "lobby stopped".to_owned());
            let command = Command::Join {
                request: Box::new(request),
                reply,
            };
            entry.handle.send(command).await.map_err(|_| stopped())?;
            pending.delivered();
            accepted.await.map_err(|_| stopped())?
        })
    }

    /// Finds the lobby, or creates it unless this is a resume (a resumed seat's lobby must
    /// still be there), and counts a join on its way to it.
    fn route(
        &self,
        name: &str,
        resume: bool,
        lease: Option<Arc<Lease>>,
    ) -> Result<Arc<Entry>, JoinRefusal> {
        let shared = &self.shared;
        let mut lobbies = lock(&shared.lobbies);
        let entry = match lobbies.get(name) {
            Some(entry) => entry.clone(),
            None if resume => return Err(JoinRefusal::lobby_gone(name)),
            None => {
                if lobbies.len() >= shared.max_lobbies {
                    return Err(JoinRefusal::new(
                        ErrorCode::TooManyLobbies,
                        format!(
                            "server already runs its maximum of {} lobbies",
                            shared.max_lobbies
                        ),
                    ));
                }
                let entry = self.spawn_lobby(name, lease, None);
                lobbies.insert(name.to_owned(), entry.clone());
                entry
            }
        };
        entry.pending_joins.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    fn spawn_lobby(
        &self,
        name: &str,
        lease: Option<Arc<Lease>>,
        moved: Option<Handoff>,
    ) -> Arc<Entry> {
        let shared = &self.shared;
        let info = Arc::new(LobbyInfo::new(name.to_owned(), shared.settings.tick_hz));
        let (handle, inbox) = actor::channel();
        let entry = Arc::new(Entry {
            info: info.clone(),
            handle: handle.clone(),
            pending_joins: AtomicUsize::new(0),
        });
        let registration = LocalRegistration {
            shared: shared.clone(),
            entry: entry.clone(),
            lease,
        };
        let lobby = Actor::new(
            shared.settings.clone(),
            info,
            Box::new(registration),
            handle,
            moved,
        );
        shared.settings.metrics.lobbies.inc();
        shared.tracker.spawn(lobby.run(inbox));
        entry
    }
}

impl Directory for LocalDirectory {
    fn join(&self, request: JoinRequest) -> JoinFuture<'_> {
        self.join_leased(request, None)
    }

    fn matchmake<'a>(
        &'a self,
        pool: &'a str,
        size: Option<usize>,
        player: &'a str,
    ) -> MatchFuture<'a> {
        let placed = self.place(pool, size, player).map(|placement| Matched {
            placement,
            node: None,
        });
        Box::pin(async move { placed })
    }

    fn list(&self) -> Vec<Arc<LobbyInfo>> {
        let mut list: Vec<_> = lock(&self.shared.lobbies)
            .values()
            .map(|entry| entry.info.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

/// A join counted as pending on its lobby's entry. Once the command is delivered the actor
/// takes the count back (`join_processed`); if it never is (the lobby stopped, or the caller
/// gave up on the join midway), dropping this does, so the lobby can still retire.
struct PendingJoin<'a> {
    shared: &'a Shared,
    entry: &'a Entry,
    delivered: bool,
}

impl PendingJoin<'_> {
    fn delivered(mut self) {
        self.delivered = true;
    }
}

impl Drop for PendingJoin<'_> {
    fn drop(&mut self) {
        if !self.delivered {
            let _lobbies = lock(&self.shared.lobbies);
            self.entry.pending_joins.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A lobby's link back to the local directory.
struct LocalRegistration {
    shared: Arc<Shared>,
    entry: Arc<Entry>,
    /// The fleet lease the lobby runs under, if any: held (counted) until the actor ends.
    lease: Option<Arc<Lease>>,
}

impl Registration for LocalRegistration {
    fn join_processed(&self) {
        let _lobbies = lock(&self.shared.lobbies);
        self.entry.pending_joins.fetch_sub(1, Ordering::Relaxed);
    }

    fn try_retire(&self) -> bool {
        let mut lobbies = lock(&self.shared.lobbies);
        let entry = &self.entry;
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

    fn may_run(&self, now: Instant) -> bool {
        self.lease.as_ref().is_none_or(|lease| lease.valid(now))
    }

    fn report(&self, progress: crate::lease::Progress) {
        if let Some(lease) = &self.lease {
            lease.report(progress);
        }
    }

    fn stopped(&self) {
        let mut lobbies = lock(&self.shared.lobbies);
        let entry = &self.entry;
        if lobbies
            .get(&entry.info.name)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            lobbies.remove(&entry.info.name);
        }
    }
}
