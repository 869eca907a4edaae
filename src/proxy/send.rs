//! The `upstream_peer` phase and the exchange around it: choose a server by affinity,
//! send, retry on another server when that is safe, and move the session's pin to the
//! server that answered.
//!
//! The request is built once (`upstream_request_filter`) before the first server is
//! chosen, so a retry resends it untouched; the one per-attempt header, the re-pin
//! flag, is set here.

use http::header::HeaderValue;
use http::{Method, Request, Response};

use super::access::AccessRecord;
use super::error::ProxyError;
use super::session::SessionCtx;
use crate::config::Affinity;
use crate::inject;
use crate::upstream::affinity::{self, Choice, SessionKey};
use crate::upstream::body::RequestBody;
use crate::upstream::client::{self, Deadlines};
use crate::upstream::{Backend, BackendId, SendError, UpstreamBody, UpstreamError, UpstreamPool};

/// `upstream_peer`: the server for the next attempt, chosen by affinity among those
/// not yet `tried`, and whether the session moves to it.
fn upstream_peer<'p>(
    pool: &'p UpstreamPool,
    key: Option<SessionKey>,
    tried: &[BackendId],
) -> Result<(&'p Backend, bool), ProxyError> {
    match affinity::choose(pool, key, tried) {
        Choice::Server { backend, repinned } => Ok((backend, repinned)),
        Choice::PinnedDown => Err(ProxyError::PinnedDown {
            upstream: pool.name.clone(),
        }),
        Choice::NoServer => Err(ProxyError::NoHealthyUpstream {
            upstream: pool.name.clone(),
        }),
    }
}

/// Methods a client may repeat without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Most servers one request is tried on.
const MAX_ATTEMPTS: usize = 3;

/// Sends the request to a server of `pool` chosen by [`upstream_peer`], retrying on
/// another server when the connect failed (the request came back untouched, any
/// method), or when an idempotent request without a body failed after it was sent. A
/// server whose connect fails is marked down. The session's pin follows the server that
/// answered. Returns the response head and whether the session moved to another server.
pub(super) async fn send(
    pool: &UpstreamPool,
    mut ctx: Option<&mut SessionCtx>,
    mut request: Request<RequestBody>,
    deadlines: Deadlines,
    tunnel: bool,
    access: &mut AccessRecord,
) -> Result<(Response<UpstreamBody>, bool), ProxyError> {
    let mut replay =
        (idempotent(request.method()) && http_body::Body::is_end_stream(request.body()) && !tunnel)
            .then(|| {
                (
                    request.method().clone(),
                    request.uri().clone(),
                    request.headers().clone(),
                )
            });
    let key = ctx.as_deref().map(|c| SessionKey {
        public_id: c.session.public_id.0,
        pinned: c.session.pinned,
    });
    let mut tried: Vec<BackendId> = Vec::new();
    loop {
        let (backend, repinned) = upstream_peer(pool, key, &tried)?;
        access.backend = Some(backend.name.clone());
        if key.is_some() {
            if repinned {
                request
                    .headers_mut()
                    .insert(inject::REPINNED.clone(), HeaderValue::from_static("1"));
            } else {
                request.headers_mut().remove(&inject::REPINNED);
            }
        }
        let attempt = std::time::Instant::now();
        let result = client::send(&backend.state, request, deadlines, tunnel).await;
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        backend.state.stats.attempt(attempt.elapsed(), status);
        let error = match result {
            Ok(response) => {
                if let Some(ctx) = ctx.as_deref_mut() {
                    pin(pool, ctx, backend, repinned);
                }
                return Ok((response, repinned && key.is_some()));
            }
            Err(SendError {
                error,
                request: Some(back),
            }) => {
                request = back;
                error
            }
            Err(SendError {
                error,
                request: None,
            }) => match (&error, replay.take()) {
                (
                    UpstreamError::Exchange { .. } | UpstreamError::Closed { .. },
                    Some((method, uri, headers)),
                ) => {
                    let mut fresh = Request::new(RequestBody::Empty);
                    *fresh.method_mut() = method;
                    *fresh.uri_mut() = uri;
                    *fresh.headers_mut() = headers;
                    request = fresh;
                    error
                }
                _ => return Err(error.into()),
            },
        };
        if error.is_connect_failure() {
            backend.state.mark_down(&pool.name, &backend.name, &error);
        }
        // One line per server and kind of failure per second, whatever the request rate.
        let kind = std::mem::discriminant(&error);
        let cause = crate::log::limit::Cause::of(&("attempt", &pool.name, &backend.name, kind));
        if let Some(suppressed) = crate::log::limit::admit(cause) {
            tracing::warn!(
                upstream = %pool.name,
                backend = %backend.name,
                error = %error,
                suppressed,
                "upstream attempt failed; trying another server"
            );
        }
        tried.push(backend.id);
        if tried.len() >= MAX_ATTEMPTS.min(pool.backends.len()) {
            return Err(error.into());
        }
    }
}

/// Records the server that answered in the session (`sticky`: its pin; `hash`: where it
/// was last served, so a move is reported once). Written only when it changes.
fn pin(pool: &UpstreamPool, ctx: &mut SessionCtx, backend: &Backend, repinned: bool) {
    if pool.affinity == Affinity::None || ctx.session.pinned == Some(backend.id) {
        return;
    }
    if repinned {
        tracing::info!(
            upstream = %pool.name,
            backend = %backend.name,
            session = %ctx.session.public_id.encode(),
            "session re-pinned"
        );
    }
    ctx.session.pinned = Some(backend.id);
    ctx.pin_changed = true;
}
