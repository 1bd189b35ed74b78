//! The coordinator: starts worker threads, paces connections, drives the scenario's phases,
//! collects one interval of measurements per second (progress line, interval log), and
//! builds the final report. Scenarios are compositions of the same few phases. Each interval
//! has an index that workers tag their reports with; `interval` merges by it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::cli::Scenario;
use crate::coordinate::{BARRIER_POLL, Barrier, ShardLink, Waiting};
use crate::hlog::HlogWriter;
use crate::interval::{IntervalMerger, IntervalReport};
use crate::plan::{Plan, Target};
use crate::report::{RampResult, RampStep, Report, StormResult, TimelinePoint};
use crate::shards::{ShardInterval, ShardMessage, WireHistograms};
use crate::stats::{Counters, Histograms, Metric, Summary};
use crate::worker::{self, Command, WorkerHandle};

const COLLECT_EVERY: Duration = Duration::from_secs(1);
/// How long a collection waits for every worker's report before closing the interval without
/// the missing ones (their reports, when they come, are kept out of later intervals).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for every worker's last report (workers give clients 5 s to leave).
const STOP_REPORT_TIMEOUT: Duration = Duration::from_secs(10);
const PACING_STEP: Duration = Duration::from_millis(10);

/// Runs the plan against `target` and returns the report (SLOs not yet checked). With a
/// `link`, this is one shard of a distributed run: it publishes every interval and opens its
/// measured window with the other shards; the link comes back to publish the final figures.
pub(crate) async fn run(
    plan: Plan,
    target: Target,
    quiet: bool,
    hlog: Option<&Path>,
    link: Option<ShardLink>,
) -> anyhow::Result<(Report, Option<ShardLink>)> {
    let plan = Arc::new(plan);
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let workers = (0..plan.threads)
        .map(|id| worker::spawn(id, plan.clone(), target.clone(), reports_tx.clone()))
        .collect::<std::io::Result<Vec<_>>>()
        .context("starting worker threads")?;
    drop(reports_tx);
    let base = SystemTime::now();
    let hlog = match hlog {
        Some(path) => Some(HlogWriter::create(
            path,
            base,
            &format!("tickrelay-loadgen against {}", target.url),
        )?),
        None => None,
    };
    let mut coordinator = Coordinator {
        quiet,
        started: Instant::now(),
        base,
        workers,
        reports,
        hlog,
        last_collect: Instant::now(),
        merger: IntervalMerger::new(plan.threads),
        next_interval: 0,
        cumulative: Counters::default(),
        cumulative_before: Counters::default(),
        clients_joined: 0,
        measuring: None,
        measured_intervals: None,
        measured: Histograms::default(),
        window_start: Counters::default(),
        measured_seconds: 0.0,
        window_unix_ms: (0, 0),
        clients_joined_samples: Vec::new(),
        timeline: Vec::new(),
        clients_started: 0,
        plan: plan.clone(),
        link,
    };
    let outcome = coordinator.play().await;
    coordinator.stop_all().await;
    let (ramp, storm) = outcome?;
    let report = coordinator.report(ramp, storm);
    Ok((report, coordinator.link.take()))
}

struct Coordinator {
    plan: Arc<Plan>,
    quiet: bool,
    started: Instant,
    base: SystemTime,
    workers: Vec<WorkerHandle>,
    reports: mpsc::UnboundedReceiver<IntervalReport>,
    hlog: Option<HlogWriter>,
    last_collect: Instant,
    merger: IntervalMerger,
    /// The index the next collection asks workers for.
    next_interval: u64,
    /// Sum of the workers' cumulative counters at the last collection.
    cumulative: Counters,
    /// `cumulative` as it was one collection earlier.
    cumulative_before: Counters,
    /// Clients joined at the last collection.
    clients_joined: usize,
    /// When the measured window started, if it is open.
    measuring: Option<Instant>,
    /// Indexes of the intervals in the measured window: from the first, up to the last once
    /// the window closed.
    measured_intervals: Option<(u64, Option<u64>)>,
    measured: Histograms,
    window_start: Counters,
    measured_seconds: f64,
    window_unix_ms: (u128, u128),
    clients_joined_samples: Vec<usize>,
    /// One point per collection, for the report's timeline.
    timeline: Vec<TimelinePoint>,
    clients_started: usize,
    /// This run's place in a distributed run.
    link: Option<ShardLink>,
}

impl Coordinator {
    async fn play(&mut self) -> anyhow::Result<(Option<RampResult>, Option<StormResult>)> {
        let n_clients = self.plan.shard_clients;
        match self.plan.scenario {
            Scenario::Steady | Scenario::Churn => {
                self.ramp_to(n_clients).await;
                self.idle(self.plan.warmup).await;
                self.with_other_shards().await?;
                self.open_window().await;
                if self.plan.scenario == Scenario::Churn {
                    self.churn(self.plan.duration).await;
                } else {
                    self.idle(self.plan.duration).await;
                }
                self.close_window().await;
                Ok((None, None))
            }
            Scenario::Storm => {
                self.ramp_to(n_clients).await;
                self.idle(self.plan.warmup).await;
                self.with_other_shards().await?;
                self.open_window().await;
                self.idle(self.plan.storm_after).await;
                let storm = self.storm(n_clients).await;
                self.close_window().await;
                Ok((None, Some(storm)))
            }
            Scenario::Ramp => {
                self.open_window().await;
                let ramp = self.ramp().await;
                self.close_window().await;
                Ok((Some(ramp), None))
            }
        }
    }

    fn send(&self, worker: usize, command: Command) {
        // A worker only goes away at StopAll; a send failure then is harmless.
        let _ = self.workers[worker].commands.send(command);
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        for worker in 0..self.workers.len() {
            self.send(worker, command());
        }
    }

    /// Starts clients up to `target` at `connect_rate`, then waits (bounded) for all to join.
    async fn ramp_to(&mut self, target: usize) {
        let begin = Instant::now();
        let from = self.clients_started;
        while self.clients_started < target {
            let due = from + (begin.elapsed().as_secs_f64() * self.plan.connect_rate) as usize + 1;
            while self.clients_started < due.min(target) {
                let spec = self.plan.clients[self.clients_started].clone();
                self.send(spec.index % self.workers.len(), Command::Start(spec));
                self.clients_started += 1;
            }
            self.tick().await;
        }
        let deadline = Instant::now() + self.plan.connect_timeout + Duration::from_secs(2);
        while self.clients_joined < target && Instant::now() < deadline {
            self.tick().await;
        }
        if self.clients_joined < target {
            tracing::warn!(
                clients_joined = self.clients_joined,
                target,
                "not every client joined; measuring anyway"
            );
        }
    }

    /// Waits `length`, collecting every second.
    async fn idle(&mut self, length: Duration) {
        let until = Instant::now() + length;
        while Instant::now() < until {
            self.tick().await;
        }
    }

    async fn churn(&mut self, length: Duration) {
        let until = Instant::now() + length;
        let begin = Instant::now();
        let mut rejoined = 0usize;
        while Instant::now() < until {
            let due = (begin.elapsed().as_secs_f64() * self.plan.churn_rate) as usize;
            while rejoined < due {
                let spec = &self.plan.clients[fastrand::usize(..self.clients_started.max(1))];
                self.send(spec.index % self.workers.len(), Command::Rejoin(spec.index));
                rejoined += 1;
            }
            self.tick().await;
        }
    }

    async fn storm(&mut self, n_clients: usize) -> StormResult {
        let before = self.cumulative.clone();
        self.broadcast(|| Command::Storm);
        let dropped_at = Instant::now();
        // Joined counts fall as sessions notice the drop; wait until they have.
        let settle = Instant::now() + Duration::from_secs(2);
        while self.clients_joined >= n_clients && Instant::now() < settle {
            self.tick().await;
        }
        let deadline = dropped_at + self.plan.duration.max(Duration::from_secs(5));
        let mut recovery_ms = None;
        while Instant::now() < deadline {
            self.tick().await;
            if self.clients_joined >= n_clients {
                recovery_ms = Some(dropped_at.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        // One more collection, so the last reconnections' counts are in.
        self.tick().await;
        let since = self.cumulative.since(&before);
        StormResult {
            clients: n_clients,
            clients_back: self.clients_joined,
            recovery_ms,
            resumed: since.resumes,
            resumes_refused: since.resumes_refused,
            lost: since.resume_lost,
        }
    }

    async fn ramp(&mut self) -> RampResult {
        let bound_us = self.plan.ramp_bound.as_micros() as u64;
        let mut steps = Vec::new();
        loop {
            let target = (self.clients_started + self.plan.ramp_step).min(self.plan.shard_clients);
            self.ramp_to(target).await;
            let before = self.cumulative.clone();
            let mut broadcast = crate::stats::new_histogram();
            let until = Instant::now() + self.plan.ramp_interval;
            while Instant::now() < until {
                if let Some(interval) = self.tick().await {
                    let _ = broadcast.add(interval.get(Metric::Broadcast));
                }
            }
            let delta = self.cumulative.since(&before);
            let p99 = Summary::of(&broadcast).p99;
            let gap_ok = delta.tick_gaps as f64
                <= delta.snapshots_expected as f64 * self.plan.ramp_gap_tolerance;
            let met =
                p99 <= bound_us && delta.total_errors() == 0 && gap_ok && !broadcast.is_empty();
            steps.push(RampStep {
                clients: target,
                broadcast_p99_us: p99,
                errors: delta.total_errors(),
                tick_gaps: delta.tick_gaps,
                snapshots_expected: delta.snapshots_expected,
                met,
            });
            if !met || target >= self.plan.shard_clients {
                break;
            }
        }
        RampResult {
            bound_us,
            knee: knee(&steps),
            steps,
        }
    }

    /// In a distributed run, waits (collecting as usual) until every live shard is ready to
    /// measure, and until the instant they all open their windows at.
    async fn with_other_shards(&mut self) -> anyhow::Result<()> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let deadline = Instant::now() + link.patience();
        loop {
            let Some(link) = &mut self.link else {
                return Ok(());
            };
            match link.arrive(Barrier::Measure).await {
                Ok(Waiting::PassAt(at)) => {
                    self.idle(at.saturating_duration_since(Instant::now()))
                        .await;
                    return Ok(());
                }
                Ok(Waiting::Arrived(_)) => {}
                Err(err) => {
                    tracing::warn!(%err, "coordinating Redis: barrier poll failed; retrying")
                }
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the other shards were not ready to measure within {:?} (--wait-shards)",
                    link.patience()
                );
            }
            self.idle(BARRIER_POLL).await;
        }
    }

    /// Opens the measured window on a collection boundary, so the window's counters and
    /// histograms cover exactly its duration.
    async fn open_window(&mut self) {
        self.collect().await;
        self.measuring = Some(Instant::now());
        self.measured_intervals = Some((self.next_interval, None));
        self.window_unix_ms.0 = unix_ms();
        self.window_start = self.cumulative.clone();
        self.measured.reset();
        self.clients_joined_samples.clear();
    }

    async fn close_window(&mut self) {
        self.collect().await;
        if let Some(opened) = self.measuring.take() {
            self.measured_seconds = opened.elapsed().as_secs_f64();
            self.window_unix_ms.1 = unix_ms();
            if let Some((_, last)) = &mut self.measured_intervals {
                *last = self.next_interval.checked_sub(1);
            }
        }
    }

    /// Sleeps one pacing step; collects when a second has passed. Returns the interval's
    /// histograms when it collected.
    async fn tick(&mut self) -> Option<Histograms> {
        tokio::time::sleep(PACING_STEP).await;
        if self.last_collect.elapsed() < COLLECT_EVERY {
            return None;
        }
        Some(self.collect().await)
    }

    /// Opens interval `next_interval`, asks every worker for its report on it and waits, at
    /// most `wait`, until all have answered; the caller closes it.
    async fn gather(&mut self, command: impl Fn(u64) -> Command, wait: Duration) {
        let interval = self.next_interval;
        self.next_interval += 1;
        self.merger.open(interval);
        self.broadcast(|| command(interval));
        let deadline = tokio::time::Instant::now() + wait;
        while !self.merger.is_complete() {
            // Timed out, or every worker is gone: the caller reports who is missing.
            let Ok(Some(report)) = tokio::time::timeout_at(deadline, self.reports.recv()).await
            else {
                break;
            };
            self.merger.accept(report);
        }
    }

    async fn collect(&mut self) -> Histograms {
        let interval_start = self.last_collect;
        self.last_collect = Instant::now();
        self.gather(Command::Collect, REPORT_TIMEOUT).await;
        let closed = self.merger.close();
        if !closed.missing_workers.is_empty() {
            tracing::warn!(
                interval = closed.interval,
                workers = ?closed.missing_workers,
                "workers did not report within {REPORT_TIMEOUT:?}; the interval closes without them"
            );
        }
        for late in closed.late {
            // The samples belong to their own interval, long written out: they count towards
            // the measured totals if that interval was measured, and towards no other second.
            let measured = self.measured_intervals.is_some_and(|(first, last)| {
                late.interval >= first && last.is_none_or(|last| late.interval <= last)
            });
            tracing::warn!(
                worker = late.worker,
                interval = late.interval,
                measured,
                "a late interval report came after its interval closed"
            );
            if measured {
                self.measured.add(&late.histograms);
            }
        }
        let histograms = closed.histograms;
        self.cumulative_before = std::mem::replace(&mut self.cumulative, self.merger.counters());
        self.clients_joined = self.merger.clients_joined();
        if self.measuring.is_some() {
            self.measured.add(&histograms);
            self.clients_joined_samples.push(self.clients_joined);
        }
        if let Some(hlog) = &mut self.hlog {
            let start = interval_start.duration_since(self.started);
            if let Err(err) = hlog.write(&histograms, start, self.last_collect - interval_start) {
                tracing::error!(%err, "interval log write failed; continuing without it");
                self.hlog = None;
            }
        }
        let point = self.timeline_point(&histograms, self.last_collect - interval_start);
        if let Some(link) = &mut self.link {
            let end = self
                .last_collect
                .saturating_duration_since(link.started_at());
            link.publish(ShardMessage::Interval(Box::new(ShardInterval {
                shard: link.shard(),
                seq: 0,
                end_ms: end.as_millis() as u64,
                length_ms: (self.last_collect - interval_start).as_millis() as u64,
                histograms: WireHistograms::of(&histograms),
                counters: self.cumulative.clone(),
                clients_joined: self.clients_joined,
                clients: self.plan.shard_clients,
                measuring: self.measuring.is_some(),
            })));
        }
        if !self.quiet {
            self.progress(&point);
        }
        self.timeline.push(point);
        histograms
    }

    /// The interval just collected, as a point of the report's timeline.
    fn timeline_point(&self, interval: &Histograms, length: Duration) -> TimelinePoint {
        let delta = self.cumulative.since(&self.cumulative_before);
        let quantile = |metric, q| {
            let histogram = interval.get(metric);
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(q))
        };
        TimelinePoint {
            seconds: self.last_collect.duration_since(self.started).as_secs_f64(),
            interval_seconds: length.as_secs_f64(),
            clients_joined: self.clients_joined,
            snapshots_per_second: delta.snapshots_received as f64 / length.as_secs_f64().max(1e-3),
            broadcast_p50_us: quantile(Metric::Broadcast, 0.5),
            broadcast_p99_us: quantile(Metric::Broadcast, 0.99),
            broadcast_p999_us: quantile(Metric::Broadcast, 0.999),
            input_p99_us: quantile(Metric::InputToVisible, 0.99),
            errors: self.cumulative.total_errors(),
            measuring: self.measuring.is_some(),
        }
    }

    fn progress(&self, point: &TimelinePoint) {
        let ms = |micros: Option<u64>| micros.unwrap_or(0) as f64 / 1000.0;
        let (p50, p99) = (ms(point.broadcast_p50_us), ms(point.broadcast_p99_us));
        let delta = self.cumulative.since(&self.cumulative_before);
        let scheduled = delta.states_sent + delta.sends_skipped;
        let late = if scheduled == 0 {
            0.0
        } else {
            (delta.sends_late + delta.sends_skipped) as f64 * 100.0 / scheduled as f64
        };
        eprintln!(
            "[{:>5.0}s] clients {}/{}  snapshots/s {:.0}  broadcast p50 {p50:.2} ms p99 {p99:.2} ms  errors {}  late {late:.1}%{}",
            point.seconds,
            point.clients_joined,
            self.plan.shard_clients,
            point.snapshots_per_second,
            point.errors,
            if point.measuring {
                ""
            } else {
                "  (not measuring)"
            },
        );
    }

    async fn stop_all(&mut self) {
        self.gather(Command::StopAll, STOP_REPORT_TIMEOUT).await;
        let closed = self.merger.close();
        if !closed.missing_workers.is_empty() {
            tracing::warn!(workers = ?closed.missing_workers, "workers did not stop in time");
        }
        let last = self.merger.counters();
        // Errors seen while leaving (e.g. the server closing) still count for the whole run.
        if last.total_errors() > self.cumulative.total_errors() {
            self.cumulative.errors = last.errors;
        }
        for worker in self.workers.drain(..) {
            let _ = worker.thread.join();
        }
    }

    fn report(&self, ramp: Option<RampResult>, storm: Option<StormResult>) -> Report {
        let counters = self.window_counters();
        let mut report = Report::new(
            Some((*self.plan).clone()),
            &self.measured,
            counters,
            self.measured_seconds,
        );
        report.started_unix_ms = self
            .base
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        (report.window_start_unix_ms, report.window_end_unix_ms) = self.window_unix_ms;
        report.tick_hz = self.merger.tick_hz();
        report.clients_joined_at_end = self.clients_joined;
        report.clients_joined_avg = if self.clients_joined_samples.is_empty() {
            0.0
        } else {
            self.clients_joined_samples.iter().sum::<usize>() as f64
                / self.clients_joined_samples.len() as f64
        };
        report.snapshots_nominal = self.measured_seconds
            * f64::from(report.tick_hz.unwrap_or(0))
            * report.clients_joined_avg;
        report.whole_run = self.cumulative.clone();
        report.errors_whole_run = self.cumulative.errors.clone();
        report.wrong_node_followed = self.cumulative.wrong_node_followed;
        report.routed = self.cumulative.routed;
        report.matchmade = self.cumulative.matchmade;
        report.join_rate =
            self.cumulative
                .join_rate()
                .map(|(clients, seconds)| crate::report::JoinRate {
                    clients,
                    seconds,
                    per_second: clients as f64 / seconds,
                });
        report.clock_offset = self.merger.clock().estimate();
        report.clock_corrected = match self.plan.clock_correction {
            crate::cli::ClockCorrection::On => true,
            crate::cli::ClockCorrection::Off => false,
            crate::cli::ClockCorrection::Auto => {
                !self.plan.target.as_ref().is_some_and(Target::is_loopback)
            }
        };
        report.ramp = ramp;
        report.storm = storm;
        report.timeline = self.timeline.clone();
        report
    }

    fn window_counters(&self) -> Counters {
        self.cumulative.since(&self.window_start)
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The knee of a ramp: the largest client count of a step that met the bound, provided every
/// smaller step met it too (a noisy early failure ends the ramp, so there is none after it).
pub(crate) fn knee(steps: &[RampStep]) -> Option<usize> {
    steps
        .iter()
        .take_while(|step| step.met)
        .map(|step| step.clients)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(clients: usize, met: bool) -> RampStep {
        RampStep {
            clients,
            broadcast_p99_us: 0,
            errors: 0,
            tick_gaps: 0,
            snapshots_expected: 0,
            met,
        }
    }

    #[test]
    fn knee_is_the_last_step_that_met_the_bound() {
        assert_eq!(
            knee(&[step(1000, true), step(2000, true), step(3000, false)]),
            Some(2000)
        );
        assert_eq!(
            knee(&[step(1000, true), step(2000, true)]),
            Some(2000),
            "ceiling reached"
        );
        assert_eq!(knee(&[step(1000, false)]), None);
        assert_eq!(knee(&[]), None);
    }
}
