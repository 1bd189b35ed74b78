//! The Redis a distributed run is coordinated through (`--coordinate`, `watch`): shards
//! register, wait for each other at barriers, stay alive by heartbeat and publish their
//! messages to one list that any number of readers follow from its start (nothing is lost to
//! a reader that comes late). Every check-and-set is one Lua script, on Redis's own clock.
//!
//! Keys, all with the run's name as hash tag (`tickrelay-loadgen:{RUN}:...`, one Redis
//! Cluster slot), expiring an hour after the run's last write:
//! - `meta`: hash `shards` (n), `params` (what every shard must run alike).
//! - `joined`: hash shard → "host pid".
//! - `alive`: sorted set shard → expiry (ms, Redis clock), renewed every second.
//! - `arrived:start`, `arrived:measure`: sets of shards at each barrier; `at`: hash barrier →
//!   the instant (ms, Redis clock) everyone passes it.
//! - `log`: list of `ShardMessage` JSON, in publishing order per shard.
//!
//! A run whose shards are all gone (none alive) is over: the next shard to register under its
//! name clears it and starts a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::{ClockEstimator, unix_micros};
use crate::shards::ShardMessage;

/// Bound on every Redis command.
const TIMEOUT: Duration = Duration::from_secs(3);
/// A shard that has not renewed its heartbeat for this long is gone.
const ALIVE_MS: u64 = 5_000;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How far ahead of the last arrival a barrier's instant is set: every shard polls well
/// within it, so all pass together.
const BARRIER_LEAD_MS: u64 = 1_000;
pub(crate) const BARRIER_POLL: Duration = Duration::from_millis(100);
/// Keys live this long after the run's last write.
const KEEP_MS: u64 = 3_600_000;
/// Messages read per request.
const READ_BATCH: isize = 200;

// Every script takes the run's seven keys (`Keys::all`), so each can keep them all alive:
// they expire KEEP_MS after the run's last heartbeat or message, together.

/// Registers shard ARGV[1] of ARGV[2] with parameters ARGV[3] and description ARGV[4]. A run
/// with no shard alive is over: its keys are cleared first and a new run id (Redis's clock
/// in ms) is set. Returns {'ok', id} or {error, detail}: 'shards' (the run has another
/// count), 'params' (other parameters), 'started' (the run began without this shard),
/// 'taken' (a live shard holds this index).
const REGISTER: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('ZCOUNT', KEYS[3], now, '+inf') == 0 then
  redis.call('DEL', unpack(KEYS))
end
local n = redis.call('HGET', KEYS[1], 'shards')
if not n then
  redis.call('HSET', KEYS[1], 'shards', ARGV[2], 'params', ARGV[3], 'id', tostring(now))
elseif n ~= ARGV[2] then
  return {'shards', n}
elseif redis.call('HGET', KEYS[1], 'params') ~= ARGV[3] then
  return {'params', redis.call('HGET', KEYS[1], 'params')}
end
if redis.call('HEXISTS', KEYS[6], 'start') == 1 then return {'started', ''} end
local alive = redis.call('ZSCORE', KEYS[3], ARGV[1])
if alive and tonumber(alive) >= now then
  return {'taken', redis.call('HGET', KEYS[2], ARGV[1]) or ''}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[6]) end
return {'ok', redis.call('HGET', KEYS[1], 'id')}
";

/// Shard ARGV[1] arrives at barrier ARGV[2] ('start': set KEYS[4], 'measure': KEYS[5];
/// instants in hash KEYS[6]) and renews its heartbeat. Once every shard is there and alive
/// (ARGV[4] = '1': or gone, for a barrier a shard may die before), sets the barrier's
/// instant ARGV[3] ms ahead. Returns {1, instant, now} once set, else {0, arrived, now}.
const BARRIER: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local arrived = KEYS[4]
if ARGV[2] == 'measure' then arrived = KEYS[5] end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
redis.call('SADD', arrived, ARGV[1])
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[6]) end
local at = redis.call('HGET', KEYS[6], ARGV[2])
if at then return {1, tonumber(at), now} end
local n = tonumber(redis.call('HGET', KEYS[1], 'shards'))
for shard = 0, n - 1 do
  local score = redis.call('ZSCORE', KEYS[3], shard)
  local alive = score and tonumber(score) >= now
  local here = redis.call('SISMEMBER', arrived, shard) == 1
  if not (here and alive) and (alive or ARGV[4] ~= '1') then
    return {0, redis.call('SCARD', arrived), now}
  end
end
redis.call('HSET', KEYS[6], ARGV[2], now + tonumber(ARGV[3]))
return {1, now + tonumber(ARGV[3]), now}
";

/// Renews shard ARGV[1]'s heartbeat for ARGV[2] ms, or (ARGV[2] = '0') signs it off: out of
/// the live shards and of the barriers it waited at.
const HEARTBEAT: &str = r"
if ARGV[2] == '0' then
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('SREM', KEYS[5], ARGV[1])
  return redis.call('ZREM', KEYS[3], ARGV[1])
end
local t = redis.call('TIME')
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[3]) end
return redis.call('ZADD', KEYS[3], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
";

/// The run's state for a reader: {now, shards, start instant, run id, log length, live
/// shards...} (false where absent).
const STATUS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local reply = {now, redis.call('HGET', KEYS[1], 'shards'), redis.call('HGET', KEYS[6], 'start'),
  redis.call('HGET', KEYS[1], 'id'), redis.call('LLEN', KEYS[7])}
for _, shard in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')) do
  table.insert(reply, tonumber(shard))
end
return reply
";

/// The scripts, built once (each `Script` hashes its source).
struct Scripts {
    register: Script,
    barrier: Script,
    heartbeat: Script,
    status: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            register: Script::new(REGISTER),
            barrier: Script::new(BARRIER),
            heartbeat: Script::new(HEARTBEAT),
            status: Script::new(STATUS),
        }
    }
}

/// A run's keys.
#[derive(Clone)]
struct Keys {
    meta: String,
    joined: String,
    alive: String,
    arrived_start: String,
    arrived_measure: String,
    at: String,
    log: String,
}

impl Keys {
    fn of(run: &str) -> Self {
        let key = |suffix: &str| format!("tickrelay-loadgen:{{{run}}}:{suffix}");
        Self {
            meta: key("meta"),
            joined: key("joined"),
            alive: key("alive"),
            arrived_start: key("arrived:start"),
            arrived_measure: key("arrived:measure"),
            at: key("at"),
            log: key("log"),
        }
    }

    /// In the order the scripts expect.
    fn all(&self) -> [&str; 7] {
        [
            &self.meta,
            &self.joined,
            &self.alive,
            &self.arrived_start,
            &self.arrived_measure,
            &self.at,
            &self.log,
        ]
    }
}

/// One connection to a run's Redis, with its scripts, and this machine's clock against
/// Redis's (NTP-style, from the scripts' answers).
#[derive(Clone)]
pub(crate) struct RunStore {
    redis: ConnectionManager,
    run: String,
    keys: Keys,
    scripts: Arc<Scripts>,
    clock: ClockEstimator,
}

/// Which barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Barrier {
    /// All shards registered: start connecting.
    Start,
    /// All live shards ramped up and warmed: open the measured window.
    Measure,
}

impl Barrier {
    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Measure => "measure",
        }
    }
}

/// Where a barrier stands.
pub(crate) enum Waiting {
    /// Shards arrived so far.
    Arrived(u64),
    /// Everybody passes at this instant (here).
    PassAt(Instant),
}

/// What a reader sees of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    /// The run's shard count, once a shard registered.
    pub(crate) shards: Option<usize>,
    /// The start instant (Redis clock, ms), once set.
    pub(crate) start_ms: Option<u64>,
    /// Set anew each time a run of this name begins.
    pub(crate) id: Option<String>,
    /// Messages in the run's log.
    pub(crate) messages: usize,
    pub(crate) live: Vec<usize>,
}

fn unix_us() -> f64 {
    unix_micros() as f64
}

async fn bounded<T>(request: impl Future<Output = redis::RedisResult<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("the coordinating Redis did not answer within {TIMEOUT:?}"),
    }
}

impl RunStore {
    /// Connects to `url` (redis://HOST:PORT) for run `run`; fails if Redis does not answer.
    pub(crate) async fn connect(url: &str, run: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("--coordinate {url:?}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = bounded(ConnectionManager::new_with_config(client, config))
            .await
            .with_context(|| format!("cannot reach the coordinating Redis at {url}"))?;
        Ok(Self {
            redis,
            run: run.to_owned(),
            keys: Keys::of(run),
            scripts: Arc::new(Scripts::new()),
            clock: ClockEstimator::default(),
        })
    }

    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    /// Runs the script `which` picks, with the run's keys and `args`.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        which: fn(&Scripts) -> &Script,
        args: &[String],
    ) -> anyhow::Result<T> {
        let mut invocation = which(&self.scripts).prepare_invoke();
        for key in self.keys.all() {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut redis = self.redis.clone();
        bounded(invocation.invoke_async(&mut redis)).await
    }

    /// Adds one sample of Redis's clock (`now_ms`) answered between `sent_us` and now.
    fn observe(&mut self, sent_us: f64, now_ms: u64) {
        self.clock
            .add_sample(sent_us, now_ms as f64 * 1000.0, unix_us());
    }

    /// Redis's clock now, as this machine reckons it (ms).
    pub(crate) fn redis_now_ms(&self) -> u64 {
        ((unix_us() + self.clock.offset_us()) / 1000.0).max(0.0) as u64
    }

    /// The local instant of a Redis-clock instant.
    fn local_instant(&self, redis_ms: u64) -> Instant {
        let now = self.redis_now_ms();
        Instant::now() + Duration::from_millis(redis_ms.saturating_sub(now))
    }

    /// Registers shard `shard` of `shards`, which runs `params` (every shard's must match).
    pub(crate) async fn register(
        &mut self,
        shard: usize,
        shards: usize,
        params: &str,
        host: &str,
    ) -> anyhow::Result<String> {
        let args = [
            shard.to_string(),
            shards.to_string(),
            params.to_owned(),
            host.to_owned(),
            ALIVE_MS.to_string(),
            KEEP_MS.to_string(),
        ];
        let (status, detail): (String, String) = self.invoke(|s| &s.register, &args).await?;
        let run = &self.run;
        match status.as_str() {
            "ok" => Ok(detail),
            "shards" => bail!(
                "run {run:?} has {detail} shards, this one says {shards}: give every shard the same --shard i/n"
            ),
            "params" => bail!(
                "run {run:?}'s shards run other parameters: every shard must run the same command but --shard ({})",
                differences(&detail, params)
            ),
            "started" => bail!(
                "run {run:?} has started without shard {shard}: wait until it ends, or name a new run with --run"
            ),
            "taken" => bail!(
                "shard {shard} of run {run:?} is already running ({detail}): give each machine its own --shard i/n"
            ),
            other => bail!("unexpected answer from the coordinating Redis: {other:?}"),
        }
    }

    /// Arrives at `barrier` as `shard` (renewing its heartbeat) and says where it stands.
    pub(crate) async fn arrive(
        &mut self,
        barrier: Barrier,
        shard: usize,
    ) -> anyhow::Result<Waiting> {
        let args = [
            shard.to_string(),
            barrier.name().to_owned(),
            BARRIER_LEAD_MS.to_string(),
            // Nobody starts without all; a shard that died later must not hold the rest.
            if barrier == Barrier::Measure {
                "1"
            } else {
                "0"
            }
            .to_owned(),
            ALIVE_MS.to_string(),
            KEEP_MS.to_string(),
        ];
        let sent = unix_us();
        let (set, value, now): (u8, u64, u64) = self.invoke(|s| &s.barrier, &args).await?;
        self.observe(sent, now);
        Ok(if set == 1 {
            Waiting::PassAt(self.local_instant(value))
        } else {
            Waiting::Arrived(value)
        })
    }

    /// Renews (or, `alive` false, signs off) shard `shard`'s heartbeat.
    async fn heartbeat(&self, shard: usize, alive: bool) -> anyhow::Result<()> {
        let ms = if alive { ALIVE_MS } else { 0 };
        let args = [shard.to_string(), ms.to_string(), KEEP_MS.to_string()];
        let _: i64 = self.invoke(|s| &s.heartbeat, &args).await?;
        Ok(())
    }

    /// The run as it stands.
    pub(crate) async fn status(&mut self) -> anyhow::Result<Status> {
        let sent = unix_us();
        let reply: Vec<redis::Value> = self.invoke(|s| &s.status, &[]).await?;
        let number =
            |value: &redis::Value| -> Option<u64> { redis::from_redis_value(value.clone()).ok() };
        let now_ms = reply
            .first()
            .and_then(number)
            .context("no clock in STATUS")?;
        self.observe(sent, now_ms);
        Ok(Status {
            shards: reply.get(1).and_then(number).map(|n| n as usize),
            start_ms: reply.get(2).and_then(number),
            id: reply
                .get(3)
                .and_then(|value| redis::from_redis_value(value.clone()).ok()),
            messages: reply.get(4).and_then(number).unwrap_or(0) as usize,
            live: reply[5.min(reply.len())..]
                .iter()
                .filter_map(number)
                .map(|shard| shard as usize)
                .collect(),
        })
    }

    /// Messages (JSON) from position `from` of the log on, at most a batch; the caller
    /// moves its position by the count returned.
    pub(crate) async fn read(&mut self, from: usize) -> anyhow::Result<Vec<String>> {
        let mut redis = self.redis.clone();
        bounded(
            redis::cmd("LRANGE")
                .arg(&self.keys.log)
                .arg(from)
                .arg(from as isize + READ_BATCH - 1)
                .query_async(&mut redis),
        )
        .await
    }

    async fn publish(&self, text: &str) -> anyhow::Result<()> {
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        pipe.rpush(&self.keys.log, text)
            .ignore()
            .pexpire(&self.keys.log, KEEP_MS as i64)
            .ignore();
        bounded(pipe.query_async::<()>(&mut redis)).await
    }
}

/// A shard's side of a run: registered, heartbeat running, messages going out in order.
pub(crate) struct ShardLink {
    store: RunStore,
    shard: usize,
    /// Where it runs ("host pid N").
    host: String,
    /// How long it waits for the others at a barrier.
    patience: Duration,
    /// The run's common start, on this machine's monotonic clock.
    started_at: Instant,
    /// The sequence number of the next interval published.
    next_seq: u64,
    outbox: Option<mpsc::UnboundedSender<String>>,
    publisher: Option<JoinHandle<()>>,
    heartbeat: JoinHandle<()>,
}

impl ShardLink {
    /// Registers `shard` of `shards` and waits, at most `patience`, until every shard has:
    /// they all pass the start barrier at the same instant. Says now and then what it waits
    /// for, unless `quiet`.
    pub(crate) async fn join(
        mut store: RunStore,
        shard: usize,
        shards: usize,
        params: &str,
        patience: Duration,
        quiet: bool,
    ) -> anyhow::Result<Self> {
        let host = format!("{} pid {}", host_name(), std::process::id());
        store.register(shard, shards, params, &host).await?;
        let heartbeat = tokio::spawn(heartbeat(store.clone(), shard));
        let deadline = Instant::now() + patience;
        let mut said = Instant::now();
        let at = loop {
            match store.arrive(Barrier::Start, shard).await {
                Ok(Waiting::PassAt(at)) => break at,
                Ok(Waiting::Arrived(arrived)) => {
                    if !quiet && said.elapsed() >= Duration::from_secs(2) {
                        eprintln!(
                            "tickrelay-loadgen: run {:?}: {arrived} of {shards} shards here, waiting for the others",
                            store.run()
                        );
                        said = Instant::now();
                    }
                }
                Err(err) => tracing::warn!(%err, "coordinating Redis: start poll failed; retrying"),
            }
            if Instant::now() >= deadline {
                heartbeat.abort();
                // Out of the barrier: the others must not start counting on this shard.
                if let Err(err) = store.heartbeat(shard, false).await {
                    tracing::warn!(%err, "coordinating Redis: could not sign off");
                }
                bail!(
                    "run {:?}: not every shard came within {patience:?} (--wait-shards)",
                    store.run()
                );
            }
            tokio::time::sleep(BARRIER_POLL).await;
        };
        tokio::time::sleep_until(at.into()).await;
        let (outbox, queue) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publisher(store.clone(), queue));
        Ok(Self {
            store,
            shard,
            host,
            patience,
            started_at: at,
            next_seq: 0,
            outbox: Some(outbox),
            publisher: Some(publisher),
            heartbeat,
        })
    }

    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    pub(crate) fn patience(&self) -> Duration {
        self.patience
    }

    /// Arrives at `barrier` (once per poll) and says where it stands.
    pub(crate) async fn arrive(&mut self, barrier: Barrier) -> anyhow::Result<Waiting> {
        self.store.arrive(barrier, self.shard).await
    }

    /// When the run's shards started together, here.
    pub(crate) fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Queues `message` for publishing (in order, retried until Redis takes it); an interval
    /// gets its sequence number here, so a message pushed twice by a retry counts once.
    pub(crate) fn publish(&mut self, mut message: ShardMessage) {
        if let ShardMessage::Interval(interval) = &mut message {
            interval.seq = self.next_seq;
            self.next_seq += 1;
        }
        match serde_json::to_string(&message) {
            Ok(text) => {
                if let Some(outbox) = &self.outbox {
                    let _ = outbox.send(text);
                }
            }
            Err(err) => tracing::error!(%err, "a shard message did not serialize"),
        }
    }

    /// Where this shard runs ("host pid N").
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Publishes `last` (the shard's final figures), waits (at most `patience`) until
    /// everything queued is in Redis, and signs off: the shard is done.
    pub(crate) async fn finish(
        mut self,
        last: ShardMessage,
        patience: Duration,
    ) -> anyhow::Result<()> {
        self.publish(last);
        self.outbox = None;
        let flushed = match self.publisher.take() {
            Some(mut publisher) => {
                let flushed = tokio::time::timeout(patience, &mut publisher).await.is_ok();
                publisher.abort();
                flushed
            }
            None => true,
        };
        self.heartbeat.abort();
        if let Err(err) = self.store.heartbeat(self.shard, false).await {
            tracing::warn!(%err, "coordinating Redis: could not sign off (the heartbeat expires by itself)");
        }
        anyhow::ensure!(
            flushed,
            "the coordinating Redis did not take this shard's figures within {patience:?}"
        );
        Ok(())
    }
}

impl Drop for ShardLink {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn heartbeat(store: RunStore, shard: usize) {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        every.tick().await;
        if let Err(err) = store.heartbeat(shard, true).await {
            tracing::warn!(%err, "coordinating Redis: heartbeat failed");
        }
    }
}

/// Pushes queued messages in order; one that fails is retried until it goes, so nothing is
/// lost while Redis is briefly away. Ends when the queue is closed and empty.
async fn publisher(store: RunStore, mut queue: mpsc::UnboundedReceiver<String>) {
    while let Some(text) = queue.recv().await {
        let mut warned = false;
        while let Err(err) = store.publish(&text).await {
            if !warned {
                tracing::warn!(%err, "coordinating Redis: publishing failed; retrying");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Where two parameter sets (JSON objects) differ, as `name: theirs X, ours Y; ...`.
fn differences(theirs: &str, ours: &str) -> String {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap_or_default()
    };
    let (theirs, ours) = (parse(theirs), parse(ours));
    let mut names: Vec<&String> = theirs.keys().chain(ours.keys()).collect();
    names.sort();
    names.dedup();
    let null = serde_json::Value::Null;
    let differing: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let (a, b) = (
                theirs.get(name).unwrap_or(&null),
                ours.get(name).unwrap_or(&null),
            );
            (a != b).then(|| format!("{name}: theirs {a}, ours {b}"))
        })
        .collect();
    if differing.is_empty() {
        "they are from another version of the load generator".to_owned()
    } else {
        differing.join("; ")
    }
}

/// This machine's name, for the report.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}
