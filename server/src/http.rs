//! HTTP routing: `/ws` (upgrade), `/healthz`, `/lobbies` and `/stats` (JSON), `/metrics`
//! (Prometheus), and the embedded browser files (`/`, `/monitor`, `/tickrelay.js`).
//! Everything that is not the WebSocket itself is small, read-only and cheap.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::Surface;
use crate::context::ServerContext;
use crate::{assets, stats, ws};

/// The routes only the admin surface serves (on their own listener with `--admin-listen`).
const ADMIN_PATHS: [&str; 4] = ["/lobbies", "/stats", "/metrics", "/monitor"];

pub(crate) async fn route(
    ctx: Arc<ServerContext>,
    request: Request<Incoming>,
    peer: SocketAddr,
    surface: Surface,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n",
        ));
    }
    let path = request.uri().path();
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

/// A 404 that lists what this listener does serve.
fn not_found(surface: Surface) -> Response<Full<Bytes>> {
    let served = match surface {
        Surface::All => {
            "/ws, /healthz, /lobbies, /stats, /metrics, / (demo), /monitor and /tickrelay.js"
        }
        Surface::Public => {
            "/ws, /healthz, / (demo) and /tickrelay.js (the admin endpoints are on the admin \
             listener)"
        }
        Surface::Admin => "/healthz, /lobbies, /stats, /metrics and /monitor",
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
