//! WebSocket connections: the upgrade (subprotocol negotiation, connection limit), then one
//! task per connection: the session (`session`) reads, and flushes the writer (`writer`) when
//! the outbox holds what the tick could not write directly. An upgrade this module refuses
//! is a [`Refusal`] the HTTP layer renders; it never builds HTTP error responses itself.

mod direct;
mod guard;
mod rate;
pub(crate) mod session;
mod tls;
mod writer;

pub(crate) use guard::ConnectionGuard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, ORIGIN, RETRY_AFTER, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tickrelay_protocol::{Codec, close};
use tokio::io::AsyncReadExt;
use tokio_util::either::Either;
use tracing::{info, warn};

use crate::context::ServerContext;
use crate::outbox::DirectSink;
use direct::SharedTcpWrite;
use tls::{TlsRead, TlsSocket, TlsWrite};

/// An upgrade request the server refuses: what the HTTP layer answers instead of 101.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    /// Headers the answer must carry (`Upgrade` on a 426; later `Retry-After` on a 503).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: String,
}

impl Refusal {
    /// A refusal, counted in `tickrelay_upgrades_refused{reason}`.
    fn new(ctx: &ServerContext, status: StatusCode, reason: &'static str, body: String) -> Self {
        ctx.metrics.upgrade_refused(reason);
        Self {
            status,
            headers: Vec::new(),
            body,
        }
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A 503 that says when to come back (`Retry-After`, whole seconds, at least 1).
    fn unavailable(
        ctx: &ServerContext,
        reason: &'static str,
        body: String,
        retry_after: Duration,
    ) -> Self {
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        Self::new(ctx, StatusCode::SERVICE_UNAVAILABLE, reason, body)
            .with_header(RETRY_AFTER, HeaderValue::from(seconds))
    }
}

/// Which WebSocket endpoint a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/ws`: the relay.
    Relay,
    /// `/echo` (with `--echo-endpoint`): every message sent back as it came, for conformance
    /// suites; the same reader, limits and writer as the relay.
    Echo,
}

impl Endpoint {
    /// The endpoint served at `path`, if any (`/echo` only when enabled).
    pub(crate) fn at(path: &str, echo_enabled: bool) -> Option<Self> {
        match path {
            "/ws" => Some(Self::Relay),
            "/echo" if echo_enabled => Some(Self::Echo),
            _ => None,
        }
    }
}

/// What a client shed for want of a connection slot is told to wait (nothing says when a
/// slot frees; clients add their own jitter).
pub(crate) const FULL_RETRY_AFTER: Duration = Duration::from_secs(2);

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Handles `GET /ws` (or `/echo`): validates the upgrade, answers 101 and spawns the
/// connection.
pub(crate) fn upgrade(
    ctx: &Arc<ServerContext>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    endpoint: Endpoint,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        // A 426 names the protocol to upgrade to (RFC 9110 15.5.22).
        return Err(Refusal::new(
            ctx,
            StatusCode::UPGRADE_REQUIRED,
            "not_websocket",
            "this endpoint speaks WebSocket: connect with a WebSocket client\n".into(),
        )
        .with_header(UPGRADE, HeaderValue::from_static("websocket")));
    }
    let ip_slot = admit(ctx, &request, peer)?;
    let offered = offered_subprotocols(&request);
    let negotiated = Codec::negotiate(offered.as_deref())
        .map_err(|err| (StatusCode::BAD_REQUEST, "subprotocol", format!("{err}\n")))
        .and_then(|codec| {
            let upgrade = fastwebsockets::upgrade::upgrade(&mut request).map_err(|err| {
                let body = format!("invalid websocket handshake: {err}\n");
                (StatusCode::BAD_REQUEST, "bad_handshake", body)
            })?;
            Ok((codec, upgrade))
        });
    let (codec, (response, upgraded)) = match negotiated {
        Ok(negotiated) => negotiated,
        Err((status, reason, body)) => {
            ctx.admission.release(ip_slot);
            return Err(Refusal::new(ctx, status, reason, body));
        }
    };
    let (mut parts, _) = response.into_parts();
    // Echo the chosen subprotocol only if the client offered any (RFC 6455 4.2.2).
    if offered.is_some() {
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    // Over the limit: the session closes at once with 1013 (try again later), which a browser
    // can see, unlike an HTTP error status on the upgrade. The guard holds the slot (if any)
    // and the gauges for the connection's whole life, and gives them back however it ends.
    let guard = ConnectionGuard::open(ctx, ip_slot).ok_or_else(|| {
        Refusal::unavailable(
            ctx,
            "server_full",
            "server full: every connection slot and every pending slot is taken\n".into(),
            FULL_RETRY_AFTER,
        )
    })?;
    // One value into the task (not its four fields): each capture takes its own slot in every
    // connection's task.
    let setup = session::Setup {
        codec,
        peer,
        refuse: (!guard.has_slot()).then_some(close::TRY_AGAIN_LATER),
        endpoint,
    };
    let task_ctx = ctx.clone();
    let task = async move {
        let ctx = task_ctx;
        // Unwrapped before the match: a `match` on the await itself would keep fastwebsockets'
        // `WebSocket` wrapper in this task's state for the connection's whole life.
        let upgraded = upgraded.await.map(|ws| ws.into_inner().into_inner());
        match upgraded {
            Ok(io) => {
                info!(peer = %setup.peer, codec = setup.codec.name(), "connection opened");
                let Some(session) = run_connection(&ctx, io, setup) else {
                    warn!("the upgraded stream is not the server's own type; closed");
                    ctx.metrics.disconnect("internal_error");
                    return;
                };
                session.await;
            }
            Err(err) => {
                info!(peer = %setup.peer, %err, "websocket upgrade failed");
                ctx.metrics.disconnect("upgrade_failed");
            }
        }
        drop(guard);
    };
    ctx.tracker.spawn(task);
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}
/// The connection's session over the socket hyper's stream unwraps to: the TCP halves, or the
/// TLS session shared by reader, writer and tick; `None` if the stream is not the server's
/// own type (it always is: `serve_http` hands hyper a [`crate::HttpStream`]). A plain
/// function returning the future: as an `async fn` its moved-from locals (hyper's parts, the
/// halves) would keep their slots in every connection's task for the connection's life. One
/// `Either`, nothing boxed: TLS's future is no larger than plain TCP's, and a second level of
/// choice would widen every connection's task across an allocator size class.
fn run_connection(
    ctx: &Arc<ServerContext>,
    io: hyper::upgrade::Upgraded,
    setup: session::Setup,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    // Reads and writes go straight to the socket rather than through hyper's wrapper. Bytes
    // hyper read past the request (a client that sent its join right behind the handshake)
    // are replayed in front of the socket.
    let parts = io.downcast::<TokioIo<crate::HttpStream>>().ok()?;
    // Copied, and the original dropped now: even when empty it owns hyper's whole 8 KiB read
    // buffer, which would otherwise live as long as the connection.
    let early = Bytes::copy_from_slice(&parts.read_buf);
    drop(parts.read_buf);
    let early = std::io::Cursor::new(early);
    Some(match parts.io.into_inner() {
        Either::Left(tcp) => {
            let (read, write) = tcp.into_split();
            // Shared between the connection's writer and direct writes from the lobby's tick:
            // the same allocation as the sink the tick writes through.
            let write = Arc::new(write);
            let direct: Option<Arc<dyn DirectSink>> = Some(write.clone());
            let write = SharedTcpWrite(write);
            let read = early.chain(read);
            Either::Left(session::serve(ctx.clone(), read, write, direct, setup))
        }
        Either::Right(tls) => {
            let (tcp, session) = (*tls).into_inner();
            let socket = TlsSocket::new(tcp, session);
            let direct: Option<Arc<dyn DirectSink>> = Some(socket.clone());
            let read = early.chain(TlsRead(socket.clone()));
            let write = TlsWrite(socket);
            Either::Right(session::serve(ctx.clone(), read, write, direct, setup))
        }
    })
}

/// Admission (origin, handshake rates, the IP's connection count) for the client behind
/// `peer`: its place in its IP's count, or the refusal (403 for an origin, 503 with
/// `Retry-After` for the rest).
fn admit(
    ctx: &ServerContext,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<crate::admission::IpSlot, Refusal> {
    let forwarded = joined_header(request, X_FORWARDED_FOR);
    let ip = ctx.admission.client_ip(peer.ip(), forwarded.as_deref());
    let origin = request
        .headers()
        .get(ORIGIN)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    ctx.admission.admit(ip, origin).map_err(|refused| {
        let body = format!("{refused}\n");
        match refused.retry_after() {
            None => Refusal::new(ctx, StatusCode::FORBIDDEN, refused.reason(), body),
            Some(wait) => Refusal::unavailable(ctx, refused.reason(), body, wait),
        }
    })
}

/// All `Sec-WebSocket-Protocol` request headers joined into one comma-separated list.
fn offered_subprotocols(request: &Request<Incoming>) -> Option<String> {
    joined_header(request, SEC_WEBSOCKET_PROTOCOL)
}

/// Every value of header `name` joined into one comma-separated list (RFC 9110 5.3), or
/// `None` when the request has none.
fn joined_header(request: &Request<Incoming>, name: HeaderName) -> Option<String> {
    let values: Vec<&str> = request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}
