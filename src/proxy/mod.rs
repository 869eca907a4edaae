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
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

pub use body::{RequestBody, ResponseBody};
pub use error::{Blame, ProxyError};

use crate::listener::Activity;
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
    /// The identity assertion last signed for this connection.
    pub(crate) assertions: crate::assertion::AssertionCache,
    /// The User-Agent fingerprint last computed for this connection.
    pub(crate) agents: crate::anomaly::AgentCache,
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
    let mut response = match pipeline::run(&state, &runtime, &conn, request, &mut log).await {
        Ok(response) => response,
        Err(error) => {
            if let Some(reason) = error.refusal() {
                refused(&state, reason);
            }
            match error.blame() {
                Blame::Client => tracing::debug!(peer = %conn.peer, %error, "request refused"),
                Blame::Upstream => tracing::warn!(
                    route = log.route,
                    backend = log.backend.as_deref().unwrap_or("-"),
                    error = %display_chain(&error),
                    "upstream failure"
                ),
                Blame::Proxy => tracing::error!(%error, "internal error"),
            }
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
    if let (Some(method), Some(uri)) = (method, uri) {
        tracing::info!(
            target: "cloakroom::access",
            peer = %conn.peer.ip(),
            %method,
            host = host.as_ref().and_then(|h| h.to_str().ok()).or(uri.host()).unwrap_or("-"),
            path = uri.path(),
            route = log.route,
            backend = log.backend.as_deref().unwrap_or("-"),
            session = log.session.map(|id| id.encode()).as_deref().unwrap_or("-"),
            status = response.status().as_u16(),
            elapsed_ms = %format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        );
    }
    Ok(response)
}

/// The hook for a request the proxy refused itself (`cloakroom_refused_total{reason}`
/// counts here once the metrics registry exists).
fn refused(_state: &AppState, reason: &'static str) {
    tracing::trace!(reason, "request refused");
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
