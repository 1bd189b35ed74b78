//! `--self-host`: a real tickrelay server (the same `tickrelay_server::run` production uses)
//! on its own runtime thread, listening on an ephemeral loopback port.

use std::thread;

use anyhow::Context as _;
use tickrelay_server::Config;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;

pub(crate) struct SelfHosted {
    url: String,
    shutdown: CancellationToken,
    thread: Option<thread::JoinHandle<()>>,
}

impl SelfHosted {
    /// The server's WebSocket URL, `ws://127.0.0.1:PORT/ws`.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn start(args: &RunArgs) -> anyhow::Result<Self> {
        let per_second = |interval: std::time::Duration| 1.0 / interval.as_secs_f64().max(1e-3);
        let config = Config {
            listen: "127.0.0.1:0".parse().context("loopback address")?,
            tick_hz: args.tick_hz,
            max_lobby_size: Config::default().max_lobby_size.max(args.lobby_size),
            // The planned sizes always fit (the message limit still applies).
            max_state_size: Config::default().max_state_size.max(args.state_size),
            max_event_size: Config::default().max_event_size.max(args.event_size),
            max_snapshot_size: Config::default()
                .max_snapshot_size
                .max(args.lobby_size * args.state_size),
            max_lobby_event_bytes: Config::default().max_lobby_event_bytes.max(
                (args.lobby_size as f64 * args.event_rate * args.event_size as f64 * 2.0).ceil()
                    as usize,
            ),
            // Leave headroom over the planned rates so the limits never trip by accident.
            max_state_rate: (args.state_rate * 2.0).ceil().max(120.0) as u32,
            max_event_rate: ((args.event_rate + per_second(args.ping_interval)) * 2.0)
                .ceil()
                .max(60.0) as u32,
            // The clients sign tickets with this secret: the server verifies them.
            ticket_secret: tickrelay_server::config::TicketSecret {
                ticket_secret: args.ticket_secret.as_deref().map(Into::into),
                ticket_secret_file: None,
            },
            ..Config::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("selfhost-server")
            .build()
            .context("starting the self-hosted server's runtime")?;
        let listener = runtime
            .block_on(async { tickrelay_server::bind(config.listen) })
            .context("binding the self-hosted server")?;
        let url = format!("ws://{}/ws", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = thread::Builder::new()
            .name("selfhost-server".into())
            .spawn(move || {
                if let Err(err) = runtime.block_on(tickrelay_server::run(listener, config, token)) {
                    tracing::error!(%err, "self-hosted server failed");
                }
            })?;
        Ok(Self {
            url,
            shutdown,
            thread: Some(thread),
        })
    }
}

impl Drop for SelfHosted {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
