//! Admission: who may open a WebSocket, decided before the upgrade. It resolves the client's
//! IP (`X-Forwarded-For` only from `--trusted-proxies`), checks the browser `Origin` against
//! `--allowed-origins`, charges the global and the per-IP handshake rates (governor's GCRA
//! limiters) and holds the per-IP connection count. A refusal says when to come back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::Config;
use crate::sync::lock;

/// Keyed limiters keep an entry per IP seen; every this many handshakes the ones that are
/// back to a full bucket are dropped, so a scan of many addresses cannot grow memory forever.
const RETAIN_EVERY: u32 = 4096;

/// Why a client may not open a WebSocket now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its `Origin` is not in `--allowed-origins` (a page on another site).
    Origin(String),
    /// Its IP already holds `--max-connections-per-ip` connections.
    IpConnections { limit: usize },
    /// Over `--max-handshakes-per-ip`.
    IpRate { retry_after: Duration },
    /// Over `--max-handshakes-per-second`.
    GlobalRate { retry_after: Duration },
}

impl Refused {
    /// The label in `tickrelay_upgrades_refused{reason}`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Origin(_) => "origin",
            Self::IpConnections { .. } => "ip_connections",
            Self::IpRate { .. } => "ip_rate",
            Self::GlobalRate { .. } => "handshake_rate",
        }
    }

    /// When trying again may succeed: `None` for a refusal that waiting does not fix.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Origin(_) => None,
            // A connection of this IP must end first; nothing says when.
            Self::IpConnections { .. } => Some(Duration::from_secs(5)),
            Self::IpRate { retry_after } | Self::GlobalRate { retry_after } => Some(*retry_after),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Origin(origin) => write!(f, "origin {origin:?} is not allowed here"),
            Self::IpConnections { limit } => {
                write!(
                    f,
                    "too many connections from your address (at most {limit})"
                )
            }
            Self::IpRate { .. } => f.write_str("too many connection attempts from your address"),
            Self::GlobalRate { .. } => f.write_str("server busy: too many connection attempts"),
        }
    }
}

pub(crate) struct Admission {
    /// Lower-cased serialized origins (`https://game.example`); `None`: any.
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Vec<IpNet>,
    exempt: Vec<IpNet>,
    max_per_ip: usize,
    /// Open WebSocket connections per client IP (only IPs with at least one).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    global_rate: Option<DefaultDirectRateLimiter>,
    ip_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: std::sync::atomic::AtomicU32,
}

/// One connection's place in its IP's count; give it back with [`Admission::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpSlot(Option<IpAddr>);

impl Admission {
    pub(crate) fn new(config: &Config) -> Self {
        let quota = |per_second: u32| {
            NonZeroU32::new(per_second).map(|rate| Quota::per_second(rate).allow_burst(rate))
        };
        let origins = &config.allowed_origins;
        Self {
            allowed_origins: (!origins.is_empty())
                .then(|| origins.iter().map(|o| normalize_origin(o)).collect()),
            trusted_proxies: config.trusted_proxies.clone(),
            exempt: config.ip_limit_exempt.clone(),
            max_per_ip: config.max_connections_per_ip,
            per_ip: Mutex::new(HashMap::new()),
            global_rate: quota(config.max_handshakes_per_second).map(RateLimiter::direct),
            ip_rate: quota(config.max_handshakes_per_ip).map(RateLimiter::dashmap),
            checks: Default::default(),
        }
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    /// address in `X-Forwarded-For` that is not one (each proxy appends the address it saw).
    pub(crate) fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // A garbled entry: nothing left of it can be trusted.
                Err(_) => break,
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Spends one of `ip`'s handshake tokens on a question that is not a connection (`/route`,
    /// `/matchmake`): refused like a handshake over the rate.
    pub(crate) fn pace(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        let Some(limiter) = &self.ip_rate else {
            return Ok(());
        };
        self.retain_now_and_then(limiter);
        limiter.check_key(&ip).map_err(|not_until| Refused::IpRate {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }

    /// Admits a client at `ip` with `origin` (the request's `Origin` header, sent by
    /// browsers): the origin, then the IP's rate, the global rate and the IP's connection
    /// count. An attempt refused by a later check still spends the earlier rates' tokens.
    pub(crate) fn admit(&self, ip: IpAddr, origin: Option<&str>) -> Result<IpSlot, Refused> {
        if let (Some(allowed), Some(origin)) = (&self.allowed_origins, origin)
            && !allowed.contains(&normalize_origin(origin))
        {
            return Err(Refused::Origin(origin.to_owned()));
        }
        // The per-IP rate first: one address's refused flood must not spend the global
        // tokens everyone else needs.
        let exempt = self.exempt.iter().any(|net| net.contains(&ip));
        if let (false, Some(limiter)) = (exempt, &self.ip_rate) {
            self.retain_now_and_then(limiter);
            limiter
                .check_key(&ip)
                .map_err(|not_until| Refused::IpRate {
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                })?;
        }
        if let Some(global) = &self.global_rate {
            global.check().map_err(|not_until| Refused::GlobalRate {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })?;
        }
        if exempt {
            return Ok(IpSlot(None));
        }
        if self.max_per_ip == 0 {
            return Ok(IpSlot(None));
        }
        let mut per_ip = lock(&self.per_ip);
        let count = per_ip.entry(ip).or_default();
        if *count >= self.max_per_ip {
            return Err(Refused::IpConnections {
                limit: self.max_per_ip,
            });
        }
        *count += 1;
        Ok(IpSlot(Some(ip)))
    }

    /// Gives back a connection's place in its IP's count.
    pub(crate) fn release(&self, slot: IpSlot) {
        let IpSlot(Some(ip)) = slot else {
            return;
        };
        let mut per_ip = lock(&self.per_ip);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    fn retain_now_and_then(&self, limiter: &DefaultKeyedRateLimiter<IpAddr>) {
        use std::sync::atomic::Ordering;
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Origins compare case-insensitively and without a trailing slash.
fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(args: &[&str]) -> Admission {
        use clap::Parser as _;
        let config =
            Config::parse_from(std::iter::once("tickrelay-server").chain(args.iter().copied()));
        Admission::new(&config)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let direct = admission(&[]);
        let spoofed = Some("1.2.3.4");
        assert_eq!(direct.client_ip(ip("9.9.9.9"), spoofed), ip("9.9.9.9"));

        let proxied = admission(&["--trusted-proxies", "10.0.0.0/8,::1"]);
        assert_eq!(
            proxied.client_ip(ip("9.9.9.9"), spoofed),
            ip("9.9.9.9"),
            "not a proxy"
        );
        assert_eq!(proxied.client_ip(ip("10.1.1.1"), None), ip("10.1.1.1"));
        assert_eq!(
            proxied.client_ip(ip("10.1.1.1"), Some("1.2.3.4")),
            ip("1.2.3.4")
        );
        // The client can write anything left of what the proxies appended: take the nearest
        // address no trusted proxy is at.
        let chain = Some("6.6.6.6, 1.2.3.4, 10.2.2.2");
        assert_eq!(proxied.client_ip(ip("10.1.1.1"), chain), ip("1.2.3.4"));
        assert_eq!(
            proxied.client_ip(ip("::1"), Some("garbage, 10.3.3.3")),
            ip("10.3.3.3")
        );
    }

    #[test]
    fn origins_are_checked_only_when_an_allowlist_is_given() {
        let open = admission(&[]);
        assert!(
            open.admit(ip("127.0.0.1"), Some("https://evil.example"))
                .is_ok()
        );
        let strict = admission(&[
            "--allowed-origins",
            "https://Game.example/,http://localhost:8080",
        ]);
        assert!(
            strict
                .admit(ip("127.0.0.1"), Some("https://game.example"))
                .is_ok()
        );
        assert!(
            strict
                .admit(ip("127.0.0.1"), Some("http://localhost:8080"))
                .is_ok()
        );
        assert!(
            strict.admit(ip("127.0.0.1"), None).is_ok(),
            "no Origin: not a browser"
        );
        let refused = strict.admit(ip("127.0.0.1"), Some("https://evil.example"));
        assert_eq!(refused.unwrap_err().reason(), "origin");
    }

    #[test]
    fn per_ip_connections_are_capped_and_given_back() {
        let admission = admission(&["--max-connections-per-ip", "2", "--ip-limit-exempt", ""]);
        let a = ip("192.0.2.1");
        let first = admission.admit(a, None).unwrap();
        let second = admission.admit(a, None).unwrap();
        assert_eq!(
            admission.admit(a, None),
            Err(Refused::IpConnections { limit: 2 })
        );
        assert!(admission.admit(ip("192.0.2.2"), None).is_ok(), "another IP");
        admission.release(first);
        let third = admission.admit(a, None).expect("a place came back");
        admission.release(second);
        admission.release(third);
        assert!(
            lock(&admission.per_ip).get(&a).is_none(),
            "no entry left behind"
        );
    }

    #[test]
    fn one_address_over_its_rate_does_not_spend_the_global_rate() {
        let admission = admission(&[
            "--max-handshakes-per-ip",
            "2",
            "--max-handshakes-per-second",
            "5",
        ]);
        let flood = ip("192.0.2.66");
        for _ in 0..100 {
            let _ = admission.admit(flood, None);
        }
        for n in 0..3 {
            let other = ip(&format!("198.51.100.{n}"));
            assert!(
                admission.admit(other, None).is_ok(),
                "the others still get in"
            );
        }
    }

    #[test]
    fn handshake_rates_refuse_with_the_time_to_wait_and_loopback_is_exempt_per_ip() {
        let admission = admission(&["--max-handshakes-per-ip", "2"]);
        let a = ip("192.0.2.1");
        admission.admit(a, None).unwrap();
        admission.admit(a, None).unwrap();
        let refused = admission.admit(a, None).unwrap_err();
        assert_eq!(refused.reason(), "ip_rate");
        let wait = refused.retry_after().unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        for _ in 0..10 {
            assert!(
                admission.admit(ip("127.0.0.1"), None).is_ok(),
                "exempt by default"
            );
        }

        let global = admission_with_global(3);
        for n in 0..3 {
            global.admit(ip(&format!("192.0.2.{n}")), None).unwrap();
        }
        let refused = global.admit(ip("127.0.0.1"), None).unwrap_err();
        assert_eq!(
            refused.reason(),
            "handshake_rate",
            "the global rate exempts nobody"
        );
    }

    fn admission_with_global(per_second: u32) -> Admission {
        admission(&["--max-handshakes-per-second", &per_second.to_string()])
    }
}
