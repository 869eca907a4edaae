//! A scripted upstream ([`App`]) and the client helpers the session tests share.
//!
//! [`App`] is the shared [`MockUpstream`] in [`Mode::Scripted`]: a plain HTTP/1.1
//! upstream driven by request headers: `x-reply: Name: value`
//! (repeatable) makes it answer with that response header, `x-reply-status: N` with
//! that status, and its body lists every request header it received (`name: value`
//! lines), so a client can see what the upstream saw even when requests run
//! concurrently. [`Reply`] reads that listing and the proxy's `Set-Cookie`.

use reqwest::{Method, StatusCode};

use super::config::{ProxyConfig, Route};
use super::stores::Store;
use super::{MockUpstream, Mode, Recorded, TestProxy};

/// The default cookie name.
pub const COOKIE: &str = "__Host-cloakroom";

// ---------------------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------------------

/// A [`MockUpstream`] in [`Mode::Scripted`] (see the module docs); derefs to it.
pub struct App(MockUpstream);

impl std::ops::Deref for App {
    type Target = MockUpstream;

    fn deref(&self) -> &MockUpstream {
        &self.0
    }
}

impl App {
    pub async fn start() -> App {
        App(MockUpstream::start_with("app", Mode::Scripted).await)
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.request_count()
    }

    /// The most recent request; panics when there is none.
    pub fn last(&self) -> Recorded {
        self.last_request()
    }
}

// ---------------------------------------------------------------------------------------
// Config and client helpers
// ---------------------------------------------------------------------------------------

/// One upstream `app` at `server`, `[session]` with `session` keys, one `/` route with
/// `route` keys, then `extra` (more sections or routes).
pub fn config(server: &str, session: &str, route: &str, extra: &str) -> String {
    ProxyConfig::new()
        .table("session", session)
        .upstream("app", [server])
        .route(Route::new("/", "app").keys(route))
        .raw(extra)
        .build()
}

pub async fn start(config: String) -> TestProxy {
    TestProxy::builder().config(config).start().await
}

/// A proxy with default sessions in front of a fresh [`App`].
pub async fn default_proxy() -> (App, TestProxy) {
    let app = App::start().await;
    let proxy = start(config(&app.server(), "", "", "")).await;
    (app, proxy)
}

/// A proxy with default sessions on `store` in front of a fresh [`App`].
pub async fn default_proxy_on(store: &Store) -> (App, TestProxy) {
    let app = App::start().await;
    let proxy = store.start(config(&app.server(), "", "", "")).await;
    (app, proxy)
}

/// What the client got back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// Every value of request header `name` the upstream received (from the listing).
    pub fn seen(&self, name: &str) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// The single value of request header `name` the upstream received.
    pub fn seen_one(&self, name: &str) -> Option<String> {
        let all = self.seen(name);
        assert!(
            all.len() <= 1,
            "upstream saw {name} {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// The public id the upstream received; panics without one.
    pub fn id(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        self.seen_one("x-session-id")
            .expect("the upstream received no X-Session-Id")
    }

    pub fn user(&self) -> Option<String> {
        self.seen_one("x-session-user")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The `Set-Cookie` for our cookie, if any (at most one).
    pub fn our_set_cookie(&self) -> Option<String> {
        let ours: Vec<String> = self
            .set_cookies()
            .into_iter()
            .filter(|c| c.starts_with(&format!("{COOKIE}=")))
            .collect();
        assert!(ours.len() <= 1, "several Set-Cookie for {COOKIE}: {ours:?}");
        ours.into_iter().next()
    }

    /// The new value of our cookie; panics when the response sets none (or expires it).
    pub fn cookie(&self) -> String {
        let set = self
            .our_set_cookie()
            .unwrap_or_else(|| panic!("no Set-Cookie for {COOKIE}: {:?}", self.headers));
        let (name, value, _) = parse_set_cookie(&set);
        assert_eq!(name, COOKIE);
        assert!(!value.is_empty(), "cookie was expired, not set: {set}");
        value
    }
}

/// `name=value; Attr; Attr=x` → (name, value, [(lower-case attr, value)]).
pub fn parse_set_cookie(text: &str) -> (String, String, Vec<(String, Option<String>)>) {
    let mut parts = text.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    let attributes = parts
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect();
    (name.to_string(), value.to_string(), attributes)
}

pub fn attribute(attributes: &[(String, Option<String>)], name: &str) -> Option<Option<String>> {
    attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Sends one request; `cookie` is the value of our cookie (sent as the only cookie).
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = client.request(method, url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

pub async fn get(proxy: &TestProxy, path: &str, cookie: Option<&str>) -> Reply {
    send(&proxy.client(), Method::GET, &proxy.url(path), cookie, &[]).await
}

/// A new anonymous session: (cookie value, public id).
pub async fn new_session(proxy: &TestProxy) -> (String, String) {
    let reply = get(proxy, "/", None).await;
    (reply.cookie(), reply.id())
}

/// Logs the session of `cookie` in as `user` (with `roles`); returns the new cookie.
pub async fn login(proxy: &TestProxy, cookie: Option<&str>, user: &str, roles: &str) -> Reply {
    let user_reply = format!("X-Session-Set-User: {user}");
    let roles_reply = format!("X-Session-Set-Roles: {roles}");
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/login"),
        cookie,
        &[("x-reply", &user_reply), ("x-reply", &roles_reply)],
    )
    .await
}
