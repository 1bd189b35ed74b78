//! Worker threads: each runs a single-threaded tokio runtime holding a share of the clients,
//! so a client's measurements go into its worker's recorder without locks. The coordinator
//! talks to workers through commands and collects one `IntervalReport` per worker per second,
//! tagged with the interval it asked for.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, LocalSet};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Recorder, Shared};
use crate::interval::IntervalReport;
use crate::plan::{ClientSpec, Plan, Target};

/// How long stopping waits for clients to leave before abandoning them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum Command {
    /// Start a client.
    Start(ClientSpec),
    /// Churn: the client leaves, then joins again as a new connection.
    Rejoin(usize),
    /// Storm: drop every connection at once; clients reconnect with backoff.
    Storm,
    /// Send an `IntervalReport` for the interval with this index now.
    Collect(u64),
    /// Every client leaves; the worker sends its last report, tagged with this index, and
    /// exits.
    StopAll(u64),
}

pub(crate) struct WorkerHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) thread: thread::JoinHandle<()>,
}

pub(crate) fn spawn(
    id: usize,
    plan: Arc<Plan>,
    target: Target,
    reports: mpsc::UnboundedSender<IntervalReport>,
) -> std::io::Result<WorkerHandle> {
    let (commands, inbox) = mpsc::unbounded_channel();
    let thread = thread::Builder::new()
        .name(format!("loadgen-worker-{id}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(%err, "worker runtime failed to start");
                    return;
                }
            };
            let plan = Rc::new((*plan).clone());
            LocalSet::new().block_on(&runtime, run(id, plan, target, inbox, reports));
        })?;
    Ok(WorkerHandle { commands, thread })
}

struct ClientTask {
    spec: ClientSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn run(
    id: usize,
    plan: Rc<Plan>,
    target: Target,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<IntervalReport>,
) {
    let shared = Rc::new(Shared::new(plan, target));
    let mut clients: HashMap<usize, ClientTask> = HashMap::new();
    let start = |spec: ClientSpec, after: Option<JoinHandle<()>>| {
        let stop = CancellationToken::new();
        let task = tokio::task::spawn_local({
            let (spec, shared, stop) = (spec.clone(), shared.clone(), stop.clone());
            async move {
                if let Some(previous) = after {
                    let _ = previous.await;
                }
                client::run(spec, shared, stop).await;
            }
        });
        ClientTask { spec, stop, task }
    };
    while let Some(command) = inbox.recv().await {
        match command {
            Command::Start(spec) => {
                clients.insert(spec.index, start(spec, None));
            }
            Command::Rejoin(index) => {
                if let Some(old) = clients.remove(&index) {
                    old.stop.cancel();
                    clients.insert(index, start(old.spec, Some(old.task)));
                }
            }
            Command::Storm => {
                let storm = shared.storm.replace(CancellationToken::new());
                storm.cancel();
            }
            Command::Collect(interval) => {
                let _ = reports.send(take_interval(&shared, id, interval));
            }
            Command::StopAll(interval) => {
                for client in clients.values() {
                    client.stop.cancel();
                }
                let all = futures_join(clients.into_values().map(|c| c.task));
                let _ = tokio::time::timeout(STOP_TIMEOUT, all).await;
                let _ = reports.send(take_interval(&shared, id, interval));
                return;
            }
        }
    }
}

async fn futures_join(tasks: impl Iterator<Item = JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// The worker's report for `interval`: its histograms since the last report (then reset) and
/// its cumulative figures.
fn take_interval(shared: &Shared, worker: usize, interval: u64) -> IntervalReport {
    let mut recorder = shared.recorder.borrow_mut();
    let Recorder {
        histograms,
        counters,
        clock,
        tick_hz,
    } = &mut *recorder;
    let samples = histograms.clone();
    histograms.reset();
    IntervalReport {
        worker,
        interval,
        histograms: samples,
        counters: counters.clone(),
        clock: *clock,
        clients_joined: shared.clients_joined.get(),
        tick_hz: *tick_hz,
    }
}
