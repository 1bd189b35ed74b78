//! tickrelay-loadgen: thousands of real WebSocket clients playing lobbies against a tickrelay
//! server, measuring latency in HdrHistograms.
//!
//! Flow: `cli` → validated `plan::Plan` → `runner` (coordinator: pacing, scenario phases,
//! per-second collection, merged by interval index in `interval`) → `worker` threads, each a
//! single-threaded runtime running many `client`s that record into the worker's own
//! histograms → `report` (table, JSON), `html` (the `--html` page), `hlog` (interval logs,
//! merge) and `slo` (exit code). A distributed run (`--coordinate`) adds `coordinate` (the
//! Redis the shards meet in), `shards` (what they publish, and its merge) and `watch` (the
//! merged progress and report, for `watch` and shard 0).

mod cli;
mod client;
mod clock;
mod coordinate;
mod hlog;
mod html;
mod interval;
mod net;
mod plan;
mod report;
mod runner;
#[cfg(feature = "self-host")]
mod selfhost;
#[cfg(not(feature = "self-host"))]
mod selfhost {
    //! Stand-in for a build without the `self-host` feature (and so without the server crate):
    //! `--self-host` stays a flag, so the refusal can say how to get it.

    use crate::cli::RunArgs;

    /// Uninhabited: there is never a self-hosted server in this build.
    pub(crate) enum SelfHosted {}

    impl SelfHosted {
        pub(crate) fn start(_args: &RunArgs) -> anyhow::Result<Self> {
            anyhow::bail!("this build has no --self-host: rebuild with the self-host feature")
        }

        pub(crate) fn url(&self) -> &str {
            match *self {}
        }
    }
}
mod shards;
mod slo;

mod stats;
mod tls;
mod watch;
mod worker;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

pub use crate::cli::Cli;
use crate::cli::{Command, MergeArgs, ReportArgs, RunArgs, Scenario, WatchArgs};
use crate::coordinate::{RunStore, ShardLink};
use crate::report::{Report, SloResult};
use crate::shards::{ShardFinal, ShardMessage};

/// Exit code when a `--slo` bound is broken (1 is any other failure).
pub const EXIT_SLO_BROKEN: u8 = 2;

/// Runs the parsed command line; what `main` calls.
pub fn main_with(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Merge(args)) => merge(&args),
        Some(Command::Watch(args)) => watch(&args),
        None => run(&cli.run),
    }
}

/// How long a shard waits for Redis to take its last figures.
const FINISH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let out = &args.report;
    let bounds = slo_bounds(out.slo.as_deref())?;
    let (own, merged) = measure(args)?;
    let report = match merged {
        Some(merged) => merged,
        None if args.coordinate.is_some() => {
            finish(&own, out.json.as_deref(), out.html.as_deref())?;
            if out.slo.is_some() {
                eprintln!(
                    "tickrelay-loadgen: this is shard {}'s share; --slo is judged on the merged figures (shard 0, or `watch`)",
                    args.shard
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        None => own,
    };
    deliver(report, bounds, out)
}

/// Judges `report` against `bounds` and writes it where `out` says: the run's exit code.
fn deliver(
    mut report: Report,
    bounds: Option<Vec<slo::Bound>>,
    out: &ReportArgs,
) -> anyhow::Result<ExitCode> {
    let code = verdict(&mut report, bounds, out.slo.as_deref());
    finish(&report, out.json.as_deref(), out.html.as_deref())?;
    Ok(code)
}

fn slo_bounds(spec: Option<&str>) -> anyhow::Result<Option<Vec<slo::Bound>>> {
    Ok(spec.map(slo::parse).transpose()?)
}

/// Judges `--slo` (exit 2 when a bound is broken), and a merged report that lacks a shard's
/// share (exit 1: it is not the run's figures).
fn verdict(report: &mut Report, bounds: Option<Vec<slo::Bound>>, spec: Option<&str>) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    let missing = report
        .shards
        .as_ref()
        .map_or(0, |shards| shards.missing.len());
    if missing > 0 {
        eprintln!(
            "tickrelay-loadgen: {missing} shards never sent their figures: the merged report lacks their share"
        );
        code = ExitCode::FAILURE;
    }
    if let (Some(bounds), Some(spec)) = (bounds, spec) {
        let mut violations = slo::check(&bounds, report);
        if missing > 0 {
            // Whatever the figures say, they are not the whole run's.
            violations.push(report::Violation {
                bound: "shards missing = 0".to_owned(),
                actual: Some(missing as f64),
            });
        }
        if !violations.is_empty() {
            code = ExitCode::from(EXIT_SLO_BROKEN);
        }
        report.slo = Some(SloResult {
            spec: spec.to_owned(),
            passed: violations.is_empty(),
            violations,
        });
    }
    code
}

/// Runs the load against `--url` or a self-hosted server, which stops when this returns.
/// Returns this process's report and, for shard 0 of a distributed run, the merged one.
fn measure(args: &RunArgs) -> anyhow::Result<(Report, Option<Report>)> {
    if args.coordinate.is_some() && args.scenario == Scenario::Ramp {
        anyhow::bail!(
            "--scenario ramp judges each step on one process's histograms: with --coordinate use steady, churn or storm"
        );
    }
    let self_hosted = if args.self_host {
        Some(selfhost::SelfHosted::start(args)?)
    } else {
        None
    };
    let url = match (&self_hosted, &args.url, &args.route) {
        (Some(server), _, _) => server.url().to_owned(),
        (None, Some(url), _) => url.clone(),
        (None, None, Some(route)) => plan::ws_url_of_route(route)?,
        (None, None, None) => anyhow::bail!("give --url ws://HOST:PORT/ws or --self-host"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the coordinator runtime")?;
    runtime.block_on(async {
        let trust = match (&args.ca, args.insecure) {
            (Some(ca), _) => Some(tls::Trust::Ca(ca)),
            (None, true) => Some(tls::Trust::Anything),
            (None, false) => None,
        };
        let target = plan::resolve_target(&url, trust).await?;
        let route = match &args.route {
            Some(route) => Some(plan::resolve_route(route, trust).await?),
            None => None,
        };
        let plan = plan::Plan::new(args, Some(target.clone()), route)?;
        if !args.report.quiet {
            eprintln!(
                "tickrelay-loadgen: {} clients ({} in this shard {}/{}) in lobbies of {} against {url}, scenario {:?}, {} worker threads",
                plan.total_clients, plan.shard_clients, plan.shard_index, plan.shard_count, plan.lobby_size, plan.scenario, plan.threads
            );
        }
        let Some(coordinate) = &args.coordinate else {
            let (report, _) = runner::run(plan, target, args.report.quiet, args.report.hlog.as_deref(), None).await?;
            return Ok((report, None));
        };
        let store = RunStore::connect(coordinate, &args.run).await?;
        let merging = plan.shard_index == 0;
        let link = ShardLink::join(
            store.clone(),
            plan.shard_index,
            plan.shard_count,
            &plan.shared_parameters().to_string(),
            args.wait_shards,
            args.report.quiet,
        )
        .await?;
        // Shard 0 shows the merged progress and writes the merged interval log instead of its own.
        let own = async {
            let hlog = if merging { None } else { args.report.hlog.as_deref() };
            let (report, link) = runner::run(plan, target, args.report.quiet || merging, hlog, Some(link)).await?;
            if let Some(link) = link {
                let last = ShardFinal::of(&report, link.shard(), link.host().to_owned());
                link.finish(ShardMessage::Final(Box::new(last)), FINISH_PATIENCE)
                    .await?;
            }
            anyhow::Ok(report)
        };
        if merging {
            let merged = watch::follow(
                store,
                watch::Which::Current,
                args.report.quiet,
                args.report.hlog.as_deref(),
                args.wait_shards,
            );
            match tokio::join!(own, merged) {
                (Ok(own), merged) => Ok((own, Some(merged?))),
                // The merged report names this shard missing: it is still the run's report.
                (Err(err), Ok(merged)) => {
                    eprintln!("tickrelay-loadgen: this shard failed: {err:#}");
                    Ok((merged.clone(), Some(merged)))
                }
                (Err(err), Err(_)) => Err(err),
            }
        } else {
            Ok((own.await?, None))
        }
    })
}

fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let out = &args.report;
    let bounds = slo_bounds(out.slo.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(async {
        let store = RunStore::connect(&args.redis, &args.run).await?;
        let which = if args.next {
            watch::Which::Next
        } else {
            watch::Which::Current
        };
        watch::follow(
            store,
            which,
            out.quiet,
            out.hlog.as_deref(),
            args.wait_shards,
        )
        .await
    })?;
    deliver(report, bounds, out)
}

fn merge(args: &MergeArgs) -> anyhow::Result<ExitCode> {
    let merged = hlog::merge(&args.files)?;
    let report = Report::new(
        None,
        &merged.histograms,
        stats::Counters::default(),
        merged.seconds,
    );
    println!(
        "merged {} tagged histograms (one per metric per interval) from {} files",
        merged.tagged_histograms,
        args.files.len()
    );
    finish(&report, args.json.as_deref(), args.html.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn finish(report: &Report, json: Option<&Path>, html: Option<&Path>) -> anyhow::Result<()> {
    print!("{}", report.render());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = html {
        let page = html::render(report).context("drawing the HTML report")?;
        std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
