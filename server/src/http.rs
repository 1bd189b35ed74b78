//! HTTP routing: `/ws` (upgrade), `/healthz`, `/lobbies` (JSON) and `/metrics` (Prometheus).
//! Everything that is not the WebSocket itself is small, read-only and cheap.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tickrelay_protocol::Member;

use crate::ServerContext;

pub(crate) async fn route(
    ctx: Arc<ServerContext>,
    request: Request<Incoming>,
    peer: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n",
        ));
    }
    let response = match request.uri().path() {
        "/ws" => crate::ws::upgrade(&ctx, request, peer),
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/lobbies" => json_response(&lobbies(&ctx)),
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
        _ => text_response(
            StatusCode::NOT_FOUND,
            "not found: this server serves /ws, /healthz, /lobbies and /metrics\n",
        ),
    };
    Ok(response)
}

#[derive(Serialize)]
struct LobbyView {
    name: String,
    members: Vec<Member>,
    member_count: usize,
    tick_hz: u32,
    age_seconds: f64,
    created_unix_ms: u128,
}

fn lobbies(ctx: &ServerContext) -> Vec<LobbyView> {
    ctx.directory
        .list()
        .into_iter()
        .map(|info| {
            let members = info.roster();
            LobbyView {
                name: info.name.clone(),
                member_count: members.len(),
                members,
                tick_hz: info.tick_hz,
                age_seconds: info.created.elapsed().as_secs_f64(),
                created_unix_ms: info
                    .created_unix
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
            }
        })
        .collect()
}

pub(crate) fn text_response(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(err) => text_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
    }
}
