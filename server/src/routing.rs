//! Where a client should play: `GET /route` (the node of a lobby named by the client) and
//! `POST /matchmake` (a seat in the fullest open lobby of a pool). No HTTP here: `http.rs`
//! parses the request and renders the answer or the refusal.
//!
//! With tickets on, `/matchmake` answers only a caller who shows who it is with a ticket for
//! the pool (its `lobby` claim is the pool's name) as `Authorization: Bearer`; `/route`
//! answers anyone, as without tickets, and checks a ticket shown. For a caller who showed
//! one, a node that can sign (an HS256 secret) adds a ticket for the lobby it names, with the
//! node it was placed on, valid no longer than the one shown: the relay then only verifies
//! it. Both questions cost the caller's address a handshake token (`--max-handshakes-per-ip`).

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use tickrelay_protocol::Role;
use tickrelay_protocol::ticket::{Ticket, TicketClaims, TicketRefusal};

use crate::config::Config;
use crate::context::{ServerContext, random_hex};
use crate::fleet::{self, RouteError};
use crate::matchmake::MatchError;

/// How long a ticket made for an answer is valid (or less: never longer than the caller's).
const MINTED_TTL: Duration = Duration::from_secs(60);

/// Room a pool's name leaves for a lobby number (`-` and up to 20 digits).
const POOL_NAME_MARGIN: usize = 21;

/// Where to play.
#[derive(Debug, Serialize)]
pub(crate) struct Answer {
    pub(crate) lobby: String,
    /// The node running (or about to run) the lobby; none on a single node.
    pub(crate) node: Option<String>,
    /// Its WebSocket URL.
    pub(crate) url: String,
    /// A ticket for the lobby (tickets on, and this node can sign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ticket: Option<String>,
    /// Matchmaking: players in the lobby plus seats promised, this one included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seats: Option<usize>,
    /// Matchmaking: the lobbies' size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<usize>,
    /// Matchmaking: whether this placement opened the lobby.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) opened: Option<bool>,
}

/// Why no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401 (no ticket) or 403 (a ticket that does not admit).
    #[error("{0}")]
    Ticket(TicketRefusal),
    /// 409: the pool's lobbies have another size.
    #[error("{0}")]
    Conflict(String),
    /// 503, with when to retry.
    #[error("{message}")]
    Unavailable { message: String, retry: Duration },
}

impl Refused {
    /// The label in `tickrelay_routing_refused_total{reason}`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Ticket(_) => "ticket",
            Self::Conflict(_) => "other_size",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Spends a handshake token of `client`'s (a flood of questions is refused like a flood of
/// connections), then answers with `answer`; a refusal is counted.
pub(crate) async fn paced(
    ctx: &ServerContext,
    client: IpAddr,
    answer: impl Future<Output = Result<Answer, Refused>>,
) -> Result<Answer, Refused> {
    let result = match ctx.admission.pace(client) {
        Ok(()) => answer.await,
        Err(refused) => Err(Refused::Unavailable {
            message: refused.to_string(),
            retry: refused.retry_after().unwrap_or(Duration::from_secs(1)),
        }),
    };
    if let Err(refused) = &result {
        ctx.metrics.routing_refused(refused.reason());
    }
    result
}

/// `GET /route?lobby=NAME`.
pub(crate) async fn route(
    ctx: &ServerContext,
    lobby: &str,
    bearer: Option<&str>,
) -> Result<Answer, Refused> {
    check_name("lobby", lobby, Config::MAX_LOBBY_NAME)?;
    // Routing needs no ticket (as ever); one shown must be good, and gets one back.
    let ticket = match bearer {
        Some(_) => authorize(ctx, bearer, lobby)?,
        None => None,
    };
    let (node, url) = match &ctx.fleet {
        None => (None, ctx.config.public_url()),
        Some(fleet) => {
            let route = fleet.route(lobby).await.map_err(|err| {
                let retry = match err {
                    RouteError::OwnerGone(wait) => wait,
                    _ => fleet::RETRY_AFTER,
                };
                Refused::Unavailable {
                    message: err.to_string(),
                    retry,
                }
            })?;
            (route.node, route.url)
        }
    };
    Ok(Answer {
        ticket: ticket.and_then(|ticket| mint(ctx, &ticket, lobby, node.as_deref())),
        lobby: lobby.to_owned(),
        node,
        url,
        seats: None,
        size: None,
        opened: None,
    })
}

/// `POST /matchmake?pool=NAME[&size=N]`: `size` is fixed by the pool's first placement (by
/// default `--max-lobby-size`, which it may not exceed).
pub(crate) async fn matchmake(
    ctx: &ServerContext,
    pool: &str,
    size: Option<usize>,
    bearer: Option<&str>,
) -> Result<Answer, Refused> {
    check_name("pool", pool, Config::MAX_LOBBY_NAME - POOL_NAME_MARGIN)?;
    let max = ctx.config.max_lobby_size;
    if size.is_some_and(|size| !(1..=max).contains(&size)) {
        return Err(Refused::BadRequest(format!(
            "size must be 1 to {max} (--max-lobby-size)"
        )));
    }
    let ticket = authorize(ctx, bearer, pool)?;
    if ticket.as_ref().is_some_and(|t| t.role == Role::Spectator) {
        return Err(Refused::BadRequest(
            "matchmaking seats players: a spectator joins a lobby by name (/route)".into(),
        ));
    }
    // A player's promise is named by who they are, so asking again does not count twice.
    let promise = match &ticket {
        Some(ticket) => ticket.sub.clone(),
        None => random_hex(8),
    };
    let matched = ctx
        .directory
        .matchmake(pool, size, &promise)
        .await
        .map_err(|err| {
            ctx.metrics.matchmake("refused");
            match err {
                MatchError::OtherSize { .. } => Refused::Conflict(err.to_string()),
                MatchError::Full(_) => Refused::Unavailable {
                    retry: err.retry_after().unwrap_or(fleet::RETRY_AFTER),
                    message: err.to_string(),
                },
                MatchError::Unavailable { reason, retry } => Refused::Unavailable {
                    message: reason,
                    retry,
                },
            }
        })?;
    let placement = matched.placement;
    ctx.metrics
        .matchmake(if placement.opened { "opened" } else { "placed" });
    let (node, url) = match matched.node {
        Some((node, url)) => (Some(node), url),
        None => (None, ctx.config.public_url()),
    };
    Ok(Answer {
        ticket: ticket.and_then(|ticket| mint(ctx, &ticket, &placement.lobby, node.as_deref())),
        lobby: placement.lobby,
        node,
        url,
        seats: Some(placement.seats),
        size: Some(placement.size),
        opened: Some(placement.opened),
    })
}

fn check_name(what: &str, value: &str, max: usize) -> Result<(), Refused> {
    crate::ws::session::validate_name(what, value, max).map_err(Refused::BadRequest)
}

/// The caller's ticket for `lobby` (or pool), when the server requires tickets.
fn authorize(
    ctx: &ServerContext,
    bearer: Option<&str>,
    lobby: &str,
) -> Result<Option<Ticket>, Refused> {
    let Some(verifier) = &ctx.tickets else {
        return Ok(None);
    };
    match verifier.verify(bearer, lobby, unix_secs()) {
        Ok(ticket) => Ok(Some(ticket)),
        Err(refusal) => {
            ctx.metrics.ticket_refused(refusal.reason());
            Err(Refused::Ticket(refusal))
        }
    }
}

/// A ticket for `lobby` on `node` for the holder of `shown`, if this node can sign.
fn mint(ctx: &ServerContext, shown: &Ticket, lobby: &str, node: Option<&str>) -> Option<String> {
    let signer = ctx.ticket_signer.as_ref()?;
    let now = unix_secs();
    let claims = TicketClaims {
        sub: shown.sub.clone(),
        lobby: lobby.to_owned(),
        exp: shown.exp.min(now + MINTED_TTL.as_secs()),
        nbf: None,
        name: Some(shown.name.clone()),
        role: Some(shown.role),
        node: node.map(str::to_owned),
    };
    Some(signer.sign(&claims))
}

/// Unix seconds, the unit of tickets' times.
fn unix_secs() -> u64 {
    crate::clock::unix_micros() / 1_000_000
}
