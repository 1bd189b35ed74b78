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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::ClockEstimator;
use crate::report::Report;
use crate::shards::{ShardFinal, ShardMessage};

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

/// Registers shard ARGV[1] of ARGV[2] with parameters ARGV[3] and description ARGV[4].
/// A run with no shard alive is over and cleared first. Returns {'ok', ''} or {error,
/// detail}: 'shards' (the run has another count), 'params' (other parameters), 'started'
/// (the run began without this shard), 'taken' (a live shard holds this index).
const REGISTER: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('ZCOUNT', KEYS[3], now, '+inf') == 0 then
  redis.call('DEL', unpack(KEYS))
end
local n = redis.call('HGET', KEYS[1], 'shards')
if not n then
  redis.call('HSET', KEYS[1], 'shards', ARGV[2], 'params', ARGV[3])
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
return {'ok', ''}
";

/// Shard ARGV[1] arrives at barrier ARGV[2] (set KEYS[3]; instants in hash KEYS[4]) and
/// renews its heartbeat. Once every shard has arrived (ARGV[4] = '1': or is gone), sets the
/// barrier's instant ARGV[3] ms ahead. Returns {1, instant, now} once set, else {0, arrived,
/// now}.
const BARRIER: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
local at = redis.call('HGET', KEYS[4], ARGV[2])
if at then return {1, tonumber(at), now} end
local n = tonumber(redis.call('HGET', KEYS[1], 'shards'))
for shard = 0, n - 1 do
  if redis.call('SISMEMBER', KEYS[3], shard) == 0 then
    local alive = redis.call('ZSCORE', KEYS[2], shard)
    if ARGV[4] ~= '1' or (alive and tonumber(alive) >= now) then
      return {0, redis.call('SCARD', KEYS[3]), now}
    end
  end
end
redis.call('HSET', KEYS[4], ARGV[2], now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[4], ARGV[6])
return {1, now + tonumber(ARGV[3]), now}
";

/// Renews shard ARGV[1]'s heartbeat for ARGV[2] ms, or (ARGV[2] = '0') ends it.
const HEARTBEAT: &str = r"
if ARGV[2] == '0' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
";

/// The run's state for a reader: {now, shards or false, start instant or false, live shards...}.
const STATUS: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local reply = {now, redis.call('HGET', KEYS[1], 'shards'), redis.call('HGET', KEYS[3], 'start')}
for _, shard in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  table.insert(reply, tonumber(shard))
end
return reply
";

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

    /// In the order REGISTER expects.
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
    /// Everybody passes at this instant: `at` here, `redis_ms` on Redis's clock.
    PassAt { at: Instant, redis_ms: u64 },
}

/// What a reader sees of the run.
pub(crate) struct Status {
    /// The run's shard count, once a shard registered.
    pub(crate) shards: Option<usize>,
    /// The start instant (Redis clock, ms), once set.
    pub(crate) start_ms: Option<u64>,
    pub(crate) live: Vec<usize>,
}

fn unix_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
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
            clock: ClockEstimator::default(),
        })
    }

    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    /// Runs `script` with `keys` and `args`, learning the clock offset from `now` at `at`
    /// in the answer.
    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        script: &str,
        keys: &[&str],
        args: &[String],
    ) -> anyhow::Result<T> {
        let script = Script::new(script);
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
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
    ) -> anyhow::Result<()> {
        let keys = self.keys.clone();
        let args = [
            shard.to_string(),
            shards.to_string(),
            params.to_owned(),
            host.to_owned(),
            ALIVE_MS.to_string(),
            KEEP_MS.to_string(),
        ];
        let (status, detail): (String, String) = self.invoke(REGISTER, &keys.all(), &args).await?;
        let run = &self.run;
        match status.as_str() {
            "ok" => Ok(()),
            "shards" => bail!(
                "run {run:?} has {detail} shards, this one says {shards}: give every shard the same --shard i/n"
            ),
            "params" => bail!(
                "run {run:?}'s shards run other parameters: every shard must run the same command but --shard.\n  theirs: {detail}\n  ours:   {params}"
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
        let keys = self.keys.clone();
        let arrived = match barrier {
            Barrier::Start => &keys.arrived_start,
            Barrier::Measure => &keys.arrived_measure,
        };
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
        let (set, value, now): (u8, u64, u64) = self
            .invoke(
                BARRIER,
                &[&keys.meta, &keys.alive, arrived, &keys.at],
                &args,
            )
            .await?;
        self.observe(sent, now);
        Ok(if set == 1 {
            Waiting::PassAt {
                at: self.local_instant(value),
                redis_ms: value,
            }
        } else {
            Waiting::Arrived(value)
        })
    }

    /// Renews (or, `alive` false, ends) shard `shard`'s heartbeat.
    async fn heartbeat(&mut self, shard: usize, alive: bool) -> anyhow::Result<()> {
        let keys = self.keys.clone();
        let ms = if alive { ALIVE_MS } else { 0 };
        let _: i64 = self
            .invoke(
                HEARTBEAT,
                &[&keys.alive],
                &[shard.to_string(), ms.to_string()],
            )
            .await?;
        Ok(())
    }

    /// The run as it stands.
    pub(crate) async fn status(&mut self) -> anyhow::Result<Status> {
        let keys = self.keys.clone();
        let sent = unix_us();
        let reply: Vec<redis::Value> = self
            .invoke(STATUS, &[&keys.meta, &keys.alive, &keys.at], &[])
            .await?;
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
            live: reply[3.min(reply.len())..]
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
    /// The run's common start (Redis clock, ms).
    start_ms: u64,
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
        let (at, start_ms) = loop {
            match store.arrive(Barrier::Start, shard).await {
                Ok(Waiting::PassAt { at, redis_ms }) => break (at, redis_ms),
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
            start_ms,
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

    /// Ms since the run's common start, now.
    pub(crate) fn since_start_ms(&self) -> u64 {
        self.store.redis_now_ms().saturating_sub(self.start_ms)
    }

    /// Queues `message` for publishing (in order, retried until Redis takes it).
    pub(crate) fn publish(&self, message: &ShardMessage) {
        match serde_json::to_string(message) {
            Ok(text) => {
                if let Some(outbox) = &self.outbox {
                    let _ = outbox.send(text);
                }
            }
            Err(err) => tracing::error!(%err, "a shard message did not serialize"),
        }
    }

    /// Publishes the final figures of `report` (this shard's own), waits (at most `patience`)
    /// until everything queued is in Redis, and ends the heartbeat: the shard is done.
    pub(crate) async fn finish(
        mut self,
        report: &Report,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let last = ShardFinal::of(report, self.shard, self.host.clone());
        self.publish(&ShardMessage::Final(Box::new(last)));
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

async fn heartbeat(mut store: RunStore, shard: usize) {
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

/// This machine's name, for the report.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}
