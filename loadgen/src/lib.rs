//! tickrelay-loadgen: thousands of real WebSocket clients playing lobbies against a tickrelay
//! server, measuring latency in HdrHistograms.
//!
//! Flow: `cli` → validated `plan::Plan` → `runner` (coordinator: pacing, scenario phases,
//! per-second collection, merged by interval index in `interval`) → `worker` threads, each a
//! single-threaded runtime running many `client`s that record into the worker's own
//! histograms → `report` (table, JSON), `html` (the `--html` page), `hlog` (interval logs,
//! merge) and `slo` (exit code).

mod cli;
mod client;
mod clock;
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
mod slo;

mod stats;
mod tls;
mod worker;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

pub use crate::cli::Cli;
use crate::cli::{Command, MergeArgs, RunArgs};
use crate::report::{Report, SloResult};

/// Exit code when a `--slo` bound is broken (1 is any other failure).
pub const EXIT_SLO_BROKEN: u8 = 2;

/// Runs the parsed command line; what `main` calls.
pub fn main_with(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Merge(args)) => merge(&args),
        None => run(&cli.run),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let bounds = match &args.slo {
        Some(spec) => Some(slo::parse(spec)?),
        None => None,
    };
    let mut report = measure(args)?;
    let mut code = ExitCode::SUCCESS;
    if let (Some(bounds), Some(spec)) = (bounds, &args.slo) {
        let violations = slo::check(&bounds, &report);
        if !violations.is_empty() {
            code = ExitCode::from(EXIT_SLO_BROKEN);
        }
        report.slo = Some(SloResult {
            spec: spec.clone(),
            passed: violations.is_empty(),
            violations,
        });
    }
    finish(&report, args.json.as_deref(), args.html.as_deref())?;
    Ok(code)
}

/// Runs the load against `--url` or a self-hosted server, which stops when this returns.
fn measure(args: &RunArgs) -> anyhow::Result<Report> {
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
        if !args.quiet {
            eprintln!(
                "tickrelay-loadgen: {} clients ({} in this shard {}/{}) in lobbies of {} against {url}, scenario {:?}, {} worker threads",
                plan.total_clients, plan.shard_clients, plan.shard_index, plan.shard_count, plan.lobby_size, plan.scenario, plan.threads
            );
        }
        runner::run(plan, target, args.quiet, args.hlog.as_deref()).await
    })
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
