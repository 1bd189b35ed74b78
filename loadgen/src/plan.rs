//! A run's plan: the command line validated and resolved into concrete values (target,
//! shard slice, client list, pacing) before any connection is made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use tickrelay_protocol::Codec;
use tickrelay_protocol::ticket::{TicketClaims, TicketSigner};

use crate::cli::{ClockCorrection, CodecArg, RunArgs, Scenario};
use crate::tls::{TlsClient, Trust};

/// Ephemeral ports per source address on this kind of machine (32768–60999).
pub(crate) const PORTS_PER_SOURCE: usize = 28_232;
/// Open files a process keeps for itself beyond its sockets.
const RESERVED_FILES: u64 = 64;

/// Where the server is.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) addr: SocketAddr,
    /// `wss://`: how the clients do TLS.
    #[serde(skip)]
    pub(crate) tls: Option<TlsClient>,
}

impl Target {
    pub(crate) fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// One simulated player: its global index decides its lobby and name.
#[derive(Debug, Clone)]
pub(crate) struct ClientSpec {
    pub(crate) index: usize,
    pub(crate) lobby: String,
    pub(crate) name: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) target: Option<Target>,
    /// `--route`: the node asked where each client's lobby runs (`GET /route`).
    pub(crate) route: Option<Target>,
    /// `--matchmake`: the pool each client asks the route's node a seat in, instead of
    /// joining its planned lobby.
    pub(crate) matchmake: Option<String>,
    pub(crate) self_host: bool,
    pub(crate) tick_hz: u32,
    pub(crate) scenario: Scenario,
    /// Clients in all shards together.
    pub(crate) total_clients: usize,
    /// Clients this process runs.
    pub(crate) shard_clients: usize,
    pub(crate) lobby_size: usize,
    pub(crate) shard_index: usize,
    pub(crate) shard_count: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) connect_rate: f64,
    pub(crate) state_rate: f64,
    pub(crate) state_size: usize,
    pub(crate) event_rate: f64,
    pub(crate) event_size: usize,
    pub(crate) ping_interval: Duration,
    #[serde(serialize_with = "codec_name")]
    pub(crate) codec: Codec,
    pub(crate) ramp_step: usize,
    pub(crate) ramp_interval: Duration,
    pub(crate) ramp_bound: Duration,
    pub(crate) ramp_gap_tolerance: f64,
    pub(crate) churn_rate: f64,
    pub(crate) storm_after: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) source_ips: Vec<Ipv4Addr>,
    pub(crate) lobby_prefix: String,
    pub(crate) threads: usize,
    pub(crate) clock_correction: ClockCorrection,
    /// Reconnecting clients resume their seats (not `--no-resume`).
    pub(crate) resume: bool,
    /// Signs each client's join ticket (`--ticket-secret`, `--ticket-private-key`).
    #[serde(serialize_with = "signer_algorithm")]
    pub(crate) tickets: Option<Arc<TicketSigner>>,
    #[serde(skip)]
    pub(crate) clients: Vec<ClientSpec>,
}

/// How long each signed ticket is valid: generous, for clocks a little apart.
const TICKET_TTL_SECS: u64 = 300;

fn signer_algorithm<S: serde::Serializer>(
    signer: &Option<Arc<TicketSigner>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match signer {
        Some(signer) => s.serialize_some(signer.algorithm()),
        None => s.serialize_none(),
    }
}

fn ticket_signer(args: &RunArgs) -> anyhow::Result<Option<TicketSigner>> {
    if let Some(path) = &args.ticket_private_key {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ticket-private-key {}", path.display()))?;
        return TicketSigner::ed25519_pem(&pem)
            .map(Some)
            .context("--ticket-private-key");
    }
    args.ticket_secret
        .as_ref()
        .map(|secret| TicketSigner::hs256(secret.as_bytes()).context("--ticket-secret"))
        .transpose()
}

fn codec_name<S: serde::Serializer>(codec: &Codec, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(codec.name())
}

impl Plan {
    /// Validates `args`; `target` is the resolved server (None until self-host starts).
    pub(crate) fn new(
        args: &RunArgs,
        target: Option<Target>,
        route: Option<Target>,
    ) -> anyhow::Result<Self> {
        ensure!(args.clients > 0, "--clients must be at least 1");
        ensure!(args.lobby_size > 0, "--lobby-size must be at least 1");
        ensure!(args.connect_rate > 0.0, "--connect-rate must be positive");
        ensure!(
            args.state_rate >= 0.0 && args.event_rate >= 0.0,
            "rates cannot be negative"
        );
        ensure!(
            args.event_rate == 0.0 || args.event_size >= 8,
            "--event-size must be at least 8 bytes (the send time travels in the event)"
        );
        ensure!(
            !args.ping_interval.is_zero(),
            "--ping-interval must be positive"
        );
        ensure!(
            args.scenario != Scenario::Ramp || args.ramp_step > 0,
            "--ramp-step must be at least 1"
        );
        let (shard_index, shard_count) = parse_shard(&args.shard)?;
        let source_ips = match &args.source_ips {
            Some(spec) => parse_source_ips(spec)?,
            None => Vec::new(),
        };
        let clients: Vec<ClientSpec> = (0..args.clients)
            .filter(|index| (index / args.lobby_size) % shard_count == shard_index)
            .map(|index| ClientSpec {
                index,
                lobby: format!("{}-{}", args.lobby_prefix, index / args.lobby_size),
                name: format!("p{index}"),
            })
            .collect();
        ensure!(
            !clients.is_empty(),
            "shard {shard_index}/{shard_count} gets no lobby: use fewer shards or more clients"
        );
        let plan = Self {
            target,
            route,
            matchmake: args.matchmake.clone(),
            self_host: args.self_host,
            tick_hz: args.tick_hz,
            scenario: args.scenario,
            total_clients: args.clients,
            shard_clients: clients.len(),
            lobby_size: args.lobby_size,
            shard_index,
            shard_count,
            duration: args.duration,
            warmup: args.warmup,
            connect_rate: args.connect_rate,
            state_rate: args.state_rate,
            state_size: args.state_size,
            event_rate: args.event_rate,
            event_size: args.event_size,
            ping_interval: args.ping_interval,
            codec: match args.codec {
                CodecArg::Msgpack => Codec::MessagePack,
                CodecArg::Json => Codec::Json,
            },
            ramp_step: args.ramp_step,
            ramp_interval: args.ramp_interval,
            ramp_bound: args.ramp_bound,
            ramp_gap_tolerance: args.ramp_gap_tolerance,
            churn_rate: args.churn_rate,
            storm_after: args.storm_after,
            backoff_base: args.backoff_base,
            backoff_max: args.backoff_max,
            connect_timeout: args.connect_timeout,
            source_ips,
            lobby_prefix: args.lobby_prefix.clone(),
            threads: if args.threads == 0 {
                std::thread::available_parallelism().map_or(1, usize::from)
            } else {
                args.threads
            },
            clock_correction: args.clock_correction,
            resume: !args.no_resume,
            tickets: ticket_signer(args)?.map(Arc::new),
            clients,
        };
        plan.check_machine_limits()?;
        Ok(plan)
    }

    /// What every shard of a distributed run must run alike: the plan without what may
    /// differ by machine (where it connects from and to, threads, its own slice).
    pub(crate) fn shared_parameters(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(fields) = value.as_object_mut() {
            for local in [
                "target",
                "route",
                "source_ips",
                "threads",
                "shard_index",
                "shard_clients",
                "clock_correction",
            ] {
                fields.remove(local);
            }
        }
        value
    }

    /// A freshly signed ticket for client `name` in `lobby` (or matchmaking pool), if
    /// tickets are on (`now_secs`: Unix seconds).
    pub(crate) fn ticket(&self, name: &str, lobby: &str, now_secs: u64) -> Option<String> {
        let signer = self.tickets.as_ref()?;
        Some(signer.sign(&TicketClaims {
            sub: name.to_owned(),
            lobby: lobby.to_owned(),
            exp: now_secs + TICKET_TTL_SECS,
            nbf: None,
            name: None,
            role: None,
            node: None,
        }))
    }

    /// Fails early, with the way out, when this process cannot hold its share of sockets.
    fn check_machine_limits(&self) -> anyhow::Result<()> {
        // A self-hosted server holds the other end of every connection in this process.
        let sockets = self.shard_clients as u64 * if self.self_host { 2 } else { 1 };
        let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
        if sockets + RESERVED_FILES > limit {
            bail!(
                "{} clients need about {} open files{} but this process may open only {limit} \
                 (RLIMIT_NOFILE hard limit). Run several load generators, each with \
                 --shard i/n, or lower --clients",
                self.shard_clients,
                sockets + RESERVED_FILES,
                if self.self_host {
                    " (client and server ends, with --self-host)"
                } else {
                    ""
                },
            );
        }
        let sources = self.source_ips.len().max(1);
        if self.shard_clients > sources * PORTS_PER_SOURCE {
            bail!(
                "{} connections from {sources} source address(es) exceed ~{PORTS_PER_SOURCE} \
                 ephemeral ports each: add --source-ips (e.g. 127.0.0.1-127.0.0.16 on loopback)",
                self.shard_clients
            );
        }
        Ok(())
    }
}

/// Parses `ws://host:port/path` or `wss://...` and resolves the host; `trust` says how `wss`
/// checks the server's certificate.
pub(crate) async fn resolve_target(url: &str, trust: Option<Trust<'_>>) -> anyhow::Result<Target> {
    let parsed = WsUrl::parse(url).with_context(|| format!("--url {url:?}"))?;
    secured(parsed, url, trust).await
}

/// `--route`'s node (`http://host:port` or `https://`), as a target whose path is `/route`.
pub(crate) async fn resolve_route(url: &str, trust: Option<Trust<'_>>) -> anyhow::Result<Target> {
    let parsed =
        WsUrl::parse(&route_as_ws(url, "/route")?).with_context(|| format!("--route {url:?}"))?;
    // --ca and --insecure are about TLS: a plain http:// route needs neither.
    let trust = trust.filter(|_| parsed.secure);
    secured(parsed, url, trust).await
}

/// The WebSocket URL of `--route`'s node: the clients' fallback when --url is not given.
pub(crate) fn ws_url_of_route(url: &str) -> anyhow::Result<String> {
    route_as_ws(url, "/ws")
}

/// `http(s)://host:port[/...]` as `ws(s)://host:port{path}`.
fn route_as_ws(url: &str, path: &str) -> anyhow::Result<String> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--route {url:?}: not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "ws",
        Some("https") => "wss",
        _ => {
            bail!("--route {url:?} must start with http:// or https://, e.g. http://127.0.0.1:8080")
        }
    };
    let authority = uri
        .authority()
        .with_context(|| format!("--route {url:?}: no host"))?;
    Ok(format!("{scheme}://{authority}{path}"))
}

async fn secured(parsed: WsUrl, url: &str, trust: Option<Trust<'_>>) -> anyhow::Result<Target> {
    let tls = match (parsed.secure, trust) {
        (true, trust) => Some(TlsClient::new(
            &parsed.host,
            trust.unwrap_or(Trust::System),
        )?),
        (false, None) => None,
        (false, Some(_)) => bail!("--ca and --insecure are for wss:// URLs"),
    };
    parsed.resolve(url, tls).await
}

impl Target {
    /// The node a fleet sent a client to (`wrong_node`'s `url`), trusted as this target is.
    pub(crate) async fn redirected(&self, url: &str) -> anyhow::Result<Self> {
        let parsed = WsUrl::parse(url)?;
        let tls = match (&self.tls, parsed.secure) {
            (Some(tls), true) => Some(tls.for_host(&parsed.host)?),
            (None, false) => None,
            _ => bail!(
                "{url} does not use the scheme of the run's --url {}",
                self.url
            ),
        };
        parsed.resolve(url, tls).await
    }
}

/// A WebSocket URL taken apart.
struct WsUrl {
    secure: bool,
    host: String,
    port: u16,
    path: String,
}

impl WsUrl {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url.parse().context("not a URL")?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("must start with ws:// or wss://, e.g. ws://127.0.0.1:8080/ws"),
        };
        Ok(Self {
            secure,
            host: uri.host().context("no host")?.to_owned(),
            port: uri.port_u16().unwrap_or(if secure { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/ws", |p| p.as_str())
                .to_owned(),
        })
    }

    async fn resolve(self, url: &str, tls: Option<TlsClient>) -> anyhow::Result<Target> {
        let (host, port) = (self.host, self.port);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Target {
            url: url.to_owned(),
            host: format!("{host}:{port}"),
            path: self.path,
            addr,
            tls,
        })
    }
}

/// `i/n` with i < n.
pub(crate) fn parse_shard(text: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = text.split_once('/').and_then(|(i, n)| {
        Some((
            i.trim().parse::<usize>().ok()?,
            n.trim().parse::<usize>().ok()?,
        ))
    });
    match parsed {
        Some((index, count)) if count > 0 && index < count => Ok((index, count)),
        _ => bail!("--shard must be i/n with 0 <= i < n, e.g. 0/2 (got {text:?})"),
    }
}

/// `127.0.0.1-127.0.0.16` (inclusive range) or `a,b,c`.
pub(crate) fn parse_source_ips(text: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let parse = |s: &str| -> anyhow::Result<Ipv4Addr> {
        match s.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => Ok(ip),
            _ => bail!("--source-ips: {s:?} is not an IPv4 address"),
        }
    };
    let ips: Vec<Ipv4Addr> = if let Some((first, last)) = text.split_once('-') {
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        ensure!(first <= last, "--source-ips range {text:?} is reversed");
        ensure!(
            last - first < 65_536,
            "--source-ips range {text:?} is too large"
        );
        (first..=last).map(Ipv4Addr::from).collect()
    } else {
        text.split(',').map(parse).collect::<anyhow::Result<_>>()?
    };
    ensure!(!ips.is_empty(), "--source-ips is empty");
    Ok(ips)
}

/// Full-jitter exponential backoff: a random delay in [0, min(max, base * 2^attempt)].
pub(crate) fn backoff_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_source_ip_parsing() {
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
        assert!(parse_shard("3/3").is_err());
        assert!(parse_shard("x").is_err());
        let ips = parse_source_ips("127.0.0.1-127.0.0.4").unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(parse_source_ips("127.0.0.9,127.0.0.2").unwrap().len(), 2);
        assert!(parse_source_ips("127.0.0.5-127.0.0.1").is_err());
        assert!(parse_source_ips("::1").is_err());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..30 {
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
            let delay = backoff_delay(base, max, attempt);
            assert!(
                delay <= ceiling,
                "attempt {attempt}: {delay:?} > {ceiling:?}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|_| backoff_delay(base, max, 3).as_micros())
            .collect();
        assert!(spread.len() > 10, "jitter spreads reconnects");
    }
}
