//! WebSocket connections: the upgrade (subprotocol negotiation, connection limit), then one
//! task per connection: the session (`session`) reads, and flushes the writer (`writer`) when
//! the outbox holds what the tick could not write directly.

mod direct;
mod rate;
mod session;
mod writer;

pub(crate) use direct::{FrameHead, SharedTcpWrite};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tickrelay_protocol::{Codec, close};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tracing::info;

use crate::ServerContext;
use crate::http::text_response;

/// Handles `GET /ws`: validates the upgrade, answers 101 and spawns the connection.
pub(crate) fn upgrade(
    ctx: &Arc<ServerContext>,
    mut request: Request<Incoming>,
    peer: String,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        ctx.metrics.upgrade_refused("not_websocket");
        return text_response(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: connect with a WebSocket client\n",
        );
    }
    let offered = offered_subprotocols(&request);
    let codec = match Codec::negotiate(offered.as_deref()) {
        Ok(codec) => codec,
        Err(err) => {
            ctx.metrics.upgrade_refused("subprotocol");
            return text_response(StatusCode::BAD_REQUEST, &format!("{err}\n"));
        }
    };
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(parts) => parts,
        Err(err) => {
            ctx.metrics.upgrade_refused("bad_handshake");
            return text_response(
                StatusCode::BAD_REQUEST,
                &format!("invalid websocket handshake: {err}\n"),
            );
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
    let over_limit =
        ctx.ws_connections.fetch_add(1, Ordering::Relaxed) >= ctx.config.max_connections;
    ctx.metrics.connections.inc();
    ctx.metrics.connections_opened.inc();
    let task_ctx = ctx.clone();
    ctx.tracker.spawn(async move {
        let ctx = task_ctx;
        // Unwrapped before the match: a `match` on the await itself would keep fastwebsockets'
        // `WebSocket` wrapper in this task's state for the connection's whole life.
        let upgraded = upgraded.await.map(|ws| ws.into_inner().into_inner());
        match upgraded {
            Ok(io) => {
                info!(peer, codec = codec.name(), "connection opened");
                // Over the limit: the session closes at once with 1013 (try again later), which a
                // browser can see, unlike an HTTP error status on the upgrade.
                let refuse = over_limit.then_some(close::TRY_AGAIN_LATER);
                run_connection(&ctx, io, codec, peer, refuse).await;
            }
            Err(err) => {
                info!(peer, %err, "websocket upgrade failed");
                ctx.metrics.connections.dec();
                ctx.metrics.disconnect("upgrade_failed");
            }
        }
        ctx.ws_connections.fetch_sub(1, Ordering::Relaxed);
    });
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The connection's session, over the TCP halves when hyper's stream unwraps to TCP. A plain
/// function returning the future: as an `async fn` its moved-from locals (hyper's parts, the
/// halves) would keep their slots in every connection's task for the connection's life.
fn run_connection(
    ctx: &Arc<ServerContext>,
    io: hyper::upgrade::Upgraded,
    codec: Codec,
    peer: String,
    refuse: Option<u16>,
) -> impl Future<Output = ()> + Send + use<> {
    // Unwrap hyper's upgraded stream back into the TcpStream so reads and writes go through
    // tokio's lock-free owned halves. Bytes hyper read past the request (a client that sent
    // its join right behind the handshake) are replayed in front of the socket.
    match io.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            // Copied, and the original dropped now: even when empty it owns hyper's whole
            // 8 KiB read buffer, which would otherwise live as long as the connection.
            let early = Bytes::copy_from_slice(&parts.read_buf);
            drop(parts.read_buf);
            let read = std::io::Cursor::new(early).chain(read);
            // Shared between the connection's writer and direct writes from the lobby's tick.
            let write = SharedTcpWrite(Arc::new(write));
            let direct = Some(write.clone());
            Either::Left(session::serve(
                ctx.clone(),
                read,
                write,
                direct,
                codec,
                peer,
                refuse,
            ))
        }
        Err(io) => {
            let (read, write) = tokio::io::split(TokioIo::new(io));
            // Boxed: this rare arm's future would otherwise widen every connection's task.
            Either::Right(Box::pin(session::serve(
                ctx.clone(),
                read,
                write,
                None,
                codec,
                peer,
                refuse,
            )))
        }
    }
}

/// All `Sec-WebSocket-Protocol` request headers joined into one comma-separated list.
fn offered_subprotocols(request: &Request<Incoming>) -> Option<String> {
    let values: Vec<&str> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}
