//! The phases of one proxied request, in the order they run; pingora's `ProxyHttp` is
//! the model. [`super::serve`], the outer handler that cannot fail, calls [`run`] (the
//! phases that can fail, written with `?`), then finishes whatever came out, an error
//! response included, with [`response_filter`] and the `logging` phase:
//!
//! 1. [`request_filter`] (here): `limits.max_header_bytes` for HTTP/2 heads,
//!    `limits.per_ip`, Host against the TLS server name, our own endpoints
//!    ([`endpoints`](super::endpoints)), the route, `limits.max_body_bytes` against
//!    `Content-Length`; on session routes CSRF and the session
//!    ([`session`](super::session)), `limits.per_session` or
//!    `limits.new_sessions_per_ip`, hijack signals ([`hijack`](super::hijack)) and
//!    `require_user`. Each limit is checked here and nowhere else, before anything
//!    goes upstream (a streamed body over the limit is cut while it is sent).
//! 2. [`upstream_request_filter`] (here): the upstream's request head: origin-form URI,
//!    hop-by-hop headers, a tunnel's head ([`tunnel`](super::tunnel)), cookies without
//!    ours, identity headers stripped and injected, `X-Forwarded-*`, the request id,
//!    the anomaly flag and the identity assertion.
//! 3. `upstream_peer` ([`send`](super::send)): the server by affinity, per attempt,
//!    and the exchange with its retries; the session's pin follows the answer.
//! 4. [`upstream_response_filter`] (here): hop-by-hop headers, a `101` spliced into a
//!    tunnel, the control headers taken out ([`control`](super::control)) and the
//!    session settled ([`session::commit`]).
//! 5. [`response_filter`] (here): the one place a response is finished, ours and
//!    errors alike: HSTS, the session's `Set-Cookie` ([`Extras`]), `X-Request-Id`.
//! 6. `logging` ([`access`](super::access)): request metrics and the access line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::access::AccessRecord;
use super::body::ResponseBody;
use super::control::take_control;
use super::ctx::Ctx;
use super::endpoints::{self, JWKS_PATH, LOGOUT_PATH};
use super::error::ProxyError;
use super::session::{self, SessionCtx};
use super::tunnel::{self, Pending};
use super::{headers, hijack, send};
use crate::anomaly::Anomaly;
use crate::config::{AnomalyMode, RouteConfig};
use crate::conn::{ConnCtx, X_REQUEST_ID};
use crate::inject;
use crate::router::{normalize_host, RouteId};
use crate::session::Session;
use crate::state::Runtime;
use crate::upstream::body::RequestBody;
use crate::upstream::client::Deadlines;
use crate::upstream::{UpstreamBody, UpstreamPool};

/// The response extras: what the phases leave to be put on the client's response by
/// [`response_filter`], whatever that response is (an error included, so a new session
/// is never orphaned). The access-log fields are another type, [`AccessRecord`].
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// The session's `Set-Cookie` (new, regenerated, resealed or expired).
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// What `request_filter` decided.
enum Filtered<'rt> {
    /// The proxy answers itself (an own endpoint, `require_user`).
    Answer(Response<ResponseBody>),
    /// The request goes upstream.
    Forward(Admitted<'rt>),
}

/// A request that passed `request_filter`, with what the later phases need.
struct Admitted<'rt> {
    route: &'rt RouteConfig,
    pool: &'rt UpstreamPool,
    session: Option<SessionCtx>,
    /// What to tell the upstream about a session used by another client.
    anomaly: Option<Anomaly>,
    /// The request's clock reading (ms), one for every session decision.
    now: u64,
}

/// Runs the phases that can fail, from `request_filter` to `upstream_response_filter`.
pub(crate) async fn run(
    cx: Ctx<'_>,
    mut request: Request<Incoming>,
    access: &mut AccessRecord,
    extras: &mut Extras,
) -> Result<Response<ResponseBody>, ProxyError> {
    if let (crate::oidc::BACKCHANNEL_PATH, Some(oidc)) = (request.uri().path(), &cx.rt.oidc) {
        return super::oidc::backchannel(cx.state, oidc, request).await;
    }
    let admitted = match request_filter(cx, &request, access, extras).await? {
        Filtered::Answer(response) => return Ok(response),
        Filtered::Forward(admitted) => admitted,
    };
    let rt = cx.rt;
    let mut pending = tunnel::requested(&request).map(|kind| Pending::take(kind, &mut request));
    let exceeded = Arc::new(AtomicBool::new(false));
    let upstream_request = upstream_request_filter(
        cx,
        request,
        &admitted,
        pending.as_mut(),
        &exceeded,
        access.request_id.as_ref(),
    )?;
    let Admitted {
        route,
        pool,
        mut session,
        now,
        ..
    } = admitted;
    let deadlines = Deadlines {
        connect: rt.config.timeouts.connect,
        response: route.timeout.unwrap_or(rt.config.timeouts.upstream),
        pool_idle: rt.config.timeouts.upstream_idle,
    };
    let tunnel = pending.is_some();
    let sent_at = std::time::Instant::now();
    let sent = send::send(
        pool,
        session.as_mut(),
        upstream_request,
        deadlines,
        tunnel,
        access,
    )
    .await;
    let upstream_elapsed = sent_at.elapsed();
    access.upstream_elapsed = Some(upstream_elapsed);
    if let (Some(metrics), Ok((_, repinned))) = (&rt.metrics, &sent) {
        metrics.upstream_answered(route.upstream, upstream_elapsed);
        if *repinned {
            metrics.repinned(route.upstream);
        }
    }
    let response = match sent {
        Ok((response, _)) => response,
        Err(_) if exceeded.load(Ordering::Relaxed) => {
            return Err(ProxyError::BodyTooLarge {
                limit: rt.config.limits.max_body_bytes,
            })
        }
        Err(error) => return Err(error),
    };
    upstream_response_filter(cx, response, pending, session, now, access, extras).await
}

/// `request_filter`: every check before anything goes upstream (limits, Host, route,
/// session, CSRF, hijack signals, `require_user`), and our own endpoints.
async fn request_filter<'rt>(
    cx: Ctx<'rt>,
    request: &Request<Incoming>,
    access: &mut AccessRecord,
    extras: &mut Extras,
) -> Result<Filtered<'rt>, ProxyError> {
    let (state, rt, conn) = (cx.state, cx.rt, cx.conn);
    check_head_size(request, rt.config.limits.max_header_bytes)?;
    let rates = rt.config.security.rates;
    let anomaly_on = rt.config.security.anomaly != AnomalyMode::Off;
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
    let host = request_host(request)?;
    let host = &*host;
    if let Some(sni) = conn.sni.as_deref() {
        if !rt.config.tls.sni.is_empty() && !state.certs.covers(sni, host) {
            return Err(ProxyError::Misdirected);
        }
    }
    if request.uri().path() == LOGOUT_PATH {
        let response = endpoints::logout(state, rt, request, &mut extras.set_cookie).await?;
        return Ok(Filtered::Answer(response));
    }
    if let (crate::oidc::CALLBACK_PATH, Some(oidc)) = (request.uri().path(), &rt.oidc) {
        let response = super::oidc::callback(cx, oidc, request, &mut extras.set_cookie).await?;
        return Ok(Filtered::Answer(response));
    }
    if let (JWKS_PATH, Some(assertions)) = (request.uri().path(), &rt.assertions) {
        return Ok(Filtered::Answer(endpoints::jwks(
            assertions,
            request.method(),
        )));
    }
    let RouteId(route_id) = rt
        .router
        .route(host, request.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    access.route = Some(route_id);
    let route = rt
        .config
        .routes
        .get(route_id)
        .ok_or(ProxyError::Internal("route index out of range"))?;
    let pool = rt
        .upstreams
        .get(route.upstream)
        .ok_or(ProxyError::Internal("upstream index out of range"))?;
    check_content_length(request, rt.config.limits.max_body_bytes)?;

    let now = state.clock.now_ms();
    let mut anomaly = None;
    let session = if route.session {
        // Before the session starts, so refused requests do not grow the store.
        if route.csrf {
            session::check_csrf(request)?;
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
            anomaly = hijack::check(state, rt, &mut ctx, request.headers(), ip, conn, now).await?;
        }
        access.session = Some(ctx.session.public_id);
        access.identity.clone_from(&ctx.session.identity);
        if let Some(response) = session::require_user(route, &ctx, request) {
            access.refused = Some("require_user");
            return Ok(Filtered::Answer(response));
        }
        if route.login_oidc || route.allow.any() {
            if let Some((response, why)) = super::oidc::gate(cx, route, &ctx, request, now).await? {
                access.refused = Some(why);
                return Ok(Filtered::Answer(response));
            }
        }
        Some(ctx)
    } else {
        None
    };
    Ok(Filtered::Forward(Admitted {
        route,
        pool,
        session,
        anomaly,
        now,
    }))
}

/// `upstream_request_filter`: the request the upstream receives (see
/// [`build_upstream_request`]), with the anomaly flag and the identity assertion.
fn upstream_request_filter(
    cx: Ctx<'_>,
    request: Request<Incoming>,
    admitted: &Admitted<'_>,
    tunnel: Option<&mut Pending>,
    exceeded: &Arc<AtomicBool>,
    request_id: Option<&HeaderValue>,
) -> Result<Request<RequestBody>, ProxyError> {
    let rt = cx.rt;
    let session = admitted.session.as_ref();
    let mut upstream_request = build_upstream_request(
        rt,
        cx.conn,
        request,
        session.map(|c| &c.session),
        tunnel,
        exceeded,
        request_id,
    )?;
    if let (Some(change), Some(name)) = (admitted.anomaly, &rt.inject.anomaly) {
        upstream_request
            .headers_mut()
            .insert(name.clone(), change.header_value());
    }
    if let (Some(assertions), Some(ctx)) = (&rt.assertions, session) {
        let token = assertions.token(
            &cx.conn.assertions,
            &ctx.session,
            admitted.route.upstream,
            &admitted.pool.name,
            admitted.now / 1000,
        );
        if let Some(token) = token {
            upstream_request
                .headers_mut()
                .insert(assertions.header.clone(), token);
        }
    }
    Ok(upstream_request)
}

/// `upstream_response_filter`: the upstream's response made the client's (see
/// [`finish_response`]), its control headers taken out and the session settled.
async fn upstream_response_filter(
    cx: Ctx<'_>,
    response: Response<UpstreamBody>,
    pending: Option<Pending>,
    session: Option<SessionCtx>,
    now: u64,
    access: &AccessRecord,
    extras: &mut Extras,
) -> Result<Response<ResponseBody>, ProxyError> {
    let rt = cx.rt;
    let mut response = finish_response(response, pending, cx, access)?;
    let control = take_control(response.headers_mut(), &rt.config.control, rt.cookie.name());
    if let Some(ctx) = session {
        session::commit(cx.state, rt, ctx, control, now, &mut extras.set_cookie).await?;
    }
    Ok(response)
}

/// `response_filter`: finishes every response the client gets, ours and errors
/// included: HSTS (replacing an upstream's), the session's `Set-Cookie`, `X-Request-Id`.
pub(crate) fn response_filter(
    rt: &Runtime,
    response: &mut Response<ResponseBody>,
    extras: Extras,
    request_id: HeaderValue,
) {
    let headers = response.headers_mut();
    if let Some(hsts) = &rt.config.security.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Some(cookie) = extras.set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    headers.insert(&X_REQUEST_ID, request_id);
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
        parts.headers.insert(&X_REQUEST_ID, id.clone());
    }
    let body = RequestBody::limited(body, rt.config.limits.max_body_bytes, exceeded.clone());
    Ok(Request::from_parts(parts, body))
}

/// Turns the upstream response into the client's: hop-by-hop headers removed, and for
/// a `101 Switching Protocols` to a tunnel request the two upgraded connections spliced
/// together (see [`tunnel`]).
fn finish_response(
    mut response: Response<UpstreamBody>,
    pending: Option<Pending>,
    cx: Ctx<'_>,
    access: &AccessRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match pending {
        Some(pending) if switching => {
            pending.open(&mut response, cx.state, cx.rt, cx.conn, access)?
        }
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
