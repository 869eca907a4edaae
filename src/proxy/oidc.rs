//! The proxy's side of the built-in OIDC login ([`crate::oidc`] does the protocol):
//! which requests on a `login = "oidc"` route start a login (a browser navigation gets
//! 302 to the provider; anything else 401 with `WWW-Authenticate`, never a redirect),
//! the `allow_*` check on every request (403, never a redirect), the callback that
//! starts a fresh session with the user and roles exactly as an app login does (through
//! [`session::commit`] with the same control values), back-channel logout, and the
//! logout's redirect to the provider.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;

use super::body::ResponseBody;
use super::control::Control;
use super::ctx::Ctx;
use super::error::ProxyError;
use super::session::{self, SessionCtx};
use crate::config::RouteConfig;
use crate::oidc::backchannel::{id_token_key, remember};
use crate::oidc::{Oidc, OidcError};
use crate::session::{PublicId, SessionBackend};
use crate::state::{AppState, Runtime};

/// Largest back-channel request body.
const MAX_BACKCHANNEL_BODY: usize = 64 * 1024;

/// With `store = "cookie"`: the codec pending logins are sealed with.
fn sealer<'r>(state: &AppState, rt: &'r Runtime) -> Option<&'r crate::session::store::SealedCodec> {
    matches!(state.backend, SessionBackend::Sealed).then_some(&rt.sealed)
}

/// A short page with `status`.
fn page(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The request's authority as the browser wrote it (`host[:port]`), for URLs that
/// bring the browser back here; `None` when it holds anything but host characters.
pub(crate) fn authority<B>(request: &Request<B>) -> Option<String> {
    let text = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| text.to_ascii_lowercase())
}

/// What a failed login step answers (the cause is logged, never shown).
fn failure(error: OidcError) -> Result<Response<ResponseBody>, ProxyError> {
    let response = match &error {
        OidcError::Provider(_) => {
            tracing::warn!(%error, "OIDC login: provider unavailable");
            let mut r = page(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 the identity provider is unavailable; try again in a moment\n",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        OidcError::BadState | OidcError::Token(_) => {
            tracing::warn!(%error, "OIDC login refused");
            page(
                StatusCode::BAD_REQUEST,
                "400 this login link is not valid (expired, used, or from another browser); \
                 go back to the page and try again\n",
            )
        }
        OidcError::Denied(_) => {
            tracing::info!(%error, "OIDC login denied");
            page(
                StatusCode::FORBIDDEN,
                "403 the identity provider refused the login\n",
            )
        }
        OidcError::Store(_) | OidcError::Random => {
            return Err(match error {
                OidcError::Store(e) => ProxyError::Store(e),
                _ => ProxyError::Internal("random generator"),
            })
        }
    };
    Ok(response)
}

/// Whether the request is a browser navigation (may be redirected to log in):
/// `Sec-Fetch-Mode: navigate`, or without fetch metadata a GET/HEAD whose `Accept`
/// names `text/html` before any JSON.
fn is_navigation<B>(request: &Request<B>) -> bool {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let headers = request.headers();
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes() == b"navigate";
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match (accept.find("text/html"), accept.find("json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        _ => false,
    }
}

/// On session routes: 403 for a user the route's `allow_*` lists do not name; on
/// `login = "oidc"` routes a request without a user starts a login (302) or gets 401.
pub(crate) async fn gate<B>(
    cx: Ctx<'_>,
    route: &RouteConfig,
    ctx: &SessionCtx,
    request: &Request<B>,
    now: u64,
) -> Result<Option<(Response<ResponseBody>, &'static str)>, ProxyError> {
    if let Some(user) = ctx.session.user() {
        if !route.allow.permits(user, ctx.session.roles()) {
            return Ok(Some((
                page(
                    StatusCode::FORBIDDEN,
                    "403 this account may not use this page\n",
                ),
                "not_allowed",
            )));
        }
        return Ok(None);
    }
    if !route.login_oidc {
        return Ok(None);
    }
    let Some(oidc) = &cx.rt.oidc else {
        return Ok(Some((failure(OidcError::Provider("off".into()))?, "login")));
    };
    if !is_navigation(request) {
        let mut response = page(StatusCode::UNAUTHORIZED, "401 login required\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("OpenIDConnect realm=\"cloakroom\""),
        );
        return Ok(Some((response, "login_required")));
    }
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let Some(host) = authority(request) else {
        return Err(ProxyError::BadRequest("bad Host"));
    };
    let started = match oidc
        .start(
            &*cx.state.kv,
            &host,
            path,
            request.headers(),
            now / 1000,
            sealer(cx.state, cx.rt),
        )
        .await
    {
        Ok(started) => started,
        Err(error) => return Ok(Some((failure(error)?, "login"))),
    };
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&started.location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in started.cookies {
        headers.append(header::SET_COOKIE, cookie);
    }
    Ok(Some((response, "login")))
}

/// `GET /.cloakroom/oidc/callback`: finishes the login and starts a fresh session.
pub(crate) async fn callback<B>(
    cx: Ctx<'_>,
    oidc: &Oidc,
    request: &Request<B>,
    set_cookie: &mut Option<HeaderValue>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (state, rt) = (cx.state, cx.rt);
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(page(StatusCode::METHOD_NOT_ALLOWED, "405 use GET\n"));
    }
    let now = state.clock.now_ms();
    let login = match oidc
        .callback(
            &*state.kv,
            request.uri(),
            request.headers(),
            now / 1000,
            sealer(state, rt),
        )
        .await
    {
        Ok(login) => login,
        Err(error) => {
            let mut response = failure(error)?;
            // A failed login's cookie is of no further use.
            if let Some(clear) = clear_for(request) {
                response.headers_mut().append(header::SET_COOKIE, clear);
            }
            return Ok(response);
        }
    };
    let ctx = session::find(state, rt, request.headers(), &cx.conn.cookies, now).await?;
    let public_id = ctx.session.public_id;
    let control = Control::login(&login.user, login.roles.as_deref());
    session::commit(state, rt, ctx, control, now, set_cookie).await?;
    let ttl = rt.config.session.absolute_timeout;
    if let Err(error) = remember(
        &*state.kv,
        &public_id,
        &login.sub,
        login.sid.as_deref(),
        &login.id_token,
        ttl,
    )
    .await
    {
        // The session works; only back-channel logout and the logout hint miss it.
        tracing::warn!(%error, "OIDC login: the sid index was not updated");
    }
    tracing::info!(user = %login.user, public_id = %public_id.encode(), "OIDC login");
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&login.return_to) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(clear) = login.clear_cookie {
        headers.append(header::SET_COOKIE, clear);
    }
    Ok(response)
}

/// Expires the per-login cookie of the callback's `state`, if it names one.
fn clear_for<B>(request: &Request<B>) -> Option<HeaderValue> {
    let query = request.uri().query()?;
    let state = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())?;
    let short: String = state
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(12)
        .collect();
    HeaderValue::from_str(&format!(
        "{}{short}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        crate::oidc::flow::COOKIE_PREFIX
    ))
    .ok()
}

/// `POST /.cloakroom/oidc/backchannel`: 200 when the logout token verified (its
/// sessions ended), 400 otherwise.
pub(crate) async fn backchannel(
    state: &AppState,
    oidc: &Oidc,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if request.method() != Method::POST {
        return Ok(page(StatusCode::METHOD_NOT_ALLOWED, "405 use POST\n"));
    }
    let body = match Limited::new(request.into_body(), MAX_BACKCHANNEL_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(page(StatusCode::BAD_REQUEST, "400 bad request body\n")),
    };
    let now = state.clock.now_ms() / 1000;
    let index = state.index.as_deref();
    match oidc.backchannel(&*state.kv, index, &body, now).await {
        Ok(ended) => {
            tracing::info!(sessions = ended.sessions, "OIDC back-channel logout");
            state.metrics.session_ended("logout", ended.sessions as u64);
            Ok(page(StatusCode::OK, ""))
        }
        Err(OidcError::Provider(reason)) => {
            tracing::warn!(reason, "OIDC back-channel logout: provider unavailable");
            Ok(page(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 provider keys unavailable\n",
            ))
        }
        Err(OidcError::Store(error)) => Err(ProxyError::Store(error)),
        Err(error) => {
            tracing::warn!(%error, "OIDC back-channel logout refused");
            Ok(page(StatusCode::BAD_REQUEST, "400 invalid logout token\n"))
        }
    }
}

/// For `POST /.cloakroom/logout` with `logout_at_idp`: the provider's end-session URL
/// for the session being ended (`None` when it did not log in through OIDC, or the
/// provider has no `end_session_endpoint`). Call before the session is destroyed.
pub(crate) async fn logout_target<B>(
    state: &AppState,
    rt: &Runtime,
    request: &Request<B>,
) -> Option<String> {
    let host = authority(request)?;
    let oidc = rt.oidc.as_ref().filter(|o| o.config.logout_at_idp)?;
    let public_id: PublicId = match &state.backend {
        SessionBackend::Sealed => {
            rt.cookie
                .values(request.headers())
                .find_map(|v| rt.sealed.open(v))?
                .public_id
        }
        SessionBackend::Server(store) => {
            let token = rt.cookie.find(request.headers())?;
            let now = state.clock.now_ms();
            let load = store.load(&token, now, rt.expiry);
            tokio::time::timeout(rt.config.session.store_timeout(), load)
                .await
                .ok()?
                .ok()??
                .public_id
        }
    };
    let key = id_token_key(&public_id.encode());
    let hint = state.kv.take(&key).await.ok()??;
    let hint = String::from_utf8(hint).ok()?;
    let provider = oidc.provider().await.ok()?;
    let endpoint = provider.meta.end_session_endpoint.as_ref()?;
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("id_token_hint", &hint)
        .append_pair("post_logout_redirect_uri", &format!("https://{host}/"))
        .append_pair("client_id", &oidc.config.client_id)
        .finish();
    let joiner = if endpoint.contains('?') { '&' } else { '?' };
    Some(format!("{endpoint}{joiner}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn navigation_or_api() {
        assert!(is_navigation(&req(&[("sec-fetch-mode", "navigate")])));
        assert!(!is_navigation(&req(&[
            ("sec-fetch-mode", "cors"),
            ("accept", "text/html")
        ])));
        assert!(is_navigation(&req(&[(
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )])));
        assert!(!is_navigation(&req(&[("accept", "application/json")])));
        assert!(!is_navigation(&req(&[(
            "accept",
            "application/json, text/html"
        )])));
        assert!(!is_navigation(&req(&[])));
    }
}
