//! `ServerContext`: everything the server's tasks share, built once by `run` and passed down
//! explicitly (there are no globals).

use std::sync::Arc;
use std::time::Instant;

use tickrelay_protocol::ticket::{TicketSigner, TicketVerifier};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::{Config, ConfigError};
use crate::fleet::{Fleet, FleetDirectory};
use crate::lobby;
use crate::metrics::Metrics;
use crate::resume::ResumeKeys;
use crate::tls::Tls;

/// Everything the server's tasks share. Built once by [`run`].
pub(crate) struct ServerContext {
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) directory: Box<dyn lobby::Directory>,
    /// This node's membership of a fleet (`--redis`); `None` on a single node.
    pub(crate) fleet: Option<Arc<Fleet>>,
    /// Verifies join tickets; `None` when joins need none (`--ticket-secret` and the like).
    pub(crate) tickets: Option<TicketVerifier>,
    /// Signs the tickets `/route` and `/matchmake` answer with: only with an HS256 secret
    /// (with an Ed25519 public key, relay nodes never hold the signing key).
    pub(crate) ticket_signer: Option<TicketSigner>,
    /// Cancelled to shut down: see [`run`].
    pub(crate) shutdown: CancellationToken,
    /// Every task the server spawns, so shutdown can wait for all of them.
    pub(crate) tracker: TaskTracker,
    /// One permit per WebSocket connection allowed (`--max-connections`), held by each
    /// connection's `ConnectionGuard`.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// One permit per connection that is not a WebSocket session with a slot
    /// (`--max-pending-connections`): HTTP connections until they upgrade or end, and
    /// refused (1013) sessions until they end.
    pub(crate) pending_slots: Arc<Semaphore>,
    /// Origins, handshake rates and per-IP connection counts, checked before each upgrade.
    pub(crate) admission: Admission,
    /// The public listener's TLS (`--tls-cert`), when it serves `https`/`wss`.
    pub(crate) tls: Option<Arc<Tls>>,
    /// Signs and verifies resume tokens.
    pub(crate) resume_keys: Arc<ResumeKeys>,
    /// When `run` started, for `/stats`' uptime.
    pub(crate) started: Instant,
}

impl ServerContext {
    /// Everything the server's tasks share, for a validated `config` (the ticket key and the
    /// TLS certificate are loaded here). Lobbies stop when `shutdown` is cancelled.
    pub(crate) fn new(
        config: Config,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, ConfigError> {
        let tickets = config.ticket_verifier()?;
        let ticket_signer = match config.ticket_public_key {
            Some(_) => None,
            None => config
                .ticket_secret
                .load()?
                .map(|secret| TicketSigner::hs256(&secret))
                .transpose()
                .map_err(ConfigError::key(config.ticket_secret.flag()))?,
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(Tls::load(cert, key).map_err(|err| {
                ConfigError {
                    flag: err.flag(),
                    problem: err.to_string(),
                }
            })?)),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let tracker = TaskTracker::new();
        let resume_keys = Arc::new(ResumeKeys::new(
            config.resume_secret.as_ref().map(|s| s.expose().as_bytes()),
        ));
        let resume = (!config.resume_grace.is_zero()).then(|| lobby::ResumeSettings {
            grace: config.resume_grace,
            history: lobby::HistoryLimits {
                messages: config.resume_history,
                bytes: config.resume_history_bytes,
                // The oldest message a resuming member can lack: it stopped reading at most
                // an idle timeout (or a write timeout) before its seat went away.
                age: config.idle_timeout.max(config.write_timeout) + config.resume_grace,
            },
            keys: resume_keys.clone(),
            // Half the reliable queue: the rest stays for what comes while it drains.
            max_replay_messages: config.max_queued_messages / 2,
            max_replay_bytes: config.max_queued_bytes / 2,
        });
        let settings = lobby::LobbySettings {
            tick_hz: config.tick_hz,
            tick_period: config.tick_period(),
            max_members: config.max_lobby_size,
            max_spectators: config.max_spectators,
            max_snapshot_bytes: config.max_snapshot_size,
            max_lobby_event_bytes: config.max_lobby_event_bytes,
            resume,
            join_window: config.matchmake_promise,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let local = lobby::LocalDirectory::new(
            settings,
            config.max_lobbies,
            config.matchmake_promise,
            tracker.clone(),
        );
        let fleet = match &config.redis {
            Some(url) => Some(Arc::new(
                Fleet::new(
                    url,
                    config.node_id.clone().unwrap_or_else(random_node_id),
                    config.public_url(),
                    config.lease,
                    // A moved lobby waits for its members as long as an away seat does.
                    config.resume_grace,
                    config.matchmake_promise,
                    metrics.clone(),
                )
                .map_err(|err| ConfigError {
                    flag: "redis",
                    problem: err.to_string(),
                })?,
            )),
            None => None,
        };
        let directory: Box<dyn lobby::Directory> = match &fleet {
            Some(fleet) => Box::new(FleetDirectory {
                local,
                fleet: fleet.clone(),
            }),
            None => Box::new(local),
        };
        Ok(Arc::new(Self {
            directory,
            fleet,
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            pending_slots: Arc::new(Semaphore::new(config.max_pending_connections)),
            admission: Admission::new(&config),
            tls,
            resume_keys,
            metrics,
            tickets,
            ticket_signer,
            shutdown,
            tracker,
            started: Instant::now(),
            config,
        }))
    }
}

/// A node id for a node given none: 8 random hex digits.
fn random_node_id() -> String {
    random_hex(4)
}

/// `bytes` random bytes as hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the OS random source works");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}
