//! The fleet's Redis schema, and every command the fleet sends. No operation reads the whole
//! directory: a lobby is one key, a node one hash, and "least-loaded live node" one sorted
//! set read from its low end.
//!
//! - `tickrelay:lobby:{name}`: the owner record `"{node} {fence}"` (`"{node} p{fence}"` while
//!   only placed by a route), with the lease's expiry (`PX`). The fence comes from `tickrelay:fence` (`INCR`): every grant gets a new one, so a
//!   record a node once held never matches a later grant, even to the same node.
//! - `tickrelay:node:{id}`: a hash (`url`, `lobbies`, `connections`), expiring unless the
//!   node's heartbeat renews it.
//! - `tickrelay:nodes`: a sorted set of node ids scored by lobbies run; ids whose hash has
//!   expired are pruned when met. A draining node takes itself out.
//! - `tickrelay:handoff:{name}`: a lobby a drain moved (`Handoff`, MessagePack), left by
//!   its old owner beside the new owner's placement and taken by the claim that grants it.
//! - `tickrelay:progress:{name}`: where a running lobby is (`lease::Progress`), written by
//!   each renewal and outliving the lease by the resume grace, so a node that claims the
//!   lobby after its owner died rebuilds it (same instance, ids past the old ones, offset,
//!   tick); deleted with a lobby given up.
//!
//! - `tickrelay:pool:{pool}`: a matchmaking pool's lobbies, scored by their count (see
//!   `matchmake::count`); `tickrelay:pool-seen:{pool}` by when their owner last renewed them
//!   (lobbies unseen for long are forgotten); `tickrelay:pool-next:{pool}` numbers new ones,
//!   `tickrelay:pool-size:{pool}` is the lobbies' size; `tickrelay:pooled:{lobby}` names a
//!   lobby's pool, `tickrelay:promises:{lobby}` holds the seats promised to players on their
//!   way (player → expiry, ms), and `tickrelay:pool-player:{pool}:{player}` the lobby a
//!   player was promised. All expire once the pool goes unused.
//!
//! Scripts make each check-and-set one atomic step. They build node keys from ids, which is
//! fine on one Redis; Redis Cluster would need the keys passed in (see ARCHITECTURE.md).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};

const LOBBY: &str = "tickrelay:lobby:";
const NODE: &str = "tickrelay:node:";
const NODES: &str = "tickrelay:nodes";
const FENCE: &str = "tickrelay:fence";
const HANDOFF: &str = "tickrelay:handoff:";
const PROGRESS: &str = "tickrelay:progress:";
const POOL: &str = "tickrelay:pool:";
const POOL_SEEN: &str = "tickrelay:pool-seen:";
const POOL_NEXT: &str = "tickrelay:pool-next:";
const POOL_SIZE: &str = "tickrelay:pool-size:";
const POOL_PLAYER: &str = "tickrelay:pool-player:";
const POOLED: &str = "tickrelay:pooled:";

/// Renewals sent in one script call.
const RENEW_BATCH: usize = 500;

/// Redis did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a drain's move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Placed on the target, the handoff beside it.
    Yes,
    /// The lease was not the mover's any more: nothing written.
    NotOurs,
    /// The target left placement (draining, or dead): nothing written.
    TargetGone,
}

/// Who holds a lobby, as a claim found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Granted to this node, under this record; with the lobby's handoff if it was moved
    /// here, else its last progress if its owner died; and its matchmaking pool, if any.
    Ours {
        record: String,
        handoff: Option<Vec<u8>>,
        progress: Option<String>,
        pool: Option<String>,
    },
    /// Asked only for a moved or orphaned lobby, and there was none.
    NoHandoff,
    /// Another node's, until its lease ends.
    Theirs { node: String, remaining: Duration },
}

/// One lease to renew.
pub(crate) struct Renewal {
    pub(crate) lobby: String,
    pub(crate) record: String,
    /// `Progress` encoded, or "" when the lobby has not reported yet.
    pub(crate) progress: String,
    pub(crate) pool: Option<String>,
}

/// What matchmaking in a pool did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pooled {
    /// A seat promised in `lobby`, whose count is now `count` of the pool's `size`.
    Placed {
        lobby: String,
        count: usize,
        size: usize,
        opened: bool,
    },
    /// The pool's lobbies have this size, not the one asked for.
    OtherSize(usize),
}

/// A node as its heartbeat last described it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct NodeStatus {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) lobbies: u64,
    pub(crate) connections: u64,
}

pub(crate) struct Store {
    redis: ConnectionManager,
    scripts: Scripts,
    /// Bound on every command, reconnects included.
    timeout: Duration,
}

/// Grants the lobby to ARGV[1] unless it is held: returns {1, record, 0, handoff, progress,
/// pool} when granted (taking the handoff KEYS[3] a drain left, if any, reading the progress
/// KEYS[4] a dead owner left, and the matchmaking pool KEYS[5] the lobby belongs to), {0,
/// record, pttl, false, false, false} when not, and {2, '', 0, false, false, false} when
/// ARGV[3] is '1' (a resume: only a lobby moved or orphaned may be claimed) and there is
/// neither. A placement for ARGV[1] (`"{node} p{fence}"`, by a route or
/// a drain) is taken over with a new fence; a running lease never is, not even one of an
/// earlier process with the same node id.
const CLAIM: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 2) ~= ARGV[1] .. ' p' then
  return {0, current, redis.call('PTTL', KEYS[1]), false, false, false}
end
local handoff = redis.call('GET', KEYS[3])
local progress = redis.call('GET', KEYS[4])
if ARGV[3] == '1' and not handoff and not progress then return {2, '', 0, false, false, false} end
local record = ARGV[1] .. ' ' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], record, 'PX', ARGV[2])
if handoff then redis.call('DEL', KEYS[3]) end
return {1, record, 0, handoff, progress, redis.call('GET', KEYS[5])}
";

/// A drain's move: if KEYS[1] is still ARGV[1] (the old owner's lease) and node ARGV[2] is
/// still in placement (KEYS[4]), places the lobby on it for ARGV[3] ms with a new fence and
/// leaves the handoff ARGV[4] in KEYS[3] for ARGV[5] ms, in one step: returns 1; 0 when the
/// lease is not the old owner's any more; 2 when the node left placement (try another).
const MOVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if not redis.call('ZSCORE', KEYS[4], ARGV[2]) then return 2 end
local record = ARGV[2] .. ' p' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], record, 'PX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], 'XX', 'INCR', 1, ARGV[2])
return 1
";

/// Places the lobby on ARGV[1] unless it has an owner: returns the owner's record. The
/// placement (`"{node} p{fence}"`) holds the name for the lease, until the node claims it.
/// A placed node's score rises at once, so a burst of routes spreads before the next
/// heartbeats (`XX`: a node that left placement meanwhile is not put back).
const PLACE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then return current end
local record = ARGV[1] .. ' p' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], record, 'PX', ARGV[2])
redis.call('ZADD', KEYS[3], 'XX', 'INCR', 1, ARGV[1])
return record
";

/// A pooled lobby's count, the rule of `matchmake::count` (players, plus live promises,
/// less the recent fresh joins that most likely used one), from its progress (`"... seats
/// recent"`; `size` when the progress is an earlier version's, which has no seats: such a
/// lobby counts as full rather than be overfilled) and its promises. Shared by the scripts
/// below (prepended to each).
const COUNT: &str = r"
local function pool_count(lobby, now, size)
  local promises = 'tickrelay:promises:' .. lobby
  redis.call('ZREMRANGEBYSCORE', promises, '-inf', now)
  local pending = redis.call('ZCARD', promises)
  local progress = redis.call('GET', 'tickrelay:progress:' .. lobby)
  if not progress then return pending end
  local seats, recent = string.match(progress, '^%d+ %d+ %d+ %d+ (%d+) (%d+)$')
  if not seats then return size end
  seats, recent = tonumber(seats), tonumber(recent)
  return seats + pending - math.min(pending, recent, seats)
end
";

/// For each lease i (lobby key KEYS[2i-1], progress key KEYS[2i]): extends the lobby key by
/// ARGV[2] ms if its record is still ARGV[3i+2], or writes it back where it is missing (a
/// Redis restarted without its data), and then stores the progress ARGV[3i+3] (if any) for
/// ARGV[3] ms: 1 renewed, 0 lost. A record written back raises the fence counter (ARGV[1]
/// names it) past its fence, so no later grant repeats it. A lobby of matchmaking pool
/// ARGV[3i+4] ('' for none) gets its count corrected (the owner is the one who knows who is
/// in it), and its pool's keys another ARGV[4] ms.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local renewed = {}
for i = 1, #KEYS / 2 do
  local key, record, progress, pool = KEYS[2 * i - 1], ARGV[3 * i + 2], ARGV[3 * i + 3], ARGV[3 * i + 4]
  local current = redis.call('GET', key)
  if current == record then
    redis.call('PEXPIRE', key, ARGV[2])
    renewed[i] = 1
  elseif not current then
    redis.call('SET', key, record, 'PX', ARGV[2])
    local fence = tonumber(string.match(record, '(%d+)$'))
    if fence and fence > tonumber(redis.call('GET', ARGV[1]) or '0') then
      redis.call('SET', ARGV[1], fence)
    end
    renewed[i] = 1
  else
    renewed[i] = 0
  end
  if renewed[i] == 1 and progress ~= '' then
    redis.call('SET', KEYS[2 * i], progress, 'PX', ARGV[3])
    if pool ~= '' then
      local name = string.sub(key, #'tickrelay:lobby:' + 1)
      local size = tonumber(redis.call('GET', 'tickrelay:pool-size:' .. pool) or '0')
      redis.call('ZADD', 'tickrelay:pool:' .. pool, pool_count(name, now, size), name)
      redis.call('ZADD', 'tickrelay:pool-seen:' .. pool, now, name)
      for _, kept in ipairs({'tickrelay:pool:' .. pool, 'tickrelay:pool-seen:' .. pool,
          'tickrelay:pool-size:' .. pool, 'tickrelay:pool-next:' .. pool,
          'tickrelay:pooled:' .. name}) do
        redis.call('PEXPIRE', kept, ARGV[4])
      end
    end
  end
end
return renewed
";

/// Deletes KEYS[1], and the progress KEYS[2], if its record is still ARGV[1]. A lobby of a
/// matchmaking pool (ARGV[2] its name) leaves the pool unless players are still on their way
/// (their join starts it again).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  local pool = redis.call('GET', 'tickrelay:pooled:' .. ARGV[2])
  if pool then
    local t = redis.call('TIME')
    local promises = 'tickrelay:promises:' .. ARGV[2]
    redis.call('ZREMRANGEBYSCORE', promises, '-inf', t[1] * 1000 + math.floor(t[2] / 1000))
    local pending = redis.call('ZCARD', promises)
    if pending == 0 then
      redis.call('ZREM', 'tickrelay:pool:' .. pool, ARGV[2])
      redis.call('ZREM', 'tickrelay:pool-seen:' .. pool, ARGV[2])
      redis.call('DEL', 'tickrelay:pooled:' .. ARGV[2])
    else
      redis.call('ZADD', 'tickrelay:pool:' .. pool, pending, ARGV[2])
    end
  end
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Matchmaking in pool ARGV[1] (KEYS: its lobbies by count, by last renewal, its counter,
/// its size, and player ARGV[5]'s promised lobby): promises the player a seat for ARGV[4] ms
/// in the fullest lobby whose count (`pool_count`, recomputed here) is below the pool's size,
/// or opens the pool's next lobby (skipping names that run already). The size is fixed by
/// the first placement (ARGV[2], or ARGV[3] when not given); a player asking again while its
/// promise runs gets the same lobby. Lobbies unseen for ARGV[6] ms are forgotten first, and
/// the pool's keys live that long after their last use. Returns {'ok' or 'opened', lobby,
/// count, size}, or {'size', '', 0, size} when ARGV[2] is not the pool's size.
const MATCHMAKE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl, keep = tonumber(ARGV[4]), tonumber(ARGV[6])
local size = redis.call('GET', KEYS[4])
if size then
  if ARGV[2] ~= '' and ARGV[2] ~= size then return {'size', '', 0, tonumber(size)} end
  size = tonumber(size)
else
  if ARGV[2] ~= '' then size = tonumber(ARGV[2]) else size = tonumber(ARGV[3]) end
  redis.call('SET', KEYS[4], size)
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], keep) end
local function promise(lobby)
  local promises = 'tickrelay:promises:' .. lobby
  redis.call('ZADD', promises, now + ttl, ARGV[5])
  redis.call('PEXPIRE', promises, ttl)
  redis.call('SET', KEYS[5], lobby, 'PX', ttl)
end
local mine = redis.call('GET', KEYS[5])
if mine then
  local until_ = redis.call('ZSCORE', 'tickrelay:promises:' .. mine, ARGV[5])
  if until_ and tonumber(until_) > now then
    promise(mine)
    return {'ok', mine, pool_count(mine, now, size), size}
  end
end
for _, lobby in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - keep, 'LIMIT', 0, 16)) do
  redis.call('ZREM', KEYS[1], lobby)
  redis.call('ZREM', KEYS[2], lobby)
  redis.call('DEL', 'tickrelay:pooled:' .. lobby, 'tickrelay:promises:' .. lobby)
end
for _ = 1, 4 do
  local open = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. size, '-inf', 'LIMIT', 0, 16)
  if #open == 0 then break end
  for _, lobby in ipairs(open) do
    local count = pool_count(lobby, now, size)
    if count < size then
      promise(lobby)
      count = pool_count(lobby, now, size)
      redis.call('ZADD', KEYS[1], count, lobby)
      return {'ok', lobby, count, size}
    end
    redis.call('ZADD', KEYS[1], count, lobby)
  end
end
local lobby
for _ = 1, 16 do
  lobby = ARGV[1] .. '-' .. redis.call('INCR', KEYS[3])
  if redis.call('EXISTS', 'tickrelay:lobby:' .. lobby) == 0 then break end
end
redis.call('PEXPIRE', KEYS[3], keep)
promise(lobby)
redis.call('ZADD', KEYS[1], 1, lobby)
redis.call('ZADD', KEYS[2], now, lobby)
redis.call('SET', 'tickrelay:pooled:' .. lobby, ARGV[1], 'PX', keep)
return {'opened', lobby, 1, size}
";

/// The live node with the lowest score other than ARGV[2] (a draining node asking); dead
/// ones met on the way are pruned.
const LEAST_LOADED: &str = r"
for _ = 1, 4 do
  local ids = redis.call('ZRANGE', KEYS[1], 0, 15)
  if #ids == 0 then return false end
  local pruned = false
  for _, id in ipairs(ids) do
    if id ~= ARGV[2] then
      if redis.call('EXISTS', ARGV[1] .. id) == 1 then return id end
      redis.call('ZREM', KEYS[1], id)
      pruned = true
    end
  end
  if not pruned then return false end
end
return false
";

impl Store {
    /// A store on `url`, connecting lazily (a node starts while Redis is down, and recovers
    /// by itself when it is back).
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            redis,
            scripts: Scripts::new(),
            timeout,
        })
    }

    async fn bounded<T>(
        &self,
        request: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Claims `lobby` for `node` for `lease`; with `moved_only`, only if a drain moved it
    /// (a resume never creates a lobby).
    pub(crate) async fn claim(
        &self,
        lobby: &str,
        node: &str,
        lease: Duration,
        moved_only: bool,
    ) -> Result<Claim, StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(lobby_key(lobby))
            .key(FENCE)
            .key(handoff_key(lobby))
            .key(progress_key(lobby))
            .key(format!("{POOLED}{lobby}"))
            .arg(node)
            .arg(lease.as_millis() as u64)
            .arg(if moved_only { "1" } else { "0" });
        type Reply = (
            u8,
            String,
            Option<i64>,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
        );
        let reply: Reply = self.bounded(invocation.invoke_async(&mut redis)).await?;
        Ok(match reply {
            (1, record, _, handoff, progress, pool) => Claim::Ours {
                record,
                handoff,
                progress,
                pool,
            },
            (2, ..) => Claim::NoHandoff,
            (_, record, pttl, ..) => Claim::Theirs {
                node: node_of(&record).to_owned(),
                remaining: Duration::from_millis(pttl.unwrap_or(0).max(0) as u64),
            },
        })
    }

    /// Moves `lobby`, held under `record`, to `node`: places it there for `lease` and leaves
    /// `handoff` for the claim that takes it, kept for `keep`.
    pub(crate) async fn move_lobby(
        &self,
        lobby: &str,
        record: &str,
        node: &str,
        handoff: &[u8],
        lease: Duration,
        keep: Duration,
    ) -> Result<Moved, StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.move_lobby.prepare_invoke();
        invocation
            .key(lobby_key(lobby))
            .key(FENCE)
            .key(handoff_key(lobby))
            .key(NODES)
            .arg(record)
            .arg(node)
            .arg(lease.as_millis() as u64)
            .arg(handoff)
            .arg(keep.as_millis() as u64);
        let moved: u8 = self.bounded(invocation.invoke_async(&mut redis)).await?;
        Ok(match moved {
            1 => Moved::Yes,
            2 => Moved::TargetGone,
            _ => Moved::NotOurs,
        })
    }

    /// The record holding `lobby` now, if any.
    pub(crate) async fn record(&self, lobby: &str) -> Result<Option<String>, StoreError> {
        let mut redis = self.redis.clone();
        self.bounded(redis.get(lobby_key(lobby))).await
    }

    /// The node that owns `lobby`, placing it on `node` if nobody does.
    pub(crate) async fn place(
        &self,
        lobby: &str,
        node: &str,
        lease: Duration,
    ) -> Result<String, StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.place.prepare_invoke();
        invocation
            .key(lobby_key(lobby))
            .key(FENCE)
            .key(NODES)
            .arg(node)
            .arg(lease.as_millis() as u64);
        let record: String = self.bounded(invocation.invoke_async(&mut redis)).await?;
        Ok(node_of(&record).to_owned())
    }

    /// The node that owns `lobby`, if any.
    pub(crate) async fn owner(&self, lobby: &str) -> Result<Option<String>, StoreError> {
        let record = self.record(lobby).await?;
        Ok(record.map(|record| node_of(&record).to_owned()))
    }

    /// Renews `leases` for `lease`, keeping each progress for `keep` (and a pooled lobby's
    /// pool for `pool_keep`): whether each is still ours.
    pub(crate) async fn renew(
        &self,
        leases: &[Renewal],
        lease: Duration,
        keep: Duration,
        pool_keep: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let mut renewed = Vec::with_capacity(leases.len());
        for batch in leases.chunks(RENEW_BATCH) {
            let mut redis = self.redis.clone();
            let mut invocation = self.scripts.renew.prepare_invoke();
            invocation
                .arg(FENCE)
                .arg(lease.as_millis() as u64)
                .arg(keep.as_millis() as u64)
                .arg(pool_keep.as_millis() as u64);
            for renewal in batch {
                invocation
                    .key(lobby_key(&renewal.lobby))
                    .key(progress_key(&renewal.lobby))
                    .arg(&renewal.record)
                    .arg(&renewal.progress)
                    .arg(renewal.pool.as_deref().unwrap_or_default());
            }
            let reply: Vec<u8> = self.bounded(invocation.invoke_async(&mut redis)).await?;
            renewed.extend(reply.into_iter().map(|r| r == 1));
        }
        Ok(renewed)
    }

    /// Gives `lobby` up, if `record` still holds it.
    pub(crate) async fn release(&self, lobby: &str, record: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(lobby_key(lobby))
            .key(progress_key(lobby))
            .arg(record)
            .arg(lobby);
        let _: i64 = self.bounded(invocation.invoke_async(&mut redis)).await?;
        Ok(())
    }

    /// Promises `player` a seat in `pool` (lobbies of `size`, or the pool's; `default` for
    /// a new pool given none) for `promise`. Lobbies of the pool that no owner renewed for
    /// `forget_after` are dropped from it on the way, and the pool's keys live that long.
    pub(crate) async fn matchmake(
        &self,
        pool: &str,
        size: Option<usize>,
        default: usize,
        player: &str,
        promise: Duration,
        forget_after: Duration,
    ) -> Result<Pooled, StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.matchmake.prepare_invoke();
        invocation
            .key(format!("{POOL}{pool}"))
            .key(format!("{POOL_SEEN}{pool}"))
            .key(format!("{POOL_NEXT}{pool}"))
            .key(format!("{POOL_SIZE}{pool}"))
            .key(format!("{POOL_PLAYER}{pool}:{player}"))
            .arg(pool)
            .arg(size.map(|size| size.to_string()).unwrap_or_default())
            .arg(default)
            .arg(promise.as_millis() as u64)
            .arg(player)
            .arg(forget_after.as_millis() as u64);
        let (status, lobby, count, size): (String, String, usize, usize) =
            self.bounded(invocation.invoke_async(&mut redis)).await?;
        Ok(match status.as_str() {
            "size" => Pooled::OtherSize(size),
            opened => Pooled::Placed {
                lobby,
                count,
                size,
                opened: opened == "opened",
            },
        })
    }

    /// Publishes this node's status, alive for `ttl` unless renewed; `listed`: among the nodes
    /// new lobbies are placed on (not while draining).
    pub(crate) async fn heartbeat(
        &self,
        node: &NodeStatus,
        ttl: Duration,
        listed: bool,
    ) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let key = format!("{NODE}{}", node.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[
                    ("url", node.url.clone()),
                    ("lobbies", node.lobbies.to_string()),
                    ("connections", node.connections.to_string()),
                ],
            )
            .ignore()
            .pexpire(&key, ttl.as_millis() as i64)
            .ignore();
        if listed {
            pipe.zadd(NODES, &node.id, node.lobbies).ignore();
        } else {
            pipe.zrem(NODES, &node.id).ignore();
        }
        self.bounded(pipe.query_async::<()>(&mut redis)).await
    }

    /// Takes this node out of placement (a drain): it stays registered, so its lobbies are
    /// still routed to it until they move.
    pub(crate) async fn unlist(&self, id: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        self.bounded(redis.zrem::<_, _, ()>(NODES, id)).await
    }

    /// Takes this node out of the directory (on shutdown).
    pub(crate) async fn deregister(&self, id: &str) -> Result<(), StoreError> {
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(format!("{NODE}{id}"))
            .ignore()
            .zrem(NODES, id)
            .ignore();
        self.bounded(pipe.query_async::<()>(&mut redis)).await
    }

    /// The live node with the fewest lobbies, other than `except`.
    pub(crate) async fn least_loaded(&self, except: &str) -> Result<Option<String>, StoreError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.scripts.least_loaded.prepare_invoke();
        invocation.key(NODES).arg(NODE).arg(except);
        self.bounded(invocation.invoke_async(&mut redis)).await
    }

    /// A live node's status.
    pub(crate) async fn node(&self, id: &str) -> Result<Option<NodeStatus>, StoreError> {
        Ok(self.nodes_by_id(&[id.to_owned()]).await?.pop().flatten())
    }

    /// A page of the live nodes, by load (lowest first), and how many nodes are registered.
    pub(crate) async fn nodes(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<NodeStatus>, usize), StoreError> {
        let mut redis = self.redis.clone();
        let (ids, total): (Vec<String>, usize) = self
            .bounded(
                redis::pipe()
                    .zrange(NODES, offset as isize, (offset + limit) as isize - 1)
                    .zcard(NODES)
                    .query_async(&mut redis),
            )
            .await?;
        let nodes = self.nodes_by_id(&ids).await?;
        Ok((nodes.into_iter().flatten().collect(), total))
    }

    async fn nodes_by_id(&self, ids: &[String]) -> Result<Vec<Option<NodeStatus>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(format!("{NODE}{id}"));
        }
        let hashes: Vec<std::collections::HashMap<String, String>> =
            self.bounded(pipe.query_async(&mut redis)).await?;
        Ok(ids
            .iter()
            .zip(hashes)
            .map(|(id, hash)| {
                let number =
                    |field: &str| hash.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
                Some(NodeStatus {
                    id: id.clone(),
                    url: hash.get("url")?.clone(),
                    lobbies: number("lobbies"),
                    connections: number("connections"),
                })
            })
            .collect())
    }
}

/// The scripts, each hashed once (invocations send the hash, and the source only when Redis
/// does not know it yet).
struct Scripts {
    claim: Script,
    move_lobby: Script,
    place: Script,
    renew: Script,
    release: Script,
    matchmake: Script,
    least_loaded: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: Script::new(CLAIM),
            move_lobby: Script::new(MOVE),
            place: Script::new(PLACE),
            renew: Script::new(&format!("{COUNT}{RENEW}")),
            release: Script::new(RELEASE),
            matchmake: Script::new(&format!("{COUNT}{MATCHMAKE}")),
            least_loaded: Script::new(LEAST_LOADED),
        }
    }
}

fn lobby_key(lobby: &str) -> String {
    format!("{LOBBY}{lobby}")
}

fn handoff_key(lobby: &str) -> String {
    format!("{HANDOFF}{lobby}")
}

fn progress_key(lobby: &str) -> String {
    format!("{PROGRESS}{lobby}")
}

/// Whether `record` is a placement of its lobby on `node` (by a route or a drain).
pub(crate) fn placed_on(record: &str, node: &str) -> bool {
    record
        .strip_prefix(node)
        .is_some_and(|rest| rest.starts_with(" p"))
}

/// The node id in an owner record (`"{node} {fence}"`, or `"{node} p{fence}"` placed).
fn node_of(record: &str) -> &str {
    record.split_once(' ').map_or(record, |(node, _)| node)
}
