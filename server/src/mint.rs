//! The `ticket` subcommand: prints a join ticket signed with the server's HS256 secret (same
//! flags and environment as the server) or an Ed25519 private key, for tests and for small
//! games without a backend of their own.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tickrelay_protocol::Role;
use tickrelay_protocol::ticket::{TicketClaims, TicketSigner};

use crate::config::{ConfigError, TicketSecret, read_file};

/// Print a signed join ticket (a JWT) for one player and one lobby.
#[derive(Debug, Clone, Args)]
pub struct TicketCommand {
    /// The lobby the ticket admits to.
    #[arg(long)]
    pub lobby: String,

    /// The player's stable identity (one seat per identity per lobby).
    #[arg(long)]
    pub sub: String,

    /// Display name (default: the identity).
    #[arg(long)]
    pub name: Option<String>,

    /// `player` or `spectator`.
    #[arg(long, default_value = "player", value_parser = parse_role)]
    pub role: Role,

    /// How long the ticket is valid.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    #[command(flatten)]
    pub secret: TicketSecret,

    /// Sign with EdDSA using this Ed25519 private key (PEM, PKCS#8 `BEGIN PRIVATE KEY`);
    /// servers verify with the matching --ticket-public-key.
    #[arg(
        long,
        env = "TICKRELAY_TICKET_PRIVATE_KEY",
        value_name = "FILE",
        conflicts_with_all = ["ticket_secret", "ticket_secret_file"]
    )]
    pub private_key: Option<PathBuf>,
}

fn parse_role(value: &str) -> Result<Role, String> {
    match value {
        "player" => Ok(Role::Player),
        "spectator" => Ok(Role::Spectator),
        other => Err(format!("{other:?} is not a role (player, spectator)")),
    }
}

impl TicketCommand {
    /// The signed ticket, valid from `now_secs` (Unix seconds) for `--ttl`.
    pub fn sign(&self, now_secs: u64) -> Result<String, ConfigError> {
        let signer = match (&self.private_key, self.secret.load()?) {
            (Some(path), _) => TicketSigner::ed25519_pem(&read_file("private-key", path)?)
                .map_err(ConfigError::key("private-key"))?,
            (None, Some(secret)) => {
                TicketSigner::hs256(&secret).map_err(ConfigError::key(self.secret.flag()))?
            }
            (None, None) => {
                return Err(ConfigError {
                    flag: "ticket-secret",
                    problem: "(or --ticket-secret-file, or --private-key) is required to sign"
                        .into(),
                });
            }
        };
        let claims = TicketClaims {
            sub: self.sub.clone(),
            lobby: self.lobby.clone(),
            exp: now_secs.saturating_add(self.ttl.as_secs().max(1)),
            nbf: None,
            name: self.name.clone(),
            role: (self.role != Role::Player).then_some(self.role),
            node: None,
        };
        Ok(signer.sign(&claims))
    }
}
