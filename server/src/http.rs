//! HTTP routing: `/ws` (upgrade), `/healthz`, `/route` (which node runs a lobby) and `POST
//! /matchmake` (a seat in a pool's lobbies; both in `routing.rs`), `/lobbies`, `/stats` and
//! `/cluster` (JSON), `/metrics` (Prometheus), and the embedded browser files (`/`,
//! `/monitor`, `/tickrelay.js`). Everything that is not the WebSocket itself is small and
//! cheap; `/route`, `/matchmake` and `/cluster` ask Redis in fleet mode. `POST /drain`
//! (admin) moves this node's lobbies to other nodes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::context::ServerContext;
use crate::routing::{self, Refused};
use crate::{Surface, fleet};
use crate::{assets, stats, ws};

/// The routes only the admin surface serves (on their own listener with `--admin-listen`).
const ADMIN_PATHS: [&str; 6] = [
    "/lobbies", "/stats", "/metrics", "/monitor", "/cluster", "/drain",
];

/// Nodes per `/cluster` page, by default and at most.
const CLUSTER_PAGE_DEFAULT: usize = 100;
const CLUSTER_PAGE_MAX: usize = 1000;

pub(crate) async fn route(
    ctx: Arc<ServerContext>,
    request: Request<Incoming>,
    peer: SocketAddr,
    surface: Surface,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    // These change things: POST only, so no prefetch or crawler starts one.
    let method = if path == "/drain" || path == "/matchmake" {
        Method::POST
    } else {
        Method::GET
    };
    if request.method() != method {
        return Ok(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("only {method} is served at {path}\n"),
        ));
    }
    let admin_path = ADMIN_PATHS.contains(&path);
    let served = match surface {
        Surface::All => true,
        Surface::Public => !admin_path,
        Surface::Admin => admin_path || path == "/healthz",
    };
    if !served {
        return Ok(not_found(surface));
    }
    if let Some(endpoint) = ws::Endpoint::at(path, ctx.config.echo_endpoint) {
        return Ok(ws::upgrade(&ctx, request, peer, endpoint).unwrap_or_else(render_refusal));
    }
    let response = match path {
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/route" | "/matchmake" => {
            let forwarded = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|value| value.to_str().ok());
            let client = ctx.admission.client_ip(peer.ip(), forwarded);
            if path == "/route" {
                route_lobby(&ctx, &request, client).await
            } else {
                matchmake(&ctx, &request, client).await
            }
        }
        "/cluster" => cluster(&ctx, request.uri().query()).await,
        "/drain" if surface == Surface::All && !peer.ip().is_loopback() => text_response(
            StatusCode::FORBIDDEN,
            "POST /drain is served on the admin listener (--admin-listen), or from loopback \
             when there is none\n",
        ),
        "/drain" => drain(&ctx).await,
        "/lobbies" => match stats::lobbies(&ctx, request.uri().query()) {
            Ok(page) => json_response(&page, false),
            Err(problem) => text_response(StatusCode::BAD_REQUEST, &format!("{problem}\n")),
        },
        // Polled every second by the monitor: compact.
        "/stats" => json_response(&stats::stats(&ctx), false),
        "/metrics" => {
            let mut response = text_response(StatusCode::OK, &ctx.metrics.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        path => match assets::find(path) {
            Some(asset) => asset_response(&asset),
            None => not_found(surface),
        },
    };
    Ok(response)
}

/// `GET /route?lobby=NAME`: the URL of the node that runs the lobby (in fleet mode, placing a
/// new lobby on the least-loaded live node; on a single node, this node).
async fn route_lobby(
    ctx: &ServerContext,
    request: &Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    let params = match params(request.uri().query(), &["lobby"]) {
        Ok(params) => params,
        Err(problem) => return answer(Err(Refused::BadRequest(problem))),
    };
    let Some(lobby) = params.into_iter().next().flatten() else {
        return text_response(StatusCode::BAD_REQUEST, "missing parameter lobby\n");
    };
    answer(routing::paced(ctx, client, routing::route(ctx, &lobby, bearer(request))).await)
}

/// `POST /matchmake?pool=NAME[&size=N]`: a seat in the fullest lobby of the pool with room.
async fn matchmake(
    ctx: &ServerContext,
    request: &Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    let params = match params(request.uri().query(), &["pool", "size"]) {
        Ok(params) => params,
        Err(problem) => return answer(Err(Refused::BadRequest(problem))),
    };
    let [pool, size] = <[Option<String>; 2]>::try_from(params).unwrap_or_default();
    let Some(pool) = pool else {
        return text_response(StatusCode::BAD_REQUEST, "missing parameter pool\n");
    };
    let size = match size.map(|size| size.parse::<usize>()) {
        None => None,
        Some(Ok(size)) => Some(size),
        Some(Err(_)) => {
            return text_response(StatusCode::BAD_REQUEST, "size must be a number\n");
        }
    };
    let asked = routing::matchmake(ctx, &pool, size, bearer(request));
    answer(routing::paced(ctx, client, asked).await)
}

/// The query's values for `names`, in order; an unknown parameter is a problem (a 400).
fn params(query: Option<&str>, names: &[&str]) -> Result<Vec<Option<String>>, String> {
    let mut values = vec![None; names.len()];
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(index) = names.iter().position(|name| *name == key) else {
            return Err(format!(
                "unknown parameter {key:?}: use {}",
                names.join(", ")
            ));
        };
        if values[index].replace(value.into_owned()).is_some() {
            return Err(format!("parameter {key:?} given twice"));
        }
    }
    Ok(values)
}

/// The token of an `Authorization: Bearer` header.
fn bearer(request: &Request<Incoming>) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn answer(result: Result<routing::Answer, Refused>) -> Response<Full<Bytes>> {
    match result {
        Ok(answer) => json_response(&answer, false),
        Err(Refused::BadRequest(problem)) => {
            text_response(StatusCode::BAD_REQUEST, &format!("{problem}\n"))
        }
        Err(Refused::Ticket(refusal)) => {
            let missing = refusal == tickrelay_protocol::ticket::TicketRefusal::Missing;
            let status = if missing {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            let mut response = text_response(
                status,
                &format!(
                    "{refusal}: this server requires tickets; send one for the lobby (or the pool) as Authorization: Bearer TICKET\n"
                ),
            );
            if missing {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
        Err(Refused::Conflict(problem)) => {
            text_response(StatusCode::CONFLICT, &format!("{problem}\n"))
        }
        Err(Refused::Unavailable { message, retry }) => unavailable(&message, retry),
    }
}

/// `POST /drain`: moves every lobby here to other nodes (at most `--drain-timeout`) and takes
/// this node out of placement for good; answers what moved once done. The node keeps
/// serving: stop it afterwards.
async fn drain(ctx: &Arc<ServerContext>) -> Response<Full<Bytes>> {
    // A task of its own: a drain cut off in the middle of a move (the request gone) could
    // leave a lobby frozen.
    let server = ctx.clone();
    let drained = ctx
        .tracker
        .spawn(async move { server.directory.drain(server.config.drain_timeout).await });
    match drained.await {
        Ok(Some(report)) => json_response(&report, false),
        Ok(None) => text_response(
            StatusCode::CONFLICT,
            "not in a fleet (--redis): there is no other node to move lobbies to\n",
        ),
        Err(_) => text_response(StatusCode::INTERNAL_SERVER_ERROR, "the drain failed\n"),
    }
}

/// `GET /cluster?offset=N&limit=M`: the fleet's live nodes by load, a page at a time.
async fn cluster(ctx: &ServerContext, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(fleet) = &ctx.fleet else {
        return text_response(
            StatusCode::NOT_FOUND,
            "not in a fleet: this node runs on its own (start nodes with --redis)\n",
        );
    };
    let mut offset = 0;
    let mut limit = CLUSTER_PAGE_DEFAULT;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = value.parse::<usize>().ok();
        match (&*key, number) {
            // Pages past any real fleet are empty, not an overflow.
            ("offset", Some(n)) => offset = n.min(1 << 30),
            ("limit", Some(n)) if n > 0 => limit = n.min(CLUSTER_PAGE_MAX),
            ("offset" | "limit", _) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    &format!("{key} must be a number (limit at least 1), not {value:?}\n"),
                );
            }
            (other, _) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {other:?}: use offset and limit\n"),
                );
            }
        }
    }
    #[derive(Serialize)]
    struct Page {
        node: String,
        nodes: Vec<fleet::NodeStatus>,
        total: usize,
        offset: usize,
        next_offset: Option<usize>,
    }
    match fleet.nodes(offset, limit).await {
        Ok((nodes, total)) => json_response(
            &Page {
                node: fleet.node_id.clone(),
                next_offset: offset.checked_add(limit).filter(|&next| next < total),
                nodes,
                total,
                offset,
            },
            false,
        ),
        Err(err) => unavailable(
            &format!("the lobby directory is unavailable ({err})"),
            fleet::RETRY_AFTER,
        ),
    }
}

/// 503 with `Retry-After` and the same shape as the WebSocket's `error`.
fn unavailable(message: &str, wait: std::time::Duration) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Unavailable<'a> {
        error: &'static str,
        message: &'a str,
        retry_after_ms: u64,
    }
    let mut response = json_response(
        &Unavailable {
            error: "overloaded",
            message,
            retry_after_ms: wait.as_millis() as u64,
        },
        false,
    );
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A 404 that lists what this listener does serve.
fn not_found(surface: Surface) -> Response<Full<Bytes>> {
    let served = match surface {
        Surface::All => {
            "/ws, /healthz, /route, POST /matchmake, /lobbies, /stats, /cluster, /metrics, POST \
             /drain, / (demo), /monitor and /tickrelay.js"
        }
        Surface::Public => {
            "/ws, /healthz, /route, POST /matchmake, / (demo) and /tickrelay.js (the admin \
             endpoints are on the admin listener)"
        }
        Surface::Admin => {
            "/healthz, /lobbies, /stats, /cluster, /metrics, POST /drain and /monitor"
        }
    };
    text_response(
        StatusCode::NOT_FOUND,
        &format!("not found: this listener serves {served}\n"),
    )
}

/// An upgrade the WebSocket layer refused, as an HTTP response.
fn render_refusal(refusal: ws::Refusal) -> Response<Full<Bytes>> {
    let mut response = text_response(refusal.status, &refusal.body);
    response.headers_mut().extend(refusal.headers);
    response
}

fn text_response(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response<T: Serialize>(value: &T, pretty: bool) -> Response<Full<Bytes>> {
    let body = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    match body {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // Live data: a poller must never get a cached copy.
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(err) => text_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
    }
}

fn asset_response(asset: &assets::Asset) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(asset.body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidate on every load, so a page never runs against a newer server with old code.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
