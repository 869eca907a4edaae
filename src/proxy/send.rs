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

/// What a sent request is rebuilt from when its exchange failed after some of it was
/// written (hyper consumes a request once it writes it, and gives back only one it never
/// wrote). Taken only for an attempt whose failure could be retried (see [`send`]).
struct Replay {
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Replay {
    fn of(request: &Request<RequestBody>) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            headers: request.headers().clone(),
        }
    }

    fn into_request(self) -> Request<RequestBody> {
        let mut fresh = Request::new(RequestBody::Empty);
        *fresh.method_mut() = self.method;
        *fresh.uri_mut() = self.uri;
        *fresh.headers_mut() = self.headers;
        fresh
    }
}

/// Whether a failed attempt on `current` could be followed by another: the attempt
/// budget is not spent and some other server not tried yet is healthy. Errs towards
/// yes (affinity may still refuse the move), never towards no.
fn retry_possible(pool: &UpstreamPool, tried: &[BackendId], current: BackendId) -> bool {
    tried.len() + 1 < MAX_ATTEMPTS.min(pool.backends.len())
        && pool
            .backends
            .iter()
            .any(|b| b.id != current && !tried.contains(&b.id) && b.state.is_healthy())
}

/// Sends the request to a server of `pool` chosen by [`upstream_peer`], retrying on
/// another server when the connect failed (the request came back untouched, any
/// method), or when an idempotent request without a body failed after it was sent. A
/// server whose connect fails is marked down. The session's pin follows the server that
/// answered. Returns the response head and whether the session moved to another server.
///
/// A request that went out cannot be had back from hyper, so resending one needs a copy
/// of its head made before it is sent. That copy (method, URI and the whole header map)
/// is made only for an attempt whose failure could be retried: never with one server,
/// nor on the last attempt the budget allows, nor when no other server is healthy.
pub(super) async fn send(
    pool: &UpstreamPool,
    mut ctx: Option<&mut SessionCtx>,
    mut request: Request<RequestBody>,
    deadlines: Deadlines,
    tunnel: bool,
    access: &mut AccessRecord,
) -> Result<(Response<UpstreamBody>, bool), ProxyError> {
    let replayable =
        idempotent(request.method()) && http_body::Body::is_end_stream(request.body()) && !tunnel;
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
        let replay =
            (replayable && retry_possible(pool, &tried, backend.id)).then(|| Replay::of(&request));
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
            // Nothing of it was written: any method may go elsewhere.
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
            }) => match (&error, replay) {
                (UpstreamError::Exchange { .. } | UpstreamError::Closed { .. }, Some(replay)) => {
                    request = replay.into_request();
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
