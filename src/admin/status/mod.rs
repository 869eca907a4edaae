//! The status page for people on the admin listener (`GET /`), its JSON
//! (`GET /status.json`), its stylesheet and script, the token form and the actions
//! (end one session, end every session of a user), which go through the session
//! admin API's own functions ([`super::sessions`]).
//!
//! - [`sampler`] reads the existing counters once a second (off the request path) into
//!   a [`ring::Ring`] of the last ten minutes and the [`Snapshot`] shown;
//! - [`page`] renders it as HTML that works without JavaScript; `status.js` refreshes
//!   it from `/status.json` every 2 s;
//! - [`access`] decides who may see it and which requests may change state (token
//!   cookie, CSRF token, `Origin`).
//!
//! Every answer carries a Content-Security-Policy that allows this origin only, and
//! `Cache-Control: no-store`.

mod access;
mod page;
mod ring;
mod sampler;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::proxy::ResponseBody;
use crate::state::AppState;
use page::{PageInput, Search};
pub(crate) use sampler::Snapshot;

/// The largest form body read (the token form, an action).
const MAX_FORM: usize = 8 * 1024;
/// The page's stylesheet and script, served from this listener (nothing from elsewhere).
const CSS: &str = include_str!("status.css");
const JS: &str = include_str!("status.js");
/// Allows this origin only; no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page's state: the latest snapshot and the CSRF key.
#[derive(Debug)]
pub(crate) struct Status {
    latest: Mutex<Arc<Snapshot>>,
    csrf: access::CsrfKey,
}

impl Status {
    pub(crate) fn new() -> Status {
        Status {
            latest: Mutex::new(Arc::new(Snapshot::default())),
            csrf: access::CsrfKey::random(),
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        *crate::lock(&self.latest) = Arc::new(snapshot);
    }

    fn latest(&self) -> Arc<Snapshot> {
        crate::lock(&self.latest).clone()
    }
}

/// Samples once a second until `stop` is raised (see [`sampler`]).
pub(crate) async fn sample(
    state: Arc<AppState>,
    status: Arc<Status>,
    stop: Arc<crate::shutdown::Signal>,
) {
    sampler::run(state, status, stop).await;
}

/// Whether `path` is one of the page's.
pub(crate) fn owns(path: &str) -> bool {
    matches!(path, "/" | "/status.json" | "/status.css" | "/status.js")
        || path.starts_with("/status/")
}

/// Answers a request for one of the page's paths ([`owns`]).
pub(crate) async fn answer(
    state: &AppState,
    status: &Status,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/status.css") => {
            return asset(CSS, "text/css; charset=utf-8")
        }
        (&Method::GET | &Method::HEAD, "/status.js") => {
            return asset(JS, "text/javascript; charset=utf-8")
        }
        _ => {}
    }
    let runtime = state.runtime();
    let token = runtime.config.listen.admin_token.as_ref();
    if !access::host_allowed(token, request.headers()) {
        return html(
            StatusCode::FORBIDDEN,
            "<!doctype html><title>forbidden</title><p>Open this page as http://127.0.0.1:PORT/ \
(or http://localhost:PORT/), or set <code>listen.admin_token</code>.</p>"
                .into(),
        );
    }
    let now_ms = crate::clock::unix_ms();
    let admitted = access::admitted(token, request.headers(), now_ms);
    let cookie = access::cookie_of(request.headers())
        .unwrap_or("")
        .to_string();
    match (&method, path.as_str(), admitted) {
        (&Method::POST, "/status/login", _) => login(state, request).await,
        (&Method::GET | &Method::HEAD, "/", false) => {
            html(StatusCode::UNAUTHORIZED, page::login(None))
        }
        (_, _, false) => super::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({ "error": "admin token required: open / to enter it" }),
        ),
        (&Method::GET | &Method::HEAD, "/", true) => {
            let query = request.uri().query().unwrap_or("").to_string();
            front(state, status, &query, &cookie, token.is_some()).await
        }
        (&Method::GET | &Method::HEAD, "/status.json", true) => {
            let snapshot = status.latest();
            let mut response = super::json(
                StatusCode::OK,
                &serde_json::to_value(&*snapshot).unwrap_or_default(),
            );
            secure(&mut response);
            response
        }
        (&Method::POST, "/status/end" | "/status/logout", true) => {
            let Some(form) = checked_form(status, &cookie, request).await else {
                return super::text(
                    StatusCode::FORBIDDEN,
                    "403 refused: this request did not come from the status page \
(CSRF token or Origin)\n",
                );
            };
            if path == "/status/logout" {
                let mut response = see_other("/");
                set_cookie(&mut response, "", 0);
                response
            } else {
                end(state, &form).await
            }
        }
        (_, "/" | "/status.json" | "/status/end" | "/status/logout" | "/status/login", _) => {
            super::text(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n")
        }
        _ => super::text(StatusCode::NOT_FOUND, "404 not found\n"),
    }
}

/// The page, with the user search when `?user=` is given.
async fn front(
    state: &AppState,
    status: &Status,
    query: &str,
    cookie: &str,
    token: bool,
) -> Response<ResponseBody> {
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .filter(|v| !v.is_empty())
    };
    let search = match param("user") {
        None => Search::None,
        Some(user) => match super::sessions::listed(state, &user).await {
            Ok(sessions) => Search::Found { user, sessions },
            Err(why) => Search::Failed { user, why },
        },
    };
    let snapshot = status.latest();
    let csrf = status.csrf.token(cookie);
    let body = page::page(&PageInput {
        snapshot: &snapshot,
        search,
        notice: param("notice"),
        csrf: &csrf,
        token,
    });
    html(StatusCode::OK, body)
}

/// `POST /status/login`: the token form.
async fn login(state: &AppState, request: Request<Incoming>) -> Response<ResponseBody> {
    if !access::same_origin(request.headers()) {
        return super::text(StatusCode::FORBIDDEN, "403 refused: another origin\n");
    }
    let Some(token) = state.runtime().config.listen.admin_token.clone() else {
        return see_other("/");
    };
    let form = read_form(request).await.unwrap_or_default();
    let presented = field(&form, "token").unwrap_or_default();
    if !access::token_matches(&token, presented.as_bytes()) {
        tracing::info!("admin status page: a wrong token was entered");
        return html(StatusCode::UNAUTHORIZED, page::login(Some("Wrong token.")));
    }
    let expires = crate::clock::unix_ms() + access::COOKIE_LIFE_S * 1000;
    let mut response = see_other("/");
    set_cookie(
        &mut response,
        &access::issue_cookie(&token, expires),
        access::COOKIE_LIFE_S,
    );
    response
}

/// `POST /status/end`: `id` ends one session, `all` every session of `user`; 303 back
/// to the page, whose notice says what was ended.
async fn end(state: &AppState, form: &[(String, String)]) -> Response<ResponseBody> {
    let user = field(form, "user").unwrap_or_default();
    let outcome = match (field(form, "id"), field(form, "all")) {
        (Some(id), _) => super::sessions::ended_one(state, &id)
            .await
            .map(|ended| format!("Ended {} session of {user}.", usize::from(ended))),
        (None, Some(_)) if !user.is_empty() => {
            super::sessions::ended_user(state, &user).await.map(|n| {
                format!(
                    "Ended {n} session{} of {user}.",
                    if n == 1 { "" } else { "s" }
                )
            })
        }
        _ => Err("Name a session or a user.".to_string()),
    };
    let notice = outcome.unwrap_or_else(|why| format!("Nothing ended: {why}"));
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("user", &user)
        .append_pair("notice", &notice)
        .finish();
    see_other(&format!("/?{query}"))
}

/// The form of an unsafe request that passed the CSRF and `Origin` checks.
async fn checked_form(
    status: &Status,
    cookie: &str,
    request: Request<Incoming>,
) -> Option<Vec<(String, String)>> {
    if !access::same_origin(request.headers()) {
        return None;
    }
    let form = read_form(request).await?;
    let csrf = field(&form, "csrf")?;
    status.csrf.verify(cookie, &csrf).then_some(form)
}

async fn read_form(request: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(
        form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

fn field(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// Headers every page answer carries. `Referrer-Policy: same-origin`, not
/// `no-referrer`: with the latter a browser sends `Origin: null` on the page's own
/// form posts, which the `Origin` check must refuse.
fn secure(response: &mut Response<ResponseBody>) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn html(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(&mut response);
    response
}

fn asset(body: &'static str, kind: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from_static(
        body.as_bytes(),
    ))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    secure(&mut response);
    response
}

fn see_other(location: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::new())));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    secure(&mut response);
    response
}

/// Sets (or, with `max_age` 0, clears) the page's cookie: host-only, `Path=/`.
fn set_cookie(response: &mut Response<ResponseBody>, value: &str, max_age: u64) {
    let cookie = format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict",
        access::COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests;
