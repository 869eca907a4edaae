//! The request path: a per-connection hyper service whose handler cannot fail, wrapped
//! around the fallible pipeline in [`pipeline`].
//!
//! The handler loads the runtime snapshot once, runs the pipeline, turns any
//! [`ProxyError`] into its response, and writes the access log line.

pub(crate) mod body;
mod error;
pub(crate) mod headers;
mod hijack;
mod pipeline;
mod request_id;
mod session;
mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

pub use body::{RequestBody, ResponseBody};
pub use error::{Blame, ProxyError};
pub(crate) use request_id::RequestIds;

use crate::listener::Activity;
use crate::log::limit::Cause;
use crate::state::AppState;

/// What the proxy knows about a client connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) peer: SocketAddr,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_value: http::HeaderValue,
    /// Lower-case TLS server name, when the client sent one.
    pub(crate) sni: Option<Box<str>>,
    pub(crate) activity: Arc<Activity>,
    /// The session cookie this connection last presented, already verified.
    pub(crate) cookies: crate::session::CookieCache,
    /// This connection's number, for generated request ids.
    pub(crate) conn_no: u64,
    /// Requests served on this connection so far, for generated request ids.
    pub(crate) requests: std::sync::atomic::AtomicU64,
    /// The identity assertion last signed for this connection.
    pub(crate) assertions: crate::assertion::AssertionCache,
    /// The User-Agent fingerprint last computed for this connection.
    pub(crate) agents: crate::anomaly::AgentCache,
    /// The first 8 bytes of the public id of the session last flagged as used by
    /// another client on this connection (0: none), so a flagged session logs one
    /// warning per connection, not one per request.
    pub(crate) flagged: std::sync::atomic::AtomicU64,
    /// The connection's permit, open count and cut signal (see [`ConnHold`]); a
    /// tunnel keeps the context, and so these, until it ends.
    pub(crate) hold: crate::listener::ConnHold,
}

/// Serves one request; never fails.
pub(crate) async fn serve(
    state: Arc<AppState>,
    conn: Arc<ConnCtx>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let _busy = conn.activity.begin();
    let started = Instant::now();
    let runtime = state.runtime();
    let access = runtime.config.log.access;
    let (method, uri) = if access {
        (Some(request.method().clone()), Some(request.uri().clone()))
    } else {
        (None, None)
    };
    let host = access
        .then(|| request.headers().get(http::header::HOST).cloned())
        .flatten();
    let mut log = pipeline::Outcome::default();
    let trusted = runtime
        .config
        .listen
        .trusted_proxies
        .contains(&conn.peer.ip());
    let request_id =
        state
            .request_ids
            .for_request(request.headers(), trusted, conn.conn_no, &conn.requests);
    log.request_id = Some(request_id.clone());
    let mut response = match pipeline::run(&state, &runtime, &conn, request, &mut log).await {
        Ok(response) => response,
        Err(error) => {
            match error.blame() {
                Blame::Client => tracing::debug!(peer = %conn.peer, %error, "request refused"),
                Blame::Upstream => {
                    // An outage fails every request: one line per route, server and
                    // kind of failure per second.
                    let kind = (std::mem::discriminant(&error), error.status().as_u16());
                    let cause = Cause::of(&("upstream failure", log.route, &log.backend, kind));
                    if let Some(suppressed) = crate::log::limit::admit(cause) {
                        tracing::warn!(
                            route = log.route,
                            backend = log.backend.as_deref().unwrap_or("-"),
                            error = %display_chain(&error),
                            suppressed,
                            "upstream failure"
                        );
                    }
                }
                Blame::Proxy => tracing::error!(%error, "internal error"),
            }
            log.refused = log.refused.or(error.refusal());
            error.to_response()
        }
    };
    if let Some(hsts) = &runtime.config.security.hsts {
        // Every https response, ours and errors included; replaces an upstream's.
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Some(cookie) = log.set_cookie.take() {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(&request_id::X_REQUEST_ID, request_id);
    let status = response.status().as_u16();
    if let Some(metrics) = &runtime.metrics {
        metrics.answered(log.route, status, started.elapsed());
        if let Some(reason) = log.refused {
            metrics.all().refuse(reason);
        }
    }
    if let (Some(method), Some(uri)) = (method, uri) {
        // Milliseconds to the microsecond, as numbers (JSON logs keep them numeric).
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1000.0;
        tracing::info!(
            target: "cloakroom::access",
            request_id = log.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            peer = %conn.peer.ip(),
            %method,
            host = host.as_ref().and_then(|h| h.to_str().ok()).or(uri.host()).unwrap_or("-"),
            path = uri.path(),
            route = log.route.and_then(|i| runtime.route_names.get(i)).map_or("-", |r| &**r),
            backend = log.backend.as_deref().unwrap_or("-"),
            session = log.session.map(|id| id.encode()).as_deref().unwrap_or("-"),
            user = log.identity.as_ref().and_then(|i| i.user.as_deref()).unwrap_or("-"),
            status,
            bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0),
            elapsed_ms = ms(started.elapsed()),
            upstream_ms = log.upstream_elapsed.map_or(0.0, ms),
        );
    }
    Ok(response)
}

/// An error and its causes, `a: b: c`.
fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
