//! A small upstream app that drives sessions by path, for tests of the session
//! protocol seen from outside (metrics, admin API, logs): the shared [`MockUpstream`]
//! in [`Mode::Sessions`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use reqwest::StatusCode;

use super::{MockUpstream, Mode, TestProxy};

const COOKIE: &str = "__Host-cloakroom";

/// Drives sessions by path: `/login?user=NAME`, `/logout`, `/logout-everywhere`,
/// `/healthz` (200 or 503 by its switch); anything else answers with the
/// `X-Session-User` it received (or `anon`). Derefs to its [`MockUpstream`].
pub struct App {
    upstream: MockUpstream,
    /// What `/healthz` answers: 200 while true, 503 while false.
    pub healthy: Arc<AtomicBool>,
}

impl std::ops::Deref for App {
    type Target = MockUpstream;

    fn deref(&self) -> &MockUpstream {
        &self.upstream
    }
}

impl App {
    pub async fn start() -> App {
        let upstream = MockUpstream::start_with("app", Mode::Sessions).await;
        let healthy = upstream.health_switch();
        App { upstream, healthy }
    }
}

/// What one request to a proxy in front of [`App`] returned (the session cookie is
/// the default `__Host-cloakroom`).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Our cookie's new value, if the response set one.
    pub cookie: Option<String>,
    /// The app's answer: the user it was told about, or `anon`.
    pub body: String,
}

/// GET `path` over a new client connection (so that requests spread over the workers).
pub async fn get(proxy: &TestProxy, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = proxy.client_h1().get(proxy.url(path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{COOKIE}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty());
    let body = response.text().await.unwrap();
    Reply {
        status,
        cookie,
        body,
    }
}

/// Starts a session and logs it in as `user`; returns the login's cookie.
pub async fn login(proxy: &TestProxy, user: &str) -> String {
    let first = get(proxy, "/", None).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let anon = first.cookie.expect("a new session sets a cookie");
    let login = get(proxy, &format!("/login?user={user}"), Some(&anon)).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    login.cookie.expect("a login sets a fresh cookie")
}
