//! Fleet mode (`--redis`): many nodes share one lobby directory in Redis. A lobby runs on
//! exactly one node, the holder of its lease (`crate::lease`); `/route` tells clients which
//! node that is (placing new lobbies on the least-loaded live node), and a join that reaches
//! another node is answered `wrong_node` with the owner's URL. Each node's heartbeat
//! registers it and renews all its leases about once a second (at least three times per
//! `--lease`), never per tick.
//!
//! A drain (SIGTERM, or `POST /drain`) moves each live lobby to another node without
//! dropping its seats: the lobby freezes and hands over what it did (`Handoff`); one Redis
//! script checks the lease is still this node's, places the lobby on the least-loaded other
//! node and leaves the handoff beside it; then the members are sent `redirect` and resume
//! there, where the first to arrive claims the placement and starts the lobby from the
//! handoff (same instance, seats, player ids, history, tick count).
//!
//! `store` owns the Redis schema and commands; this module owns the node's side: which
//! leases it holds, the heartbeat task, and [`FleetDirectory`], the [`Directory`] that asks
//! Redis before a lobby is created here.

mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickrelay_protocol::Handoff;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lease::{Lease, Progress};
use crate::lobby::directory::{DrainFuture, DrainReport, JoinFuture, MatchFuture, MovedLobby};
use crate::lobby::{Directory, JoinRefusal, JoinRequest, LobbyInfo, LocalDirectory};
use crate::matchmake::{MatchError, Matched, Placement};
use crate::metrics::Metrics;
use crate::sync::lock;
pub(crate) use store::NodeStatus;
use store::{Claim, Moved, Pooled, Renewal, Store, StoreError};

/// How long a client told Redis is unavailable should wait.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// This node's membership of the fleet.
pub(crate) struct Fleet {
    pub(crate) node_id: String,
    /// The WebSocket URL clients are sent to for this node's lobbies.
    pub(crate) public_url: String,
    store: Store,
    lease: Duration,
    /// Leases this node holds, by lobby name.
    held: Mutex<HashMap<String, Arc<Lease>>>,
    /// Claims in Redis go one at a time: two joins creating one lobby here must share its
    /// lease. (A lease already held is handed out without it.)
    claiming: tokio::sync::Mutex<()>,
    /// How long a moved lobby's handoff waits in Redis for its members (the resume grace).
    handoff_keep: Duration,
    /// A drain started: out of placement, and no lobby starts here any more (new, moved or
    /// rebuilt); joins of lobbies not running here are sent where the route points.
    draining: AtomicBool,
    /// How long a matchmaking promise holds its seat.
    promise: Duration,
    metrics: Arc<Metrics>,
}

/// Why a route could not be answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("the lobby directory is unavailable ({0}); retry shortly")]
    Unavailable(#[from] StoreError),
    #[error("no live node to place the lobby on")]
    NoNode,
    #[error("the node that ran the lobby stopped answering; its lease ends within {0:?}")]
    OwnerGone(Duration),
}

/// Why a drain could not move a lobby.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error(transparent)]
    Unavailable(#[from] StoreError),
    #[error("no other live node to move lobbies to")]
    NoNode,
    #[error("the node chosen left placement or stopped answering")]
    TargetGone,
}

/// How long a drain keeps looking for another node when there is none (a peer's heartbeat
/// may be a beat late) before it gives up.
const NO_NODE_PATIENCE: Duration = Duration::from_secs(3);

/// Where `/route` sends a client.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Route {
    pub(crate) lobby: String,
    /// The owner's node id (none on a single node).
    pub(crate) node: Option<String>,
    pub(crate) url: String,
}

impl Fleet {
    /// This node in the fleet on `redis_url`. Nothing is sent before [`Fleet::run`].
    pub(crate) fn new(
        redis_url: &str,
        node_id: String,
        public_url: String,
        lease: Duration,
        handoff_keep: Duration,
        promise: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self {
            promise,
            node_id,
            public_url,
            // A command waits at most a third of a lease (and a second): a renewal that
            // fails still leaves time for the next.
            store: Store::new(redis_url, (lease / 3).min(Duration::from_secs(1)))?,
            lease,
            held: Mutex::new(HashMap::new()),
            claiming: tokio::sync::Mutex::new(()),
            handoff_keep: handoff_keep.max(lease),
            draining: AtomicBool::new(false),
            metrics,
        })
    }

    /// About once a second, and at least three times per lease.
    fn heartbeat_interval(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(1))
    }

    /// The lease to run `lobby` here under, or why not: the one held if still valid, else a
    /// new claim in Redis. With `moved_only` (a resume, which never creates a lobby) only a
    /// lobby a drain moved here, or one whose node died, is claimed. A claim that takes a
    /// handoff calls `adopt` with it, before any other join can find the lease, so the moved
    /// lobby is the one started.
    async fn claim(
        &self,
        lobby: &str,
        moved_only: bool,
        adopt: impl FnOnce(Handoff, Arc<Lease>),
    ) -> Result<Arc<Lease>, JoinRefusal> {
        if let Some(lease) = self.held_valid(lobby) {
            return Ok(lease);
        }
        let (node, remaining) = {
            let _one_at_a_time = self.claiming.lock().await;
            if let Some(lease) = self.held_valid(lobby) {
                return Ok(lease);
            }
            let sent = now();
            let claim = self
                .store
                .claim(lobby, &self.node_id, self.lease, moved_only)
                .await;
            match claim {
                Ok(Claim::Ours {
                    record,
                    handoff,
                    progress,
                    pool,
                }) => {
                    self.metrics.fleet_lease("acquired");
                    let lease = Arc::new(Lease::granted(record, pool, sent, self.lease));
                    if let Some(handoff) = self.handoff_of(lobby, handoff, progress) {
                        adopt(handoff, lease.clone());
                    }
                    lock(&self.held).insert(lobby.to_owned(), lease.clone());
                    return Ok(lease);
                }
                Ok(Claim::NoHandoff) => return Err(JoinRefusal::lobby_gone(lobby)),
                Ok(Claim::Theirs { node, remaining }) => (node, remaining),
                Err(err) => return Err(unavailable(&err)),
            }
        };
        Err(self.refer(lobby, &node, remaining).await)
    }

    /// What a granted claim starts `lobby` from: the handoff a drain left, or else the
    /// lobby rebuilt from the progress its dead owner last reported; `None`: a new lobby.
    fn handoff_of(
        &self,
        lobby: &str,
        handoff: Option<Vec<u8>>,
        progress: Option<String>,
    ) -> Option<Handoff> {
        if let Some(bytes) = handoff {
            match Handoff::decode(&bytes) {
                Ok(handoff) => {
                    self.metrics.fleet_lease("adopted");
                    info!(lobby, seats = handoff.seats.len(), "lobby moved here");
                    return Some(handoff);
                }
                Err(err) => {
                    warn!(lobby, error = %err, "a moved lobby's handoff is unusable: the lobby starts afresh");
                }
            }
        }
        let progress = progress.as_deref().and_then(Progress::decode)?;
        self.metrics.fleet_lease("recovered");
        info!(
            lobby,
            "the lobby's node died: rebuilt here, its players resume one by one"
        );
        Some(progress.recovered(lobby))
    }

    /// The lease held for `lobby`, if still valid (cloned under the map's lock, so the renew
    /// loop never gives up a lease a join is about to use).
    fn held_valid(&self, lobby: &str) -> Option<Arc<Lease>> {
        lock(&self.held)
            .get(lobby)
            .filter(|lease| lease.valid(now()))
            .cloned()
    }

    /// A draining node's answer to a join of a lobby it does not run: where the route
    /// points (never here: a draining node is out of placement).
    async fn send_elsewhere(&self, lobby: &str) -> JoinRefusal {
        match self.route(lobby).await {
            Ok(route) if route.node.as_deref() != Some(&self.node_id) => JoinRefusal::wrong_node(
                route.url,
                format!("this node is draining: lobby {lobby:?} is placed elsewhere"),
            ),
            Ok(_) => JoinRefusal::retry(
                format!("this node is draining; lobby {lobby:?} cannot start here"),
                RETRY_AFTER,
            ),
            Err(RouteError::Unavailable(err)) => unavailable(&err),
            Err(err) => JoinRefusal::retry(err.to_string(), RETRY_AFTER),
        }
    }

    /// The refusal for a join of `lobby`, which `node` holds for up to `remaining`.
    async fn refer(&self, lobby: &str, node: &str, remaining: Duration) -> JoinRefusal {
        if node == self.node_id {
            // A record of this node id that no lease here stands for: an earlier process's,
            // one whose lease ran out here (the lobby stopped), or a claim whose answer timed
            // out. Nobody may run it until Redis lets it go.
            return JoinRefusal::retry(
                format!(
                    "lobby {lobby:?} is still leased to this node in Redis by a lease it no \
                     longer runs under; it can be claimed again once that lease ends"
                ),
                remaining.max(RETRY_AFTER),
            );
        }
        match self.store.node(node).await {
            Ok(Some(owner)) => JoinRefusal::wrong_node(
                owner.url,
                format!("lobby {lobby:?} runs on node {node:?}: join there"),
            ),
            Ok(None) => JoinRefusal::retry(
                format!(
                    "lobby {lobby:?} was on node {node:?}, which stopped answering; it can be \
                     taken over once its lease ends"
                ),
                remaining.max(RETRY_AFTER),
            ),
            Err(err) => unavailable(&err),
        }
    }

    /// Which node runs `lobby`, placing it on the least-loaded live node if none does.
    pub(crate) async fn route(&self, lobby: &str) -> Result<Route, RouteError> {
        let node = match self.store.owner(lobby).await? {
            Some(node) => node,
            None => {
                let least = self
                    .store
                    .least_loaded("")
                    .await?
                    .ok_or(RouteError::NoNode)?;
                self.store.place(lobby, &least, self.lease).await?
            }
        };
        let status = self.store.node(&node).await?;
        let Some(status) = status else {
            return Err(RouteError::OwnerGone(self.lease));
        };
        Ok(Route {
            lobby: lobby.to_owned(),
            node: Some(node),
            url: status.url,
        })
    }

    /// Places `player` in `pool`, whose lobbies hold `size` (or the pool's; `default` for a
    /// new pool): the fleet-wide count in Redis decides the lobby, routing decides its node.
    pub(crate) async fn matchmake(
        &self,
        pool: &str,
        size: Option<usize>,
        default: usize,
        player: &str,
    ) -> Result<Matched, MatchError> {
        let unavailable = |err: RouteError| MatchError::Unavailable {
            retry: match err {
                RouteError::OwnerGone(wait) => wait,
                _ => RETRY_AFTER,
            },
            reason: err.to_string(),
        };
        let pooled = self
            .store
            .matchmake(pool, size, default, player, self.promise, self.pool_keep())
            .await
            .map_err(|err| unavailable(RouteError::Unavailable(err)))?;
        let (lobby, seats, size, opened) = match pooled {
            Pooled::Placed {
                lobby,
                count,
                size,
                opened,
            } => (lobby, count, size, opened),
            Pooled::OtherSize(size) => {
                return Err(MatchError::OtherSize {
                    pool: pool.to_owned(),
                    size,
                });
            }
        };
        let route = self.route(&lobby).await.map_err(unavailable)?;
        Ok(Matched {
            placement: Placement {
                lobby,
                seats,
                size,
                opened,
            },
            node: route.node.map(|node| (node, route.url)),
        })
    }

    /// How long a pool's lobby no owner renews stays in it, and a pool nobody uses stays in
    /// Redis: past a lease, the resume grace (its players may come back) and a promise.
    fn pool_keep(&self) -> Duration {
        self.lease + self.handoff_keep + self.promise
    }

    /// A page of the live nodes, by load, and how many there are.
    pub(crate) async fn nodes(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<NodeStatus>, usize), StoreError> {
        self.store.nodes(offset, limit).await
    }

    /// Heartbeats and lease renewals until `shutdown`, then gives every lease up and leaves
    /// the directory. `status` describes this node at each beat.
    pub(crate) async fn run(
        self: Arc<Self>,
        status: impl Fn() -> (u64, u64) + Send,
        shutdown: CancellationToken,
    ) {
        info!(node = %self.node_id, url = %self.public_url, lease = ?self.lease, "fleet mode: lobbies are leased through redis");
        let mut beat = tokio::time::interval(self.heartbeat_interval());
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redis_ok = true;
        loop {
            tokio::select! {
                _ = beat.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let (lobbies, connections) = status();
            let node = NodeStatus {
                id: self.node_id.clone(),
                url: self.public_url.clone(),
                lobbies,
                connections,
            };
            let listed = !self.draining.load(Ordering::Acquire);
            let result = async {
                // Two beats: a dead node leaves placement before its leases run out, so a
                // lobby it held is never placed back on it.
                self.store
                    .heartbeat(&node, 2 * self.heartbeat_interval(), listed)
                    .await?;
                self.renew().await
            }
            .await;
            match (result, redis_ok) {
                (Ok(()), false) => {
                    info!("redis is back: leases renewed, routing resumed");
                    redis_ok = true;
                }
                (Err(err), true) => {
                    warn!(error = %err, "redis unreachable: lobbies here stop when their leases end, new lobbies and routes are refused");
                    self.metrics.fleet_redis_errors.inc();
                    redis_ok = false;
                }
                (Err(_), false) => {
                    self.metrics.fleet_redis_errors.inc();
                }
                (Ok(()), true) => {}
            }
        }
        self.leave().await;
    }

    /// Renews every lease in use, then gives up those nothing uses any more (their lobby
    /// stopped, or the join that claimed one was refused).
    async fn renew(&self) -> Result<(), StoreError> {
        let sent = now();
        let in_use = {
            // Claims wait while unused leases are given up: one that came between a lease
            // leaving the map and its record leaving Redis would find this node's own record
            // with no lease behind it, and be told to wait out the lease (a lobby that
            // emptied and is joined again at once, as a matchmaking pool's are).
            let _claims_wait = self.claiming.lock().await;
            let (in_use, unused) = self.sort_held(sent);
            self.release(&unused).await;
            in_use
        };
        let records: Vec<_> = in_use
            .iter()
            .map(|(name, lease)| Renewal {
                lobby: name.clone(),
                record: lease.record.clone(),
                progress: lease.progress().map(|p| p.encode()).unwrap_or_default(),
                pool: lease.pool.clone(),
            })
            .collect();
        let renewed = self
            .store
            .renew(
                &records,
                self.lease,
                self.handoff_keep + self.lease,
                self.pool_keep(),
            )
            .await?;
        self.metrics
            .fleet_lease_renewals
            .inc_by(records.len() as u64);
        for ((name, lease), still_ours) in in_use.iter().zip(renewed) {
            if still_ours {
                lease.renewed(sent, self.lease);
            } else if lease.valid(now()) {
                // (A lobby a drain moved while this renewal was on its way is given up
                // already: nothing to say.)
                warn!(lobby = %name, "lease lost: another node holds the lobby, it stops here");
                self.metrics.fleet_lease("lost");
                lease.lose();
            }
        }
        Ok(())
    }

    /// Splits the map: the valid leases something uses (to renew), and those only the map
    /// holds, which leave it here (to release). Under the map's lock, which every clone is
    /// taken under: a lease that leaves has no user, and a later claim asks Redis anew (a new
    /// fence). Leases in use but no longer valid are neither: their lobbies are stopping.
    #[allow(clippy::type_complexity)]
    fn sort_held(
        &self,
        now: std::time::Instant,
    ) -> (Vec<(String, Arc<Lease>)>, Vec<(String, Arc<Lease>)>) {
        let mut map = lock(&self.held);
        let unused: Vec<_> = map
            .iter()
            .filter(|(_, lease)| Arc::strong_count(lease) == 1)
            .map(|(name, lease)| (name.clone(), lease.clone()))
            .collect();
        for (name, _) in &unused {
            map.remove(name);
        }
        let mut in_use: Vec<_> = map
            .iter()
            .filter(|(_, lease)| lease.valid(now))
            .map(|(name, lease)| (name.clone(), lease.clone()))
            .collect();
        in_use.sort_by(|a, b| a.0.cmp(&b.0));
        (in_use, unused)
    }

    /// Deletes the records of `leases` that still hold, best effort: a record left behind
    /// only expires, a lease later than it would have.
    async fn release(&self, leases: &[(String, Arc<Lease>)]) {
        for (name, lease) in leases {
            // The script compares the record: one Redis gave someone else is left alone.
            if self.store.release(name, &lease.record).await.is_ok() {
                self.metrics.fleet_lease("released");
            }
        }
    }

    /// Shutdown: once the lobbies here have stopped (at most a second), gives up their leases
    /// and the node's registration, best effort. A lease whose lobby still runs is left to
    /// expire rather than released under it.
    async fn leave(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while lock(&self.held)
            .values()
            .any(|lease| Arc::strong_count(lease) > 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, unused) = self.sort_held(now());
        self.release(&unused).await;
        let _ = self.store.deregister(&self.node_id).await;
    }
}

fn unavailable(err: &StoreError) -> JoinRefusal {
    // Per join: the heartbeat warns once per outage, the error counter counts them.
    debug!(error = %err, "join refused: the lobby directory is unavailable");
    JoinRefusal::retry(
        format!("the lobby directory is unavailable ({err}); retry shortly"),
        RETRY_AFTER,
    )
}

/// tokio's clock, the one lobbies tick on (paused in tests).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The [`Directory`] of a fleet node: lobbies run in a [`LocalDirectory`], each created only
/// under a lease claimed in Redis.
pub(crate) struct FleetDirectory {
    pub(crate) local: LocalDirectory,
    pub(crate) fleet: Arc<Fleet>,
}

impl FleetDirectory {
    /// Moves every lobby here to other nodes until none is left, there is no other node, or
    /// `timeout` passes; lobbies that cannot move yet (Redis unreachable) are tried again.
    async fn move_all(&self, timeout: Duration) -> DrainReport {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let fleet = &self.fleet;
        if !fleet.draining.swap(true, Ordering::AcqRel) {
            info!(
                lobbies = self.local.names().len(),
                ?timeout,
                "draining: moving every lobby to other nodes"
            );
        }
        // Out of placement now, not at the next heartbeat: no new lobby comes here.
        if let Err(err) = fleet.store.unlist(&fleet.node_id).await {
            warn!(error = %err, "draining: could not leave placement yet (the next heartbeat does)");
        }
        let mut report = DrainReport::default();
        // Moved, or stopping by themselves: they leave the map on their own, soon.
        let mut done = std::collections::HashSet::new();
        let mut no_node_since = None;
        'drain: loop {
            let mut names = self.local.names();
            names.retain(|name| !done.contains(name));
            if names.is_empty() || tokio::time::Instant::now() >= deadline {
                report.stayed = names;
                break;
            }
            let mut again = false;
            for name in names {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                match self.move_lobby(&name).await {
                    Ok(moved) => {
                        report.moved.extend(moved);
                        done.insert(name);
                    }
                    Err(MoveError::NoNode) => {
                        let since = *no_node_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= NO_NODE_PATIENCE {
                            warn!(
                                "draining: no other live node to move lobbies to; they stay until shutdown"
                            );
                            report.stayed = self.local.names();
                            break 'drain;
                        }
                        again = true;
                        break;
                    }
                    Err(err) => {
                        debug!(lobby = %name, error = %err, "draining: lobby not moved yet");
                        again = true;
                    }
                }
            }
            if again {
                let pause = RETRY_AFTER.min(self.fleet.heartbeat_interval());
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        if !report.stayed.is_empty() {
            warn!(
                stayed = report.stayed.len(),
                "drain ended: lobbies left here"
            );
        }
        info!(
            moved = report.moved.len(),
            seconds = report.seconds,
            "drain done"
        );
        report
    }

    /// Moves lobby `name` to the least-loaded other node; `None` if it stopped meanwhile or
    /// its lease turned out to be lost (it then stops with 4007).
    async fn move_lobby(&self, name: &str) -> Result<Option<MovedLobby>, MoveError> {
        let fleet = &self.fleet;
        let Some(lease) = fleet.held_valid(name) else {
            return Ok(None);
        };
        let target = fleet
            .store
            .least_loaded(&fleet.node_id)
            .await?
            .ok_or(MoveError::NoNode)?;
        let status = fleet
            .store
            .node(&target)
            .await?
            .ok_or(MoveError::TargetGone)?;
        let started = std::time::Instant::now();
        let Some(frozen) = self.local.freeze(name).await else {
            return Ok(None);
        };
        let moved = fleet
            .store
            .move_lobby(
                name,
                &lease.record,
                &target,
                &frozen.handoff.encode(),
                fleet.lease,
                fleet.handoff_keep,
            )
            .await;
        let moved = match moved {
            Ok(Moved::Yes) => true,
            Ok(Moved::NotOurs) => {
                warn!(lobby = %name, "lease lost before the lobby could move: it stops here");
                fleet.metrics.fleet_lease("lost");
                false
            }
            Ok(Moved::TargetGone) => {
                // Nothing written: it goes on here, and is tried again elsewhere.
                let _ = frozen.decision.send(None);
                return Err(MoveError::TargetGone);
            }
            // No answer: the script may have run. Only Redis can say whether the lobby is
            // still this node's; unfrozen on a guess, it could run on two nodes.
            Err(err) => match fleet.store.record(name).await {
                Ok(Some(record)) if record == lease.record => {
                    let _ = frozen.decision.send(None);
                    return Err(err.into());
                }
                Ok(Some(record)) if store::placed_on(&record, &target) => true,
                _ => {
                    warn!(lobby = %name, error = %err, "the lobby's move is in doubt: it stops here (4007)");
                    fleet.metrics.fleet_lease("lost");
                    false
                }
            },
        };
        // Not the lobby's any more (moved or lost): never renewed again.
        lease.lose();
        let url = moved.then(|| status.url.clone());
        let _ = frozen.decision.send(url);
        // Its members are redirected before the drain reports (and a shutdown closes them).
        let _ = frozen.done.await;
        Ok(moved.then(|| MovedLobby {
            lobby: name.to_owned(),
            node: target,
            members: frozen.members,
            frozen_ms: started.elapsed().as_secs_f64() * 1e3,
        }))
    }
}

impl Directory for FleetDirectory {
    fn join(&self, request: JoinRequest) -> JoinFuture<'_> {
        Box::pin(async move {
            let adopt = |handoff: Handoff, lease| {
                let lobby = handoff.lobby.clone();
                if !self.local.adopt(handoff, lease) {
                    warn!(%lobby, "a lobby of this name still stops here: the one moved here is not started, its members join afresh");
                }
            };
            let draining = self.fleet.draining.load(Ordering::Acquire);
            if draining && !self.local.runs(&request.lobby) {
                // Nothing starts here any more, a moved or rebuilt lobby neither.
                return Err(self.fleet.send_elsewhere(&request.lobby).await);
            }
            if request.resume.is_some() {
                // A resume never creates a lobby: here it finds the lobby, or one a drain
                // moved here or whose node died (started by the first of its members to
                // arrive), or `seat_expired`; elsewhere is `wrong_node`.
                if !self.local.runs(&request.lobby) {
                    self.fleet.claim(&request.lobby, true, adopt).await?;
                }
                return self.local.join_leased(request, None).await;
            }
            // Always under a lease: a lobby that retires between a look and the join is
            // created again under the lease held, never without one. A lease no lobby takes
            // (the join refused) is given up by the next heartbeat.
            let lease = self.fleet.claim(&request.lobby, false, adopt).await?;
            self.local.join_leased(request, Some(lease)).await
        })
    }

    fn list(&self) -> Vec<Arc<LobbyInfo>> {
        self.local.list()
    }

    fn matchmake<'a>(
        &'a self,
        pool: &'a str,
        size: Option<usize>,
        player: &'a str,
    ) -> MatchFuture<'a> {
        let default = self.local.max_members();
        Box::pin(self.fleet.matchmake(pool, size, default, player))
    }

    fn drain(&self, timeout: Duration) -> DrainFuture<'_> {
        Box::pin(async move { Some(self.move_all(timeout).await) })
    }
}
