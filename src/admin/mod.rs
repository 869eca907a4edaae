//! The admin listener (plain HTTP, loopback by default; never on the https listener):
//! the status page for people at `/` ([`status`]), `/healthz`, `/readyz` ([`health`]),
//! `/metrics`, the session admin API ([`sessions`]) and `POST /reload` ([`reload`]). It keeps serving while client
//! connections drain at shutdown (`/readyz` is 503 then).
//!
//! With `listen.admin_token` set, every path but `/healthz` and `/readyz` (probes)
//! needs `Authorization: Bearer <token>`, compared in constant time; the status page's
//! paths also take the cookie its token form sets ([`status`]). The token and the
//! `Authorization` value are never logged. Answers are small and never cached.

mod health;
pub mod probe;
mod reload;
mod sessions;
mod status;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::proxy::ResponseBody;
use crate::shutdown::Signal;
use crate::state::AppState;

/// Deadline of an admin request's store call.
const STORE_DEADLINE: Duration = Duration::from_secs(5);

/// Serves the admin endpoints until `stop` is raised: after the client connections
/// drained, so that `/readyz` answers 503 while they do.
/// The status page's sampler runs beside it, as long.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AppState>, stop: Arc<Signal>) {
    let page = Arc::new(status::Status::new());
    let sampler = status::sample(state.clone(), page.clone(), stop.clone());
    let answer = move |request| {
        let state = state.clone();
        let page = page.clone();
        async move { answer(&state, &page, request).await }
    };
    let listener = crate::plain_http::serve(listener, "admin", answer, stop.wait());
    tokio::join!(listener, sampler);
}

/// Routes one admin request.
async fn answer(
    state: &AppState,
    page: &status::Status,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => return health::readyz(state).await,
        // The page checks its own access (token cookie or Bearer, CSRF, Origin).
        (_, p) if status::owns(p) => return status::answer(state, page, request).await,
        _ => {}
    }
    let runtime = state.runtime();
    if !authorized(
        runtime.config.listen.admin_token.as_ref(),
        request.headers(),
    ) {
        let mut response = text(StatusCode::UNAUTHORIZED, "401 admin token required\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cloakroom-admin\""),
        );
        return response;
    }
    let query = request.uri().query().unwrap_or("");
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => metrics(state).await,
        (&Method::POST, "/reload") => reload::post(state).await,
        (&Method::GET, "/sessions/count") => sessions::count(state).await,
        (&Method::GET, "/sessions") => sessions::list(state, query).await,
        (&Method::DELETE, "/sessions") => sessions::end_user(state, query).await,
        (&Method::DELETE, p) if p.starts_with("/sessions/") => {
            sessions::end_one(state, p.strip_prefix("/sessions/").unwrap_or("")).await
        }
        (_, "/metrics" | "/reload" | "/sessions" | "/sessions/count" | "/healthz" | "/readyz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "404 not found\n"),
    }
}

/// Whether the request may use the protected paths: no token configured, or the
/// `Bearer` token matches. Both sides are hashed first, so the comparison takes the
/// same time whatever the token's length and content.
fn authorized(token: Option<&crate::config::Secret>, headers: &http::HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    let a = ring::digest::digest(&ring::digest::SHA256, presented);
    let b = ring::digest::digest(&ring::digest::SHA256, &token.0);
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    !presented.is_empty() && diff == 0
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(state: &AppState) -> Response<ResponseBody> {
    // The sealed backend keeps no sessions to count.
    let sessions = match &state.index {
        Some(index) => tokio::time::timeout(STORE_DEADLINE, index.count())
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    let runtime = state.runtime();
    let servers = runtime.upstreams.iter().flat_map(|pool| {
        pool.backends.iter().map(|b| {
            (
                pool.name.clone(),
                b.name.to_string(),
                b.state.is_healthy(),
                b.state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    });
    let body = state.metrics.render(sessions, servers);
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(body.into())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = text(status, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = crate::config::Secret(b"s3cret-token".to_vec());
        let with = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(authorized(None, &http::HeaderMap::new()));
        assert!(authorized(Some(&token), &with("Bearer s3cret-token")));
        assert!(!authorized(Some(&token), &with("Bearer s3cret-tokenX")));
        assert!(!authorized(Some(&token), &with("Basic s3cret-token")));
        assert!(!authorized(Some(&token), &http::HeaderMap::new()));
        let empty = crate::config::Secret(Vec::new());
        assert!(!authorized(Some(&empty), &with("Bearer ")));
    }
}
