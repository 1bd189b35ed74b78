//! Following a distributed run (`watch`, and shard 0 of a `--coordinate` run): reads every
//! shard's messages from the coordinating Redis, shows the merged progress second by second,
//! writes the merged interval log, and once every shard has sent its final figures (or has
//! been gone for a while) builds the merged report. What is merged, and when the run is over,
//! is `ShardMerger`'s to say; this is the I/O around it.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::coordinate::{RunStore, Status};
use crate::hlog::HlogWriter;
use crate::report::Report;
use crate::shards::{ClosedSecond, ShardMerger, ShardMessage};

const POLL: Duration = Duration::from_millis(200);
/// How long the run may go without one answer from Redis before following it is given up.
const LOST_AFTER: Duration = Duration::from_secs(60);
/// A shard count beyond any real run: a bad `meta` must not size the merge.
const MAX_SHARDS: usize = 10_000;

/// Which run to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// The run of that name as it stands: one under way, or the last one (over, if no shard
    /// is live: reported as it ended).
    Current,
    /// The next run of that name to start (not the one there now, if any).
    Next,
}

/// Follows `store`'s run to its end. Waits at most `patience` for the run to start.
pub(crate) async fn follow(
    mut store: RunStore,
    which: Which,
    quiet: bool,
    hlog: Option<&Path>,
    patience: Duration,
) -> anyhow::Result<Report> {
    let (status, shards, start_ms) = started(&mut store, which, quiet, patience).await?;
    let run = store.run().to_owned();
    let id = status.id.clone();
    let mut hlog = match hlog {
        Some(path) => Some(HlogWriter::create(
            path,
            UNIX_EPOCH + Duration::from_millis(start_ms),
            &format!("tickrelay-loadgen run {run:?}, {shards} shards merged"),
        )?),
        None => None,
    };
    let began = Instant::now();
    let elapsed_ms = || began.elapsed().as_millis() as u64;
    let mut merger = ShardMerger::new(shards);
    merger.observe_live(&status.live, elapsed_ms());
    let mut live = status.live;
    let mut read = 0;
    let mut contact = Instant::now();
    let mut status_at = Instant::now();
    loop {
        // The status first, then the log to its end: a shard seen gone had published its
        // final figures before signing off, so they are read below.
        if status_at.elapsed() >= Duration::from_secs(1) {
            status_at = Instant::now();
            match store.status().await {
                Ok(status) => {
                    contact = Instant::now();
                    check_same_run(&status, &id, read, &run)?;
                    merger.observe_live(&status.live, elapsed_ms());
                    live = status.live;
                }
                Err(err) if contact.elapsed() < LOST_AFTER => {
                    tracing::warn!(%err, "coordinating Redis: status failed; retrying");
                }
                Err(err) => {
                    return Err(err).context(format!(
                        "lost the coordinating Redis for {LOST_AFTER:?} while following run {run:?}"
                    ));
                }
            }
        }
        loop {
            let batch = match store.read(read).await {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(%err, "coordinating Redis: reading the run failed; retrying");
                    break;
                }
            };
            let count = batch.len();
            for text in batch {
                let message: ShardMessage = serde_json::from_str(&text).with_context(|| {
                    format!("message {read} of run {run:?} is not one this build reads (a shard of another version?)")
                })?;
                read += 1;
                let Some(late) = merger.accept(message)? else {
                    continue;
                };
                tracing::warn!(
                    shard = late.shard,
                    "an interval came after its second was closed: logged on its own"
                );
                if let Some(writer) = &mut hlog {
                    let start = Duration::from_millis(late.start_ms);
                    let length = Duration::from_millis(late.length_ms);
                    writer.write(&late.histograms, start, length)?;
                }
            }
            if count == 0 {
                break;
            }
        }
        let now_ms = store.redis_now_ms().saturating_sub(start_ms);
        for second in merger.close_ready(now_ms) {
            record(&second, &mut hlog, quiet, &merger, &live, shards)?;
        }
        if merger.over(elapsed_ms()) {
            let unfinished = merger.unfinished();
            if !unfinished.is_empty() {
                tracing::warn!(
                    shards = ?unfinished,
                    "shards gone without their final figures: the report lacks their share"
                );
            }
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    for second in merger.close_all() {
        record(&second, &mut hlog, quiet, &merger, &live, shards)?;
    }
    merger.report(&run)
}

/// Fails when what Redis holds is no longer the run being followed.
fn check_same_run(
    status: &Status,
    id: &Option<String>,
    read: usize,
    run: &str,
) -> anyhow::Result<()> {
    if status.id != *id {
        bail!(
            "run {run:?} was replaced in Redis by a new run of the same name while it was followed"
        );
    }
    if status.messages < read {
        bail!(
            "run {run:?}'s log in Redis holds {} messages, {read} were read: Redis lost data (a restart without persistence?), so the merged figures would be wrong",
            status.messages
        );
    }
    Ok(())
}

/// Waits until the run to follow has started; returns its status, shard count and start
/// (Redis clock, ms).
async fn started(
    store: &mut RunStore,
    which: Which,
    quiet: bool,
    patience: Duration,
) -> anyhow::Result<(Status, usize, u64)> {
    let deadline = Instant::now() + patience;
    let mut said = Instant::now() - Duration::from_secs(5);
    let mut passed_over: Option<Option<String>> = None;
    loop {
        match store.status().await {
            Ok(status) => {
                if which == Which::Next && passed_over.is_none() {
                    passed_over = Some(status.id.clone());
                }
                let not_the_last = passed_over.as_ref().is_none_or(|old| *old != status.id);
                if let (Some(shards), Some(start_ms), true) =
                    (status.shards, status.start_ms, not_the_last)
                {
                    anyhow::ensure!(
                        (1..=MAX_SHARDS).contains(&shards),
                        "run {:?} says it has {shards} shards",
                        store.run()
                    );
                    if status.live.is_empty() && !quiet {
                        eprintln!(
                            "tickrelay-loadgen: run {:?} is over (no shard live): reporting it as it ended; `watch --next` follows the next run",
                            store.run()
                        );
                    }
                    return Ok((status, shards, start_ms));
                }
                if !quiet && said.elapsed() >= Duration::from_secs(5) {
                    eprintln!(
                        "tickrelay-loadgen: waiting for run {:?} to start ({} shards registered of {})",
                        store.run(),
                        status.live.len(),
                        status
                            .shards
                            .map_or_else(|| "?".to_owned(), |n| n.to_string())
                    );
                    said = Instant::now();
                }
            }
            Err(err) => tracing::warn!(%err, "coordinating Redis: status failed; retrying"),
        }
        if Instant::now() >= deadline {
            bail!(
                "run {:?} did not start within {patience:?} (--wait-shards): is every shard running with --coordinate and the same --run?",
                store.run()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One merged second: into the interval log, and a progress line.
fn record(
    second: &ClosedSecond,
    hlog: &mut Option<HlogWriter>,
    quiet: bool,
    merger: &ShardMerger,
    live: &[usize],
    shards: usize,
) -> anyhow::Result<()> {
    if let Some(writer) = hlog {
        let start = Duration::from_secs(second.index);
        writer.write(&second.histograms, start, Duration::from_secs(1))?;
    }
    if quiet {
        return Ok(());
    }
    let point = &second.point;
    let ms = |micros: Option<u64>| micros.unwrap_or(0) as f64 / 1000.0;
    let (clients, reporting) = merger.clients();
    let missing = if second.missing.is_empty() {
        String::new()
    } else {
        format!("  (without shards {:?})", second.missing)
    };
    let done = shards - merger.unfinished().len();
    eprintln!(
        "[{:>5.0}s] shards {}/{shards} live {done} done  clients {}/{clients}{}  snapshots/s {:.0}  broadcast p50 {:.2} ms p99 {:.2} ms  errors {}{}{missing}",
        point.seconds,
        live.len(),
        point.clients_joined,
        if reporting < shards { "+" } else { "" },
        point.snapshots_per_second,
        ms(point.broadcast_p50_us),
        ms(point.broadcast_p99_us),
        point.errors,
        if point.measuring {
            ""
        } else {
            "  (not measuring)"
        },
    );
    Ok(())
}
