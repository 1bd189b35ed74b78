//! Following a distributed run (`watch`, and shard 0 of a `--coordinate` run): reads every
//! shard's messages from the coordinating Redis, shows the merged progress second by second,
//! writes the merged interval log, and once every shard has sent its final figures (or is
//! gone) builds the merged report.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, bail};

use crate::coordinate::RunStore;
use crate::hlog::HlogWriter;
use crate::report::Report;
use crate::shards::{ClosedSecond, ShardMerger, ShardMessage};

const POLL: Duration = Duration::from_millis(200);

/// Follows `store`'s run to its end. Waits at most `patience` for the run to start.
pub(crate) async fn follow(
    mut store: RunStore,
    quiet: bool,
    hlog: Option<&Path>,
    patience: Duration,
) -> anyhow::Result<Report> {
    let (shards, start_ms) = started(&mut store, quiet, patience).await?;
    let run = store.run().to_owned();
    let mut hlog = match hlog {
        Some(path) => Some(HlogWriter::create(
            path,
            UNIX_EPOCH + Duration::from_millis(start_ms),
            &format!("tickrelay-loadgen run {run:?}, {shards} shards merged"),
        )?),
        None => None,
    };
    let mut merger = ShardMerger::new(shards);
    let mut read = 0;
    let mut status_at = Instant::now() - Duration::from_secs(1);
    let mut live = Vec::new();
    let mut now_ms = 0;
    loop {
        // The status first, then the log to its end: a shard seen gone had published its
        // final figures before signing off, so they are read below.
        if status_at.elapsed() >= Duration::from_secs(1) {
            match store.status().await {
                Ok(status) => {
                    live = status.live;
                    status_at = Instant::now();
                }
                Err(err) => tracing::warn!(%err, "coordinating Redis: status failed; retrying"),
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
        now_ms = now_ms.max(store.redis_now_ms().saturating_sub(start_ms));
        for second in merger.close_ready(now_ms) {
            record(&second, &mut hlog, quiet, &merger, &live, shards)?;
        }
        let unfinished = merger.unfinished();
        if unfinished.iter().all(|shard| !live.contains(shard)) {
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

/// Waits until the run has started; returns its shard count and start (Redis clock, ms).
async fn started(
    store: &mut RunStore,
    quiet: bool,
    patience: Duration,
) -> anyhow::Result<(usize, u64)> {
    let deadline = Instant::now() + patience;
    let mut said = Instant::now() - Duration::from_secs(5);
    loop {
        let status = store.status().await?;
        if let (Some(shards), Some(start_ms)) = (status.shards, status.start_ms) {
            return Ok((shards, start_ms));
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
