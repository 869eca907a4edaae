//! The session's part of the phases: in `request_filter` find or start the session and
//! enforce CSRF and `require_user`; in `upstream_response_filter` settle it with what the
//! upstream's control headers ([`control`](super::control)) asked, in at most one store
//! write ([`commit`]). The `Set-Cookie` it produces is handed back, and put on the
//! response by `response_filter`.
//!
//! Two backends sit behind it, one fixed at start ([`SessionBackend`], never read from
//! the reloaded config): server-side stores (`SessionStore`: memory, Redis,
//! PostgreSQL), where the cookie carries a MAC'd token, and the sealed cookie, where the
//! cookie carries the whole session sealed ([`SealedCodec`]); [`Handle`] says which.
//!
//! Fail closed on identity: a cookie that does not verify, or names no live session,
//! starts a fresh anonymous session; it never yields an identity and never an error.
//! Every store call runs under the store's timeout (`session.redis.timeout`, …); a
//! store failure is a 503.

use std::future::Future;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::body::ResponseBody;
use super::control::{apply_data, bounded, Control, MAX_ROLES_BYTES, MAX_USER_BYTES};
use super::error::ProxyError;
use crate::config::RouteConfig;
use crate::inject::encode_component;
use crate::metrics::StoreOp;
use crate::session::store::{SealError, SealedCodec};
use crate::session::{
    random_bytes, ClientOrigin, CookieCache, Identity, PublicId, Session, SessionBackend,
    StoreError, Token,
};
use crate::state::{AppState, Runtime};

/// Where the request's session is kept.
#[derive(Debug)]
pub(crate) enum Handle {
    /// Started by this request: stored (or sealed) in [`commit`], once its server is
    /// known, in one write.
    New,
    /// Kept by the server-side store under this token.
    Stored(Token),
    /// Carried whole in the cookie (`store = "cookie"`); `reseal` when its use is due
    /// to be recorded (at most once per `touch_interval`).
    Sealed { reseal: bool },
}

/// The session of the request being served.
#[derive(Debug)]
pub(crate) struct SessionCtx {
    pub(crate) handle: Handle,
    pub(crate) session: Session,
    /// The session was pinned to another server by this request.
    pub(crate) pin_changed: bool,
    /// This request's client fingerprints (when `session.anomaly` is on): bound to the
    /// session when it starts and at login.
    pub(crate) origin: Option<ClientOrigin>,
    /// The session's recorded origin was set by this request (a session from before
    /// hijack signals): save it.
    pub(crate) origin_changed: bool,
}

/// Runs a store call under the store's deadline (timed as `op` when metrics are on).
pub(super) async fn store_call<T>(
    rt: &Runtime,
    op: StoreOp,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, ProxyError> {
    let started = rt.metrics.is_some().then(std::time::Instant::now);
    let result = match tokio::time::timeout(rt.config.session.store_timeout(), call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(ProxyError::Store(error)),
        Err(_) => Err(ProxyError::Store(StoreError::Timeout)),
    };
    if let (Some(metrics), Some(started)) = (&rt.metrics, started) {
        metrics
            .all()
            .store
            .record(op, started.elapsed(), result.is_ok());
    }
    result
}

/// Finds the request's session, or starts a new one (stored later by [`commit`]).
pub(crate) async fn find(
    state: &AppState,
    rt: &Runtime,
    headers: &HeaderMap,
    cache: &CookieCache,
    now: u64,
) -> Result<SessionCtx, ProxyError> {
    match &state.backend {
        SessionBackend::Sealed => {
            let opened = rt.cookie.values(headers).find_map(|v| rt.sealed.open(v));
            if let Some(mut session) = opened {
                if rt.expiry.allows(session.created, session.last_seen, now) {
                    let reseal = rt.expiry.touch_due(session.last_seen, now);
                    if reseal {
                        session.last_seen = now;
                    }
                    return Ok(SessionCtx {
                        handle: Handle::Sealed { reseal },
                        session,
                        pin_changed: false,
                        origin: None,
                        origin_changed: false,
                    });
                }
            }
        }
        SessionBackend::Server(store) => {
            if let Some(token) = rt.cookie.find_cached(headers, cache) {
                if let Some(session) =
                    store_call(rt, StoreOp::Load, store.load(&token, now, rt.expiry)).await?
                {
                    return Ok(SessionCtx {
                        handle: Handle::Stored(token),
                        session,
                        pin_changed: false,
                        origin: None,
                        origin_changed: false,
                    });
                }
            }
            // A new session is stored only at commit, after the upstream answered: while
            // the store is known to be down, check it now and answer 503 before forwarding.
            if store.known_down() {
                store_call(rt, StoreOp::Load, store.ping()).await?;
            }
        }
    }
    let public_id = PublicId(random_bytes()?);
    Ok(SessionCtx {
        handle: Handle::New,
        session: Session::new(public_id, now),
        pin_changed: false,
        origin: None,
        origin_changed: false,
    })
}

/// Methods that change state (RFC 9110 §9.2.1 "unsafe").
fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Refuses a cross-site unsafe request: `Sec-Fetch-Site: cross-site`, or without that
/// header an `Origin` other than this origin.
pub(crate) fn check_csrf<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if !is_unsafe(request.method()) {
        return Ok(());
    }
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"cross-site" => Err(ProxyError::CrossSite),
            _ => Ok(()),
        };
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    let same = match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin
            .strip_prefix("https://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host) || same_default_port(o, host)),
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(ProxyError::CrossSite)
    }
}

/// `https://example.com` and `Host: example.com:443` are the same origin.
fn same_default_port(origin_host: &str, host: &str) -> bool {
    let strip = |h: &str| h.strip_suffix(":443").unwrap_or(h).to_ascii_lowercase();
    strip(origin_host) == strip(host)
}

/// For `require_user` routes: the answer to a request without a user, if any.
pub(crate) fn require_user<B>(
    route: &RouteConfig,
    ctx: &SessionCtx,
    request: &Request<B>,
) -> Option<Response<ResponseBody>> {
    if !route.require_user || ctx.session.user().is_some() {
        return None;
    }
    let redirect = matches!(*request.method(), Method::GET | Method::HEAD);
    match (&route.login_url, redirect) {
        (Some(login), true) => {
            let next = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let mut location = login.clone();
            location.push(if login.contains('?') { '&' } else { '?' });
            location.push_str("next=");
            encode_component(next, &mut location);
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::FOUND;
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Some(response)
        }
        _ => {
            let mut response = Response::new(ResponseBody::full("401 login required\n"));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Some(response)
        }
    }
}

/// Settles the session after the upstream answered, in at most one store write:
/// logout destroys it; a new session is stored (with its pin and anything the upstream
/// set); a new user or roles regenerate the token (the old cookie no longer carries the
/// identity) and restart the absolute lifetime; data or pin changes are saved in place.
pub(crate) async fn commit(
    state: &AppState,
    rt: &Runtime,
    ctx: SessionCtx,
    control: Control,
    now: u64,
    set_cookie: &mut Option<HeaderValue>,
) -> Result<(), ProxyError> {
    let SessionCtx {
        handle,
        mut session,
        pin_changed,
        origin,
        origin_changed,
    } = ctx;
    if control.logout {
        if let (SessionBackend::Server(store), Handle::Stored(token)) = (&state.backend, &handle) {
            store_call(rt, StoreOp::Destroy, store.destroy(token)).await?;
        }
        if !matches!(handle, Handle::New) {
            *set_cookie = rt.cookie.expire_cookie();
            state.metrics.session_ended("logout", 1);
        }
        if let (true, Some(user)) = (control.logout_everywhere, session.user()) {
            // "Log out of all devices": every other session of this user ends too.
            match &state.index {
                Some(index) => {
                    let ended = store_call(rt, StoreOp::Admin, index.destroy_user(user)).await?;
                    state.metrics.session_ended("logout", ended as u64);
                    tracing::info!(user, ended, "logout everywhere");
                }
                // The sealed cookie keeps no list of a user's sessions.
                None => tracing::warn!(
                    user,
                    why = SessionBackend::NOT_KEPT,
                    "logout everywhere is not possible with this store"
                ),
            }
        }
        return Ok(());
    }
    // Kept only for the sealed cookie, which may have to refuse a change that outgrows it.
    let before = match state.backend {
        SessionBackend::Sealed => session.data.clone(),
        SessionBackend::Server(_) => None,
    };
    let identity_changed = control.set_user.is_some() || control.set_roles.is_some();
    if identity_changed {
        let old = session.identity.as_deref().cloned().unwrap_or_default();
        let user = match &control.set_user {
            Some(value) => bounded(value, MAX_USER_BYTES, "user"),
            None => old.user,
        };
        let roles = match &control.set_roles {
            Some(value) => bounded(value, MAX_ROLES_BYTES, "roles"),
            None => old.roles,
        };
        session.identity =
            (user.is_some() || roles.is_some()).then(|| Arc::new(Identity { user, roles }));
        // A login restarts the absolute lifetime and re-binds the hijack signals.
        session.created = now;
        session.origin = origin.or(session.origin);
    }
    let data_changed = !control.set_data.is_empty();
    if data_changed {
        let mut data = session.data.as_deref().cloned().unwrap_or_default();
        for value in &control.set_data {
            apply_data(&mut data, value);
        }
        session.data = (!data.is_empty()).then(|| Arc::new(data));
    }
    let store = match &state.backend {
        SessionBackend::Server(store) => store,
        SessionBackend::Sealed => {
            let reseal = matches!(handle, Handle::New | Handle::Sealed { reseal: true });
            if reseal || identity_changed || data_changed || pin_changed || origin_changed {
                *set_cookie = reseal_cookie(rt, &rt.sealed, &mut session, before);
            }
            if matches!(handle, Handle::New) {
                state.metrics.sessions_created.inc();
            } else if identity_changed {
                state.metrics.sessions_regenerated.inc();
            }
            return Ok(());
        }
    };
    match handle {
        Handle::New => {
            match store_call(rt, StoreOp::Create, store.create(&session, rt.expiry)).await {
                Ok(token) => {
                    *set_cookie = rt.cookie.set_cookie(&token);
                    state.metrics.sessions_created.inc();
                }
                // Full of sessions that may not be evicted: this request was served, its
                // session is not kept.
                Err(ProxyError::Store(StoreError::Full)) => {
                    tracing::warn!(
                        "session store full of logged-in sessions; new session not kept"
                    );
                }
                Err(error) => return Err(error),
            }
        }
        Handle::Stored(token) if identity_changed => {
            let fresh = store_call(
                rt,
                StoreOp::Regenerate,
                store.regenerate(&token, &session, rt.expiry),
            )
            .await?;
            *set_cookie = rt.cookie.set_cookie(&fresh);
            state.metrics.sessions_regenerated.inc();
        }
        Handle::Stored(token) if data_changed || pin_changed || origin_changed => {
            store_call(rt, StoreOp::Save, store.save(&token, &session, rt.expiry)).await?;
        }
        Handle::Stored(_) | Handle::Sealed { .. } => {}
    }
    Ok(())
}

/// The `Set-Cookie` carrying `session` sealed. A session that would outgrow the cookie
/// keeps the data it had before this response (the upstream's `set_data` is refused,
/// with the reason logged), so the browser never gets a cookie it would drop.
fn reseal_cookie(
    rt: &Runtime,
    sealed: &SealedCodec,
    session: &mut Session,
    data_before: Option<Arc<Vec<(String, String)>>>,
) -> Option<HeaderValue> {
    let value = match sealed.seal(session) {
        Err(SealError::TooLarge(len)) => {
            tracing::warn!(
                bytes = len,
                public_id = %session.public_id.encode(),
                "set_data refused: the sealed session would not fit in a cookie"
            );
            session.data = data_before;
            sealed.seal(session)
        }
        other => other,
    };
    match value {
        Ok(value) => rt.cookie.set_cookie_value(&value),
        Err(error) => {
            tracing::error!(%error, "could not seal the session; the cookie is not updated");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn csrf_rules() {
        let host = ("host", "app.test:8443");
        let allowed = true;
        type Case<'a> = (Method, &'a [(&'a str, &'a str)], bool);
        let table: &[Case<'_>] = &[
            (
                Method::GET,
                &[host, ("sec-fetch-site", "cross-site")],
                allowed,
            ),
            (
                Method::POST,
                &[host, ("sec-fetch-site", "cross-site")],
                !allowed,
            ),
            (
                Method::POST,
                &[host, ("sec-fetch-site", "same-site")],
                allowed,
            ),
            (
                Method::DELETE,
                &[host, ("origin", "https://evil.test")],
                !allowed,
            ),
            (
                Method::PUT,
                &[host, ("origin", "https://app.test:8443")],
                allowed,
            ),
            (Method::POST, &[host, ("origin", "null")], !allowed),
            (
                Method::POST,
                &[host, ("origin", "http://app.test:8443")],
                !allowed,
            ),
            (
                Method::POST,
                &[("host", "a.test"), ("origin", "https://a.test:443")],
                allowed,
            ),
            // No Origin, no Sec-Fetch-Site: allowed.
            (Method::POST, &[host], allowed),
        ];
        for (method, headers, expected) in table {
            let ok = check_csrf(&req(method.clone(), headers)).is_ok();
            assert_eq!(ok, *expected, "{method} {headers:?}");
        }
    }
}
