//! The phases of one proxied request, each a small function:
//! `route` → `session::begin` (CSRF, `require_user`) → `build_upstream_request` (strip,
//! inject) → `send` (choose a server, retry) → `finish_response` (hop-by-hop, control
//! headers, tunnel). Errors bubble up with `?` as [`ProxyError`]s; the caller in
//! `proxy::serve` turns them into responses and appends the queued `Set-Cookie`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::body::{RequestBody, ResponseBody};
use super::headers;
use super::session::{self, SessionCtx};
use super::tunnel::{self, Pending};
use super::{ConnCtx, ProxyError};
use crate::config::Affinity;
use crate::inject;
use crate::router::{normalize_host, RouteId};
use crate::session::{PublicId, Session};
use crate::state::{AppState, Runtime};
use crate::upstream::affinity::{self, Choice, SessionKey};
use crate::upstream::client::{self, Deadlines};
use crate::upstream::{Backend, BackendId, SendError, UpstreamError, UpstreamPool};

/// What the pipeline reports to the handler besides the response: the log fields, and
/// the session cookie to set, which goes on whatever response the client gets (an
/// error response included), so a new session is never orphaned.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) route: Option<usize>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) session: Option<PublicId>,
    pub(crate) set_cookie: Option<HeaderValue>,
    /// `X-Request-Id` of this request (sent upstream, returned, logged).
    pub(crate) request_id: Option<HeaderValue>,
    /// The session's identity when the request arrived (for the access log).
    pub(crate) identity: Option<Arc<crate::session::Identity>>,
    /// Time from sending upstream to its response head (retries included).
    pub(crate) upstream_elapsed: Option<std::time::Duration>,
    /// The session moved to another server on this request.
    pub(crate) repinned: bool,
    /// Why the proxy answered itself instead of the upstream (`require_user`, ...).
    pub(crate) refused: Option<&'static str>,
}

/// Our own endpoints on the https listener.
const LOGOUT_PATH: &str = "/.cloakroom/logout";
const JWKS_PATH: &str = "/.cloakroom/jwks.json";

/// Runs the pipeline for one request.
pub(crate) async fn run(
    state: &Arc<AppState>,
    rt: &Runtime,
    conn: &Arc<ConnCtx>,
    mut request: Request<Incoming>,
    log: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    check_head_size(&request, rt.config.limits.max_header_bytes)?;
    let rates = rt.config.security.rates;
    let anomaly_on = rt.config.security.anomaly != crate::config::AnomalyMode::Off;
    let client_ip = (rates.any() || anomaly_on).then(|| {
        crate::rate_limit::client_ip(
            conn.peer.ip(),
            request.headers(),
            &rt.config.listen.trusted_proxies,
        )
    });
    if let (Some(ip), Some(_)) = (client_ip, rates.per_ip) {
        rt.rate_limits
            .check_ip(ip)
            .map_err(ProxyError::RateLimited)?;
    }
    let host = request_host(&request)?;
    let host = &*host;
    if let Some(sni) = conn.sni.as_deref() {
        if !rt.config.tls.sni.is_empty() && !state.certs.covers(sni, host) {
            return Err(ProxyError::Misdirected);
        }
    }
    if request.uri().path() == LOGOUT_PATH {
        return session::logout_endpoint(state, rt, &request, log).await;
    }
    if let (JWKS_PATH, Some(assertions)) = (request.uri().path(), &rt.assertions) {
        return Ok(crate::assertion::jwks_response(
            assertions,
            request.method(),
        ));
    }
    let RouteId(route_id) = rt
        .router
        .route(host, request.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    log.route = Some(route_id);
    let route = rt
        .config
        .routes
        .get(route_id)
        .ok_or(ProxyError::Internal("route index out of range"))?;
    let pool = rt
        .upstreams
        .get(route.upstream)
        .ok_or(ProxyError::Internal("upstream index out of range"))?;
    check_content_length(&request, rt.config.limits.max_body_bytes)?;

    let now = state.clock.now_ms();
    let mut anomaly = None;
    let ctx = if route.session {
        // Before the session starts, so refused requests do not grow the store.
        if route.csrf {
            session::check_csrf(&request)?;
        }
        let mut ctx = session::find(state, rt, request.headers(), &conn.cookies, now).await?;
        if let Some(ip) = client_ip.filter(|_| rates.any()) {
            // An existing session counts against its own limit; only a session this
            // request would create counts against the client's new-session limit.
            match ctx.handle {
                session::Handle::Stored(_) | session::Handle::Sealed { .. } => {
                    rt.rate_limits.check_session(&ctx.session.public_id)
                }
                session::Handle::New => rt.rate_limits.check_new_session(ip),
            }
            .map_err(ProxyError::RateLimited)?;
        }
        if let Some(ip) = client_ip.filter(|_| anomaly_on) {
            anomaly =
                super::hijack::check(state, rt, &mut ctx, request.headers(), ip, conn, now).await?;
        }
        log.session = Some(ctx.session.public_id);
        log.identity.clone_from(&ctx.session.identity);
        if let Some(response) = session::require_user(route, &ctx, &request) {
            log.refused = Some("require_user");
            return Ok(response);
        }
        Some(ctx)
    } else {
        None
    };

    let mut pending = tunnel::requested(&request).map(|kind| Pending::take(kind, &mut request));
    let tunnel = pending.is_some();
    let exceeded = Arc::new(AtomicBool::new(false));
    let mut upstream_request = build_upstream_request(
        rt,
        conn,
        request,
        ctx.as_ref().map(|c| &c.session),
        pending.as_mut(),
        &exceeded,
        log.request_id.as_ref(),
    )?;
    if let (Some(change), Some(name)) = (anomaly, &rt.inject.anomaly) {
        upstream_request
            .headers_mut()
            .insert(name.clone(), change.header_value());
    }
    if let (Some(assertions), Some(ctx)) = (&rt.assertions, &ctx) {
        let token = assertions.token(
            &conn.assertions,
            &ctx.session,
            route.upstream,
            &pool.name,
            now / 1000,
        );
        if let Some(token) = token {
            upstream_request
                .headers_mut()
                .insert(assertions.header.clone(), token);
        }
    }
    let deadlines = Deadlines {
        connect: rt.config.timeouts.connect,
        response: route.timeout.unwrap_or(rt.config.timeouts.upstream),
        pool_idle: rt.config.timeouts.upstream_idle,
    };
    let mut ctx = ctx;
    let sent_at = std::time::Instant::now();
    let sent = send(pool, ctx.as_mut(), upstream_request, deadlines, tunnel, log).await;
    let upstream_elapsed = sent_at.elapsed();
    log.upstream_elapsed = Some(upstream_elapsed);
    if let Some(metrics) = &rt.metrics {
        if sent.is_ok() {
            metrics.upstream_answered(route.upstream, upstream_elapsed);
        }
        if log.repinned {
            metrics.repinned(route.upstream);
        }
    }
    let response = match sent {
        Ok(response) => response,
        Err(_) if exceeded.load(Ordering::Relaxed) => {
            return Err(ProxyError::BodyTooLarge {
                limit: rt.config.limits.max_body_bytes,
            })
        }
        Err(error) => return Err(error),
    };
    let mut response = finish_response(response, pending, state, rt, conn, log)?;
    let control =
        session::take_control(response.headers_mut(), &rt.config.control, rt.cookie.name());
    if let Some(ctx) = ctx {
        session::commit(state, rt, ctx, control, now, log).await?;
    }
    Ok(response)
}

/// HTTP/2 request heads are bounded here (hyper bounds HTTP/1 heads itself and answers
/// 431): name + value + 32 bytes per field, as HPACK counts them.
fn check_head_size<B>(request: &Request<B>, limit: usize) -> Result<(), ProxyError> {
    if request.version() != Version::HTTP_2 {
        return Ok(());
    }
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum::<usize>()
        + request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len());
    if size > limit {
        return Err(ProxyError::HeadersTooLarge { limit });
    }
    Ok(())
}

/// The normalised host: `:authority` (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(request: &Request<B>) -> Result<std::borrow::Cow<'_, str>, ProxyError> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .ok_or(ProxyError::BadRequest("missing Host"))?
            .to_str()
            .map_err(|_| ProxyError::BadRequest("Host is not ASCII"))?,
    };
    let host = normalize_host(authority);
    if host.is_empty() {
        return Err(ProxyError::BadRequest("empty Host"));
    }
    Ok(host)
}

/// A declared body over the limit is refused before anything is sent upstream. (A
/// request framed both ways never gets here with its `Content-Length`: hyper reads it
/// as chunked, drops the length and closes the connection after the response, as RFC
/// 9112 §6.1 asks; `tests/request_hygiene.rs` pins that.)
fn check_content_length<B>(request: &Request<B>, limit: u64) -> Result<(), ProxyError> {
    let Some(value) = request.headers().get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let length: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(ProxyError::BadRequest("bad Content-Length"))?;
    if length > limit {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    Ok(())
}

/// Turns the client's request into the one the upstream receives: origin-form URI,
/// HTTP/1.1, `Host` kept (taken from `:authority` for HTTP/2), hop-by-hop headers
/// removed, cookies joined without ours, `X-Forwarded-*` set, every client-sent
/// identity header removed and the session's injected, body streamed under the limit.
fn build_upstream_request(
    rt: &Runtime,
    conn: &ConnCtx,
    request: Request<Incoming>,
    session: Option<&Session>,
    tunnel: Option<&mut Pending>,
    exceeded: &Arc<AtomicBool>,
    request_id: Option<&HeaderValue>,
) -> Result<Request<RequestBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    if let Some(authority) = parts.uri.authority() {
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::BadRequest("bad authority"))?;
        parts.headers.insert(header::HOST, value);
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) if parts.uri.authority().is_some() || parts.uri.scheme().is_some() => {
            Uri::try_from(pq.as_str()).map_err(|_| ProxyError::BadRequest("bad path"))?
        }
        Some(_) => parts.uri,
        None => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, tunnel.is_some());
    if let Some(tunnel) = tunnel {
        tunnel.upstream_head(&mut parts)?;
    }
    headers::rewrite_cookies(&mut parts.headers, |pair| rt.cookie.is_ours(pair));
    inject::strip(&mut parts.headers, &rt.inject);
    if let Some(session) = session {
        inject::inject(&mut parts.headers, &rt.inject, session);
    }
    let trusted = rt.config.listen.trusted_proxies.contains(&conn.peer.ip());
    headers::set_forwarded(&mut parts.headers, &conn.peer_value, trusted);
    if let Some(id) = request_id {
        parts
            .headers
            .insert(&super::request_id::X_REQUEST_ID, id.clone());
    }
    let body = RequestBody::limited(body, rt.config.limits.max_body_bytes, exceeded.clone());
    Ok(Request::from_parts(parts, body))
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

/// Sends the request to a server of `pool` chosen by affinity, retrying on another
/// server when the connect failed (the request came back untouched, any method), or
/// when an idempotent request without a body failed after it was sent. A server whose
/// connect fails is marked down. The session's pin follows the server that answered.
async fn send(
    pool: &UpstreamPool,
    mut ctx: Option<&mut SessionCtx>,
    mut request: Request<RequestBody>,
    deadlines: Deadlines,
    tunnel: bool,
    log: &mut Outcome,
) -> Result<Response<crate::upstream::UpstreamBody>, ProxyError> {
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
        public_id: c.session.public_id,
        pinned: c.session.pinned,
    });
    let mut tried: Vec<BackendId> = Vec::new();
    loop {
        let (backend, repinned) = match affinity::choose(pool, key, &tried) {
            Choice::Server { backend, repinned } => (backend, repinned),
            Choice::PinnedDown => {
                return Err(ProxyError::PinnedDown {
                    upstream: pool.name.clone(),
                })
            }
            Choice::NoServer => {
                return Err(ProxyError::NoHealthyUpstream {
                    upstream: pool.name.clone(),
                })
            }
        };
        log.backend = Some(backend.name.clone());
        if key.is_some() {
            if repinned {
                request
                    .headers_mut()
                    .insert(inject::REPINNED.clone(), HeaderValue::from_static("1"));
            } else {
                request.headers_mut().remove(&inject::REPINNED);
            }
        }
        let result = client::send(&backend.state, request, deadlines, tunnel).await;
        let error = match result {
            Ok(response) => {
                log.repinned = repinned && key.is_some();
                if let Some(ctx) = ctx.as_deref_mut() {
                    pin(pool, ctx, backend, repinned);
                }
                return Ok(response);
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

/// Turns the upstream response into the client's: hop-by-hop headers removed, and for
/// a `101 Switching Protocols` to a tunnel request the two upgraded connections spliced
/// together (see [`tunnel`]).
fn finish_response(
    mut response: Response<crate::upstream::UpstreamBody>,
    pending: Option<Pending>,
    state: &Arc<AppState>,
    rt: &Runtime,
    conn: &Arc<ConnCtx>,
    log: &Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match pending {
        Some(pending) if switching => pending.open(&mut response, state, rt, conn, log)?,
        pending => {
            if let Some(pending) = pending {
                pending.check_refusal(response.status())?;
            }
            let headers = response.headers_mut();
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an
            // intermediary removes the latter (the body is re-framed for the client).
            if headers.contains_key(header::TRANSFER_ENCODING) {
                headers.remove(header::CONTENT_LENGTH);
            }
            headers::strip_hop_by_hop(headers, false);
        }
    }
    Ok(response.map(ResponseBody::Upstream))
}
