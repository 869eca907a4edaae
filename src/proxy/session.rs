//! The session stage of the pipeline: find or start the session, enforce CSRF and
//! `require_user`, apply the upstream's control headers, and answer
//! `POST /.cloakroom/logout`.
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
use http::{Method, Request, Response, StatusCode, Uri};

use super::body::ResponseBody;
use super::pipeline::Outcome;
use super::ProxyError;
use crate::config::{ControlConfig, RouteConfig};
use crate::inject::{encode_component, percent_decode, percent_encode_byte};
use crate::metrics::StoreOp;
use crate::session::store::{SealError, SealedCodec};
use crate::session::{
    random_bytes, ClientOrigin, CookieCache, Identity, PublicId, Session, SessionBackend,
    StoreError, Token,
};
use crate::state::{AppState, Runtime};

/// Bounds on what an upstream may store through control headers.
const MAX_USER_BYTES: usize = 256;
const MAX_ROLES_BYTES: usize = 1024;
const MAX_DATA_KEY_BYTES: usize = 64;
const MAX_DATA_VALUE_BYTES: usize = 1024;
const MAX_DATA_ENTRIES: usize = 32;

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

/// The control headers an upstream sent, taken out of its response.
#[derive(Debug, Default)]
pub(crate) struct Control {
    set_user: Option<HeaderValue>,
    set_roles: Option<HeaderValue>,
    set_data: Vec<HeaderValue>,
    logout: bool,
    /// `logout: everywhere`: also end every other session of the user.
    logout_everywhere: bool,
}

/// Removes every control header and every `Set-Cookie` for our cookie from an upstream
/// response, whatever the route; returns what they asked for.
pub(crate) fn take_control(
    headers: &mut HeaderMap,
    names: &ControlConfig,
    cookie_name: &str,
) -> Control {
    let mut control = Control::default();
    // One pass to see whether anything is there (nearly never): no hashed lookups.
    let (mut any_control, mut any_cookie) = (false, false);
    for key in headers.keys() {
        any_cookie |= key == header::SET_COOKIE;
        any_control |= *key == names.set_user
            || *key == names.set_roles
            || *key == names.set_data
            || *key == names.logout;
    }
    if any_control {
        control.set_user = headers.remove(&names.set_user);
        control.set_roles = headers.remove(&names.set_roles);
        if headers.contains_key(&names.set_data) {
            control.set_data = headers.get_all(&names.set_data).iter().cloned().collect();
            headers.remove(&names.set_data);
        }
        let logout = headers.remove(&names.logout);
        control.logout = logout.is_some();
        control.logout_everywhere =
            logout.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"everywhere"));
    }
    if any_cookie {
        let ours = |v: &HeaderValue| {
            v.as_bytes().starts_with(cookie_name.as_bytes())
                && v.as_bytes().get(cookie_name.len()) == Some(&b'=')
        };
        if headers.get_all(header::SET_COOKIE).iter().any(ours) {
            let kept: Vec<HeaderValue> = headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter(|v| !ours(v))
                .cloned()
                .collect();
            headers.remove(header::SET_COOKIE);
            for value in kept {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }
    control
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
    outcome: &mut Outcome,
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
            outcome.set_cookie = rt.cookie.expire_cookie();
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
                outcome.set_cookie = reseal_cookie(rt, &rt.sealed, &mut session, before);
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
                    outcome.set_cookie = rt.cookie.set_cookie(&token);
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
            outcome.set_cookie = rt.cookie.set_cookie(&fresh);
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

/// A control value as a string within `limit` bytes; empty means "clear".
fn bounded(value: &HeaderValue, limit: usize, what: &'static str) -> Option<Box<str>> {
    let text = value.to_str().ok().map(str::trim)?;
    if text.len() > limit {
        tracing::warn!(what, limit, "control header value too long; ignored");
        return None;
    }
    (!text.is_empty()).then(|| text.into())
}

/// Applies one `key=value` (percent-encoded parts; `key=` deletes) to `data`.
fn apply_data(data: &mut Vec<(String, String)>, value: &HeaderValue) {
    let Some((key, val)) = value.to_str().ok().and_then(|v| v.trim().split_once('=')) else {
        tracing::warn!("set_data control header without '='; ignored");
        return;
    };
    let (Some(key), Some(val)) = (percent_decode(key), percent_decode(val)) else {
        tracing::warn!("set_data control header is not valid percent-encoded UTF-8; ignored");
        return;
    };
    if key.is_empty() || key.len() > MAX_DATA_KEY_BYTES || val.len() > MAX_DATA_VALUE_BYTES {
        tracing::warn!(
            key_limit = MAX_DATA_KEY_BYTES,
            value_limit = MAX_DATA_VALUE_BYTES,
            "set_data key or value out of bounds; ignored"
        );
        return;
    }
    let existing = data.iter().position(|(k, _)| *k == key);
    match (existing, val.is_empty()) {
        (Some(i), true) => {
            data.remove(i);
        }
        (Some(i), false) => {
            if let Some(slot) = data.get_mut(i) {
                slot.1 = val;
            }
        }
        (None, true) => {}
        (None, false) if data.len() >= MAX_DATA_ENTRIES => {
            tracing::warn!(limit = MAX_DATA_ENTRIES, "session data full; entry ignored");
        }
        (None, false) => data.push((key, val)),
    }
}

/// `POST /.cloakroom/logout`: destroy the session, expire the cookie, `303` to `/` or to a
/// same-origin `next`.
pub(crate) async fn logout_endpoint<B>(
    state: &AppState,
    rt: &Runtime,
    request: &Request<B>,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    if request.method() != Method::POST {
        let mut response = Response::new(ResponseBody::full("405 use POST\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    check_csrf(request)?;
    // A sealed session has nothing on the server to destroy: expiring the cookie is all.
    if let SessionBackend::Server(store) = &state.backend {
        if let Some(token) = rt.cookie.find(request.headers()) {
            store_call(rt, StoreOp::Destroy, store.destroy(&token)).await?;
            state.metrics.session_ended("logout", 1);
        }
    }
    outcome.set_cookie = rt.cookie.expire_cookie();
    let next = next_target(request.uri()).unwrap_or_else(|| "/".to_string());
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(&next) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The `next` query parameter when it is a same-origin path (`/x`, not `//evil` or
/// `/\evil`, no control characters).
fn next_target(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("next="))?;
    let decoded = percent_decode(&raw.replace('+', " "))?;
    let safe = decoded.starts_with('/')
        && !decoded.starts_with("//")
        && !decoded.starts_with("/\\")
        && !decoded.chars().any(|c| c.is_control());
    safe.then(|| uri_reference(&decoded))
}

/// Percent-encodes what may not stand in a URI reference (space, non-ASCII, `%`,
/// quotes, …), keeping its structure (`/`, `?`, `&`, `=`, `#`).
fn uri_reference(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        percent_encode_byte(
            byte,
            |b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]".contains(&b),
            &mut out,
        );
    }
    out
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

    #[test]
    fn next_must_be_same_origin() {
        let t = |q: &str| next_target(&format!("/.cloakroom/logout?{q}").parse().unwrap());
        assert_eq!(t("next=/home").as_deref(), Some("/home"));
        assert_eq!(t("next=%2Fa%3Fb%3D1").as_deref(), Some("/a?b=1"));
        assert_eq!(t("next=//evil.test"), None);
        assert_eq!(t("next=/%5Cevil.test"), None);
        assert_eq!(t("next=https://evil.test"), None);
        assert_eq!(t("x=1"), None);
        assert_eq!(t("next=/a%20b").as_deref(), Some("/a%20b"));
        assert_eq!(t("next=/%C3%BC?q=1").as_deref(), Some("/%C3%BC?q=1"));
        assert_eq!(t("next=/100%25").as_deref(), Some("/100%25"));
    }

    #[test]
    fn data_updates() {
        let mut data = Vec::new();
        apply_data(&mut data, &HeaderValue::from_static("cart=3"));
        apply_data(&mut data, &HeaderValue::from_static("theme=dark%20blue"));
        apply_data(&mut data, &HeaderValue::from_static("cart=4"));
        assert_eq!(
            data,
            vec![
                ("cart".into(), "4".into()),
                ("theme".into(), "dark blue".into())
            ]
        );
        apply_data(&mut data, &HeaderValue::from_static("cart="));
        apply_data(&mut data, &HeaderValue::from_static("junk"));
        assert_eq!(data, vec![("theme".into(), "dark blue".into())]);
        let long = format!("k={}", "v".repeat(MAX_DATA_VALUE_BYTES + 1));
        apply_data(&mut data, &HeaderValue::from_str(&long).unwrap());
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn control_headers_are_taken_and_our_set_cookie_dropped() {
        let names = ControlConfig {
            set_user: "x-session-set-user".parse().unwrap(),
            set_roles: "x-session-set-roles".parse().unwrap(),
            set_data: "x-session-set-data".parse().unwrap(),
            logout: "x-session-logout".parse().unwrap(),
        };
        let mut h = HeaderMap::new();
        h.insert("x-session-set-user", HeaderValue::from_static("ann"));
        h.append("x-session-set-data", HeaderValue::from_static("a=1"));
        h.append("x-session-set-data", HeaderValue::from_static("b=2"));
        h.insert("x-session-logout", HeaderValue::from_static(""));
        h.append(
            "set-cookie",
            HeaderValue::from_static("__Host-cr=evil; Path=/"),
        );
        h.append("set-cookie", HeaderValue::from_static("app=1"));
        let c = take_control(&mut h, &names, "__Host-cr");
        assert!(c.logout && c.set_user.is_some() && c.set_data.len() == 2);
        assert_eq!(h.len(), 1);
        assert_eq!(h["set-cookie"], "app=1");
    }
}
