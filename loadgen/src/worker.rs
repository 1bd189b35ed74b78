//! Worker threads: each runs a single-threaded tokio runtime holding a share of the clients,
//! so a client's measurements go into its worker's recorder without locks. The coordinator
//! talks to workers through commands and collects one `IntervalStats` per worker per second.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, LocalSet};
use tokio_util::sync::CancellationToken;

use crate::client::{self, Recorder, Shared};
use crate::clock::ClockEstimator;
use crate::plan::{ClientSpec, Plan, Target};
use crate::stats::{Counters, Histograms};

/// How long stopping waits for clients to leave before abandoning them.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub enum Command {
    /// Start a client.
    Start(ClientSpec),
    /// Churn: the client leaves, then joins again as a new connection.
    Rejoin(usize),
    /// Storm: drop every connection at once; clients reconnect with backoff.
    Storm,
    /// Send an `IntervalStats` now.
    Collect,
    /// Every client leaves; the worker sends its last stats and exits.
    StopAll,
}

/// One worker's measurements since its previous report.
pub struct IntervalStats {
    pub histograms: Histograms,
    /// Cumulative since the worker started.
    pub counters: Counters,
    pub clock: ClockEstimator,
    pub joined: usize,
    pub tick_hz: Option<u32>,
}

pub struct WorkerHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub thread: thread::JoinHandle<()>,
}

pub fn spawn(
    id: usize,
    plan: Arc<Plan>,
    target: Target,
    reports: mpsc::UnboundedSender<IntervalStats>,
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
            LocalSet::new().block_on(&runtime, run(plan, target, inbox, reports));
        })?;
    Ok(WorkerHandle { commands, thread })
}

struct ClientTask {
    spec: ClientSpec,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn run(
    plan: Rc<Plan>,
    target: Target,
    mut inbox: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<IntervalStats>,
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
            Command::Collect => {
                let _ = reports.send(take_interval(&shared));
            }
            Command::StopAll => {
                for client in clients.values() {
                    client.stop.cancel();
                }
                let all = futures_join(clients.into_values().map(|c| c.task));
                let _ = tokio::time::timeout(STOP_TIMEOUT, all).await;
                let _ = reports.send(take_interval(&shared));
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

fn take_interval(shared: &Shared) -> IntervalStats {
    let mut recorder = shared.recorder.borrow_mut();
    let Recorder {
        histograms,
        counters,
        clock,
        tick_hz,
    } = &mut *recorder;
    let interval = histograms.clone();
    histograms.reset();
    IntervalStats {
        histograms: interval,
        counters: counters.clone(),
        clock: *clock,
        joined: shared.joined.get(),
        tick_hz: *tick_hz,
    }
}
