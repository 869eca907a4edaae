//! Hijack signals (`session.anomaly`): a session used with another browser family or
//! from another network is flagged to the upstream (`X-Session-Anomaly`) or ended; the
//! same browser after a patch update is not; a login re-binds the session to the
//! client that logged in; `off` checks nothing.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{MockUpstream, TestProxy};

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36";
const CHROME_PATCHED: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.130 Safari/537.36";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

fn config(app: &MockUpstream, login: &MockUpstream, anomaly: &str) -> String {
    format!(
        r#"
[session]
anomaly = "{anomaly}"

[upstreams.app]
servers = ["{}"]

[upstreams.login]
servers = ["{}"]

[[routes]]
path = "/"
upstream = "app"

[[routes]]
path = "/login"
upstream = "login"
"#,
        app.server(),
        login.server()
    )
}

async fn start(anomaly: &str, listen: &str) -> (MockUpstream, MockUpstream, TestProxy) {
    let app = MockUpstream::start("app").await;
    let login = MockUpstream::start("login").await;
    login.add_response_header("X-Session-Set-User", "alice");
    let proxy = TestProxy::builder()
        .config(config(&app, &login, anomaly))
        .listen(listen)
        .start()
        .await;
    (app, login, proxy)
}

/// One request; returns the new session cookie, if one was set.
async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut request = proxy.client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| !c.ends_with('='))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_tells_the_upstream_about_another_browser_but_not_about_a_patch_update() {
    let (app, _login, proxy) = start("flag", "").await;
    let cookie = get(&proxy, "/", &[("user-agent", CHROME)]).await.unwrap();
    let id = app.last_request().one("x-session-id").unwrap();
    assert_eq!(app.last_request().one("x-session-anomaly"), None);

    get(
        &proxy,
        "/",
        &[("user-agent", CHROME_PATCHED), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(
        app.last_request().one("x-session-anomaly"),
        None,
        "patch update flagged"
    );

    get(&proxy, "/", &[("user-agent", FIREFOX), ("cookie", &cookie)]).await;
    let seen = app.last_request();
    assert_eq!(seen.one("x-session-anomaly").as_deref(), Some("user-agent"));
    assert_eq!(seen.one("x-session-id"), Some(id), "flag keeps the session");

    // A client cannot flag (or unflag) itself.
    get(
        &proxy,
        "/",
        &[
            ("user-agent", CHROME),
            ("cookie", &cookie),
            ("x-session-anomaly", "network"),
        ],
    )
    .await;
    assert_eq!(app.last_request().one("x-session-anomaly"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_logs_the_stolen_session_out_and_continues_anonymously() {
    let (app, _login, proxy) = start("end", "").await;
    let first = get(&proxy, "/", &[("user-agent", CHROME)]).await.unwrap();
    let cookie = get(
        &proxy,
        "/login",
        &[("user-agent", CHROME), ("cookie", &first)],
    )
    .await
    .expect("login regenerates the cookie");
    get(&proxy, "/", &[("user-agent", CHROME), ("cookie", &cookie)]).await;
    let owner = app.last_request();
    assert_eq!(owner.one("x-session-user").as_deref(), Some("alice"));

    let fresh = get(&proxy, "/", &[("user-agent", FIREFOX), ("cookie", &cookie)]).await;
    let thief = app.last_request();
    assert_eq!(
        thief.one("x-session-user"),
        None,
        "the thief got the identity"
    );
    assert_ne!(thief.one("x-session-id"), owner.one("x-session-id"));
    assert!(fresh.is_some(), "a fresh anonymous session is started");

    // The session is gone for its owner too (as after a logout).
    get(&proxy, "/", &[("user-agent", CHROME), ("cookie", &cookie)]).await;
    assert_eq!(app.last_request().one("x-session-user"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_network_is_flagged_the_same_slash_24_is_not() {
    let (app, _login, proxy) = start("flag", "trusted_proxies = [\"127.0.0.1\"]").await;
    let from = |ip: &'static str| [("user-agent", CHROME), ("x-forwarded-for", ip)];
    let cookie = get(&proxy, "/", &from("198.51.100.7")).await.unwrap();
    let with = |ip: &'static str, cookie: &str| {
        vec![
            ("user-agent", CHROME),
            ("x-forwarded-for", ip),
            ("cookie", cookie),
        ]
        .into_iter()
        .map(|(n, v)| (n, v.to_string()))
        .collect::<Vec<_>>()
    };
    let send = |headers: Vec<(&'static str, String)>| {
        let proxy = &proxy;
        async move {
            let borrowed: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(proxy, "/", &borrowed).await;
        }
    };
    send(with("198.51.100.99", &cookie)).await;
    assert_eq!(app.last_request().one("x-session-anomaly"), None);
    send(with("203.0.113.5", &cookie)).await;
    assert_eq!(
        app.last_request().one("x-session-anomaly").as_deref(),
        Some("network")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_rebinds_the_session_to_the_client_that_logged_in() {
    let (app, _login, proxy) = start("flag", "").await;
    let first = get(&proxy, "/", &[("user-agent", CHROME)]).await.unwrap();
    let cookie = get(
        &proxy,
        "/login",
        &[("user-agent", FIREFOX), ("cookie", &first)],
    )
    .await
    .unwrap();
    get(&proxy, "/", &[("user-agent", FIREFOX), ("cookie", &cookie)]).await;
    let seen = app.last_request();
    assert_eq!(seen.one("x-session-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-session-anomaly"), None);
    get(&proxy, "/", &[("user-agent", CHROME), ("cookie", &cookie)]).await;
    assert_eq!(
        app.last_request().one("x-session-anomaly").as_deref(),
        Some("user-agent")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_checks_nothing() {
    let (app, _login, proxy) = start("off", "").await;
    let cookie = get(&proxy, "/", &[("user-agent", CHROME)]).await.unwrap();
    get(&proxy, "/", &[("user-agent", FIREFOX), ("cookie", &cookie)]).await;
    assert_eq!(app.last_request().one("x-session-anomaly"), None);
}
