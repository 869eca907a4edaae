//! Affinity, balancing, health checks and failover: sticky sessions stay on their server
//! and move (keeping their user) only when it dies; `on_pinned_down = "fail"` refuses
//! instead; active checks take a failing server out of rotation for new sessions and put
//! it back; `drain` keeps pinned sessions but takes no new ones; `hash` moves only the
//! sessions of a server that goes; `none`, `round_robin` (with weights), `least_conn`;
//! 503 with `Retry-After` when no server is left; a refused connect is retried elsewhere
//! (a POST with its body included); an upgrade of a session goes to its pinned server.
//!
//! The servers here are [`Upstream`]s, written for this file: they can be killed (the
//! listener and every open connection closed, so the proxy's pooled connections die as
//! with a crashed process), and their `/healthz` can be switched to 500.
//! [`common::MockUpstream`] only stops accepting when dropped; its open connections keep
//! answering.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{
    poll_until, refused_addr, test_bytes, MockUpstream, ProxyConfig, Route, TestProxy, SOON,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The session cookie's name (the default of `session.cookie`).
const COOKIE: &str = "__Host-cloakroom";

// ---------------------------------------------------------------------------------------
// A killable upstream
// ---------------------------------------------------------------------------------------

/// One request as an [`Upstream`] received it (health checks are not recorded).
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        let all: Vec<_> = self.headers.get_all(name).iter().collect();
        assert!(all.len() <= 1, "{name} appears {} times", all.len());
        all.first()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

struct UpstreamState {
    name: String,
    seen: Mutex<Vec<Seen>>,
    /// What `/healthz` answers: 200 while true, 500 while false.
    healthz_ok: AtomicBool,
    checks_passed: AtomicUsize,
    checks_failed: AtomicUsize,
    delay: Mutex<Duration>,
    /// When not zero, the response body ends this long after its head and first bytes.
    slow_body: Mutex<Duration>,
    /// Open connections' tasks; aborted by [`Upstream::kill`].
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// A plain HTTP/1.1 server on `127.0.0.1` that answers `200` with its name (and
/// `x-upstream: NAME`), records requests, answers `/healthz` by a switch, and sends
/// `X-Session-Set-User: ann` on `/login`. [`Upstream::kill`] closes the listener and
/// every open connection.
struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for conn in self.state.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Upstream {
    async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Upstream::start_on(listener, name)
    }

    /// An upstream on an already bound listener.
    fn start_on(listener: TcpListener, name: &str) -> Upstream {
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            seen: Mutex::new(Vec::new()),
            healthz_ok: AtomicBool::new(true),
            checks_passed: AtomicUsize::new(0),
            checks_failed: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
            slow_body: Mutex::new(Duration::ZERO),
            connections: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(upstream_accept(listener, state.clone()));
        Upstream {
            addr,
            state,
            accept: Mutex::new(Some(accept)),
        }
    }

    fn name(&self) -> &str {
        &self.state.name
    }

    /// `"127.0.0.1:PORT"` for `servers = [...]`.
    fn server(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received no request")
    }

    fn set_healthz_ok(&self, ok: bool) {
        self.state.healthz_ok.store(ok, Ordering::SeqCst);
    }

    fn checks_passed(&self) -> usize {
        self.state.checks_passed.load(Ordering::SeqCst)
    }

    fn checks_failed(&self) -> usize {
        self.state.checks_failed.load(Ordering::SeqCst)
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn set_slow_body(&self, slow_body: Duration) {
        *self.state.slow_body.lock().unwrap() = slow_body;
    }

    /// Dies like a crashed process: the listener and every open connection (idle
    /// keep-alive ones in the proxy's pool included) are closed. Returns once a connect
    /// to the address is refused.
    async fn kill(&self) {
        let accept = self.accept.lock().unwrap().take();
        if let Some(accept) = accept {
            accept.abort();
            // Awaiting an aborted task returns once its future (the listener) is dropped.
            let _ = accept.await;
        }
        let connections: Vec<JoinHandle<()>> =
            self.state.connections.lock().unwrap().drain(..).collect();
        for conn in connections {
            conn.abort();
            let _ = conn.await;
        }
        let addr = self.addr;
        poll_until(
            SOON,
            "the killed upstream refuses connections",
            || async move { TcpStream::connect(addr).await.is_err() },
        )
        .await;
    }
}

async fn upstream_accept(listener: TcpListener, state: Arc<UpstreamState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let conn_state = state.clone();
        let task = tokio::spawn(async move {
            let service = service_fn(move |request| upstream_handle(request, conn_state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut connections = state.connections.lock().unwrap();
        connections.retain(|c| !c.is_finished());
        connections.push(task);
    }
}

async fn upstream_handle(
    request: Request<Incoming>,
    state: Arc<UpstreamState>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/healthz" {
        let ok = state.healthz_ok.load(Ordering::SeqCst);
        let counter = if ok {
            &state.checks_passed
        } else {
            &state.checks_failed
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from_static(b"health")).boxed());
        if !ok {
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        return Ok(response);
    }
    state.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        headers: parts.headers.clone(),
        body,
    });
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let slow_body = *state.slow_body.lock().unwrap();
    let name = Bytes::from(state.name.clone());
    let body = if slow_body.is_zero() {
        Full::new(name).boxed()
    } else {
        // The head and the name at once, then the rest of the body after `slow_body`.
        let frames = futures_util::stream::unfold(0u8, move |step| {
            let name = name.clone();
            async move {
                match step {
                    0 => Some((Ok(Frame::data(name)), 1)),
                    1 => {
                        tokio::time::sleep(slow_body).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        BodyExt::boxed(StreamBody::new(frames))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert("x-upstream", HeaderValue::from_str(&state.name).unwrap());
    if parts.uri.path() == "/login" {
        headers.insert("x-session-set-user", HeaderValue::from_static("ann"));
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Config and a browser that keeps the session cookie by hand
// ---------------------------------------------------------------------------------------

/// `[upstreams.app]` with `servers` (TOML array items), more `keys` (e.g. `affinity =
/// "hash"`), an optional `health` table body, and one session route on `/`.
fn config(servers: &[String], keys: &str, health: &str) -> String {
    let mut config = ProxyConfig::new()
        .upstream_items("app", servers)
        .upstream_keys("app", keys);
    if !health.is_empty() {
        config = config.table("upstreams.app.health", health);
    }
    config.route(Route::new("/", "app")).build()
}

/// `"127.0.0.1:PORT"` quoted, for [`config`].
/// A proxy over `servers` with the upstream `keys` and `health` (see [`config`]).
async fn start_proxy(servers: &[String], keys: &str, health: &str) -> TestProxy {
    TestProxy::builder()
        .config(config(servers, keys, health))
        .start()
        .await
}

fn quoted(server: impl std::fmt::Display) -> String {
    format!("\"{server}\"")
}

/// One browser: its own session cookie, sent back by hand.
struct Browser {
    client: reqwest::Client,
    cookie: Option<String>,
}

/// What a browser got.
struct Got {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new(proxy: &TestProxy) -> Browser {
        Browser {
            client: proxy.client(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Got {
        let request = match &self.cookie {
            Some(cookie) => request.header("cookie", cookie.as_str()),
            None => request,
        };
        let response = request.send().await.expect("request through the proxy");
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            let pair = value.split(';').next().unwrap().trim();
            if let Some(token) = pair.strip_prefix(&format!("{COOKIE}=")) {
                self.cookie = if value.contains("Max-Age=0") || token.is_empty() {
                    None
                } else {
                    Some(pair.to_string())
                };
            }
        }
        Got {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.expect("response body"),
        }
    }

    async fn get(&mut self, proxy: &TestProxy, path: &str) -> Got {
        let request = self.client.get(proxy.url(path));
        self.send(request).await
    }

    /// A GET that must succeed; returns the name of the server that answered.
    async fn visit(&mut self, proxy: &TestProxy, path: &str) -> String {
        let got = self.get(proxy, path).await;
        assert_eq!(got.status, StatusCode::OK, "GET {path}: {}", got.body);
        assert!(self.cookie.is_some(), "no session cookie after GET {path}");
        got.body
    }
}

/// Starts `n` new sessions (one request each); returns each browser with the server that
/// answered its first request.
async fn new_sessions(proxy: &TestProxy, n: usize) -> Vec<(Browser, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut browser = Browser::new(proxy);
        let server = browser.visit(proxy, "/").await;
        out.push((browser, server));
    }
    out
}

/// How many of `servers` are `name`.
fn tally(servers: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for server in servers {
        *counts.entry(server).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------
// sticky
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_session_sends_all_30_requests_to_one_server() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let mut browser = Browser::new(&proxy);
    let first = browser.visit(&proxy, "/").await;
    let cookie = browser
        .cookie
        .clone()
        .expect("the first response sets the cookie");
    // Other sessions in between advance the round robin; ours must not follow it.
    let mut others = Vec::new();
    for i in 0..30 {
        assert_eq!(browser.visit(&proxy, &format!("/page/{i}")).await, first);
        let mut other = Browser::new(&proxy);
        other.visit(&proxy, "/").await;
        others.push(other);
    }
    assert_eq!(
        browser.cookie.as_ref(),
        Some(&cookie),
        "the cookie is stable"
    );
    let pinned = if first == "a" { &a } else { &b };
    let ours: Vec<Seen> = pinned
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/page/"))
        .collect();
    assert_eq!(ours.len(), 30);
    let ids: HashSet<Option<String>> = ours.iter().map(|s| s.header("x-session-id")).collect();
    assert_eq!(ids.len(), 1, "one session: {ids:?}");
    assert!(ours
        .iter()
        .all(|s| s.header("x-session-repinned").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_new_sessions_spread_over_two_servers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let sessions = new_sessions(&proxy, 40).await;
    let counts = tally(sessions.into_iter().map(|(_, s)| s));
    assert!(counts.get("a").copied().unwrap_or(0) >= 10, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 10, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_new_sessions_in_proportion() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[
            format!("{{ addr = \"{}\", weight = 3 }}", a.server()),
            quoted(b.server()),
        ],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let sessions = new_sessions(&proxy, 40).await;
    let counts = tally(sessions.into_iter().map(|(_, s)| s));
    // Smooth weighted round robin: exactly 3 of every 4.
    assert_eq!(counts.get("a").copied(), Some(30), "{counts:?}");
    assert_eq!(counts.get("b").copied(), Some(10), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pinned_server_moves_the_session_without_a_failed_request_and_keeps_its_user() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let mut browser = Browser::new(&proxy);
    let pinned_name = browser.visit(&proxy, "/login").await;
    let (pinned, survivor) = if pinned_name == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    for i in 0..5 {
        assert_eq!(
            browser.visit(&proxy, &format!("/before/{i}")).await,
            pinned.name()
        );
    }
    let before = pinned.last();
    assert_eq!(before.header("x-session-user").as_deref(), Some("ann"));
    let public_id = before.header("x-session-id").expect("X-Session-Id");
    let cookie = browser.cookie.clone();

    pinned.kill().await;

    // Every request succeeds; the first one after the kill is the re-pin.
    for i in 0..10 {
        assert_eq!(
            browser.visit(&proxy, &format!("/after/{i}")).await,
            survivor.name()
        );
    }
    assert_eq!(browser.cookie, cookie, "moving does not change the cookie");
    let after: Vec<Seen> = survivor
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/after/"))
        .collect();
    assert_eq!(after.len(), 10);
    assert_eq!(after[0].path, "/after/0");
    assert_eq!(
        after[0].header("x-session-repinned").as_deref(),
        Some("1"),
        "the first request on the new server says the session moved"
    );
    for seen in &after {
        assert_eq!(seen.header("x-session-user").as_deref(), Some("ann"));
        assert_eq!(seen.header("x-session-id").as_deref(), Some(&*public_id));
    }
    for seen in &after[1..] {
        assert_eq!(
            seen.header("x-session-repinned"),
            None,
            "{}: only the first request after the move is marked",
            seen.path
        );
    }
    // New sessions avoid the dead server too.
    for (_, server) in new_sessions(&proxy, 6).await {
        assert_eq!(server, survivor.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_of_a_moved_session_all_land_on_one_server() {
    let servers = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let proxy = start_proxy(
        &servers
            .iter()
            .map(|s| quoted(s.server()))
            .collect::<Vec<_>>(),
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let mut browser = Browser::new(&proxy);
    let home = browser.visit(&proxy, "/").await;
    let cookie = browser.cookie.clone().unwrap();
    let pinned = servers.iter().find(|s| s.name() == home).unwrap();
    pinned.kill().await;
    // Twelve requests of the session at once, each finding its server dead.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let client = proxy.client();
            let url = proxy.url(&format!("/burst/{i}"));
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let response = client
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                response.text().await.unwrap()
            })
        })
        .collect();
    let mut served = Vec::new();
    for task in tasks {
        served.push(task.await.unwrap());
    }
    let counts = tally(served);
    assert_eq!(counts.len(), 1, "one session, one server: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_probed_and_gets_new_sessions_again_when_it_is_back() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    a.kill().await;
    // The first requests find out (a refused connect marks the server down at once).
    for (_, server) in new_sessions(&proxy, 6).await {
        assert_eq!(server, "b");
    }
    // The same address answers again: a reconnect probe brings it back.
    let listener = bind_again(a.addr).await;
    let back = Upstream::start_on(listener, "a-again");
    poll_until(SOON, "a new session lands on the restarted server", || {
        let proxy = &proxy;
        async move {
            let mut browser = Browser::new(proxy);
            browser.visit(proxy, "/").await == "a-again"
        }
    })
    .await;
    drop(back);
}

/// Binds `addr` again after its server was killed (retrying while the port is busy).
async fn bind_again(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot bind {addr} again: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pinned_down_fail_answers_503_when_the_pinned_server_is_killed() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"\non_pinned_down = \"fail\"",
        "",
    )
    .await;

    let mut browser = Browser::new(&proxy);
    let pinned_name = browser.visit(&proxy, "/").await;
    let (pinned, survivor) = if pinned_name == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(browser.visit(&proxy, "/again").await, pinned.name());
    pinned.kill().await;
    let survivor_before = survivor.count();

    for i in 0..3 {
        let got = browser.get(&proxy, &format!("/after/{i}")).await;
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{}", got.body);
        assert!(got.headers.contains_key("retry-after"));
    }
    assert_eq!(
        survivor.count(),
        survivor_before,
        "the session was not moved to the other server"
    );
    // Other sessions are unaffected.
    for (_, server) in new_sessions(&proxy, 4).await {
        assert_eq!(server, survivor.name());
    }
}

// ---------------------------------------------------------------------------------------
// active health checks
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_failing_healthz_gets_no_new_sessions_within_three_intervals_and_again_after_recovery(
) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "path = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"100ms\"",
    )
    .await;

    poll_until(SOON, "both servers are checked", || async {
        a.checks_passed() >= 2 && b.checks_passed() >= 2
    })
    .await;
    let counts = tally(new_sessions(&proxy, 10).await.into_iter().map(|(_, s)| s));
    assert_eq!(counts.len(), 2, "both servers take sessions: {counts:?}");

    // `fall` = 2 failed checks take it down; after a third check round it is surely out.
    a.set_healthz_ok(false);
    poll_until(SOON, "a fails three health checks", || async {
        a.checks_failed() >= 3
    })
    .await;
    for (_, server) in new_sessions(&proxy, 10).await {
        assert_eq!(server, "b", "a failing server got a new session");
    }

    // `rise` = 2 passing checks bring it back.
    a.set_healthz_ok(true);
    let passed = a.checks_passed();
    poll_until(SOON, "a passes three health checks", || async {
        a.checks_passed() >= passed + 3
    })
    .await;
    let counts = tally(new_sessions(&proxy, 10).await.into_iter().map(|(_, s)| s));
    assert!(
        counts.get("a").copied().unwrap_or(0) >= 3,
        "the recovered server takes new sessions again: {counts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// drain
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_server_by_reload_keeps_its_sessions_and_sends_new_ones_elsewhere() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let keys = "balance = \"round_robin\"\naffinity = \"sticky\"";
    let proxy = start_proxy(&[quoted(a.server()), quoted(b.server())], keys, "").await;

    let sessions = new_sessions(&proxy, 8).await;
    let mut on_b: Vec<Browser> = sessions
        .into_iter()
        .filter(|(_, s)| s == "b")
        .map(|(browser, _)| browser)
        .collect();
    assert!(on_b.len() >= 2, "round robin pins some sessions to b");

    proxy.write_config(&config(
        &[
            quoted(a.server()),
            format!("{{ addr = \"{}\", drain = true }}", b.server()),
        ],
        keys,
        "",
    ));
    proxy.handle.reload().await.expect("reload with drain");

    for browser in &mut on_b {
        for i in 0..3 {
            assert_eq!(
                browser.visit(&proxy, &format!("/still/{i}")).await,
                "b",
                "a session pinned to a draining server stays there"
            );
        }
    }
    assert!(b
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/still/"))
        .all(|s| s.header("x-session-repinned").is_none()));
    for (_, server) in new_sessions(&proxy, 10).await {
        assert_eq!(
            server, "a",
            "a new session was pinned to the draining server"
        );
    }
}

// ---------------------------------------------------------------------------------------
// hash and none
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_sends_each_session_to_one_server_and_uses_both() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "affinity = \"hash\"",
        "",
    )
    .await;

    let mut sessions = new_sessions(&proxy, 40).await;
    for (browser, first) in &mut sessions {
        for i in 0..3 {
            assert_eq!(browser.visit(&proxy, &format!("/more/{i}")).await, *first);
        }
    }
    let counts = tally(sessions.iter().map(|(_, s)| s.clone()));
    assert_eq!(counts.len(), 2, "both servers get sessions: {counts:?}");
    // The server is a function of the public id the upstream sees.
    let mut home: HashMap<String, &str> = HashMap::new();
    for upstream in [&a, &b] {
        for seen in upstream.seen() {
            let id = seen.header("x-session-id").expect("X-Session-Id");
            let was = home.insert(id.clone(), upstream.name());
            assert!(
                was.is_none() || was == Some(upstream.name()),
                "session {id} seen on two servers"
            );
        }
    }
    assert_eq!(home.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_moves_only_the_sessions_of_a_killed_server() {
    let servers = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let proxy = start_proxy(
        &servers
            .iter()
            .map(|s| quoted(s.server()))
            .collect::<Vec<_>>(),
        "affinity = \"hash\"",
        "",
    )
    .await;

    let mut sessions = new_sessions(&proxy, 30).await;
    let counts = tally(sessions.iter().map(|(_, s)| s.clone()));
    assert_eq!(
        counts.len(),
        3,
        "all three servers get sessions: {counts:?}"
    );
    let victim = &servers[1];
    victim.kill().await;

    let mut moved = 0;
    for (browser, home) in &mut sessions {
        let now = browser.visit(&proxy, "/after").await;
        if home == victim.name() {
            assert_ne!(now, victim.name());
            moved += 1;
        } else {
            assert_eq!(now, *home, "a session on a surviving server moved");
        }
        // And it stays where it is now.
        assert_eq!(browser.visit(&proxy, "/after/again").await, now);
    }
    assert_eq!(moved, counts[victim.name()]);
    for survivor in [&servers[0], &servers[2]] {
        for seen in survivor.seen().iter().filter(|s| s.path == "/after") {
            let repinned = seen.header("x-session-repinned");
            let id = seen.header("x-session-id").unwrap();
            let was_home = survivor
                .seen()
                .iter()
                .any(|s| s.path == "/" && s.header("x-session-id").as_deref() == Some(&*id));
            assert_eq!(
                repinned.as_deref(),
                if was_home { None } else { Some("1") },
                "X-Session-Repinned marks exactly the moved sessions"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_none_spreads_one_sessions_requests_over_both_servers() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"none\"",
        "",
    )
    .await;

    let mut browser = Browser::new(&proxy);
    let mut served = Vec::new();
    for i in 0..20 {
        served.push(browser.visit(&proxy, &format!("/r/{i}")).await);
    }
    let counts = tally(served);
    assert!(counts.get("a").copied().unwrap_or(0) >= 5, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 5, "{counts:?}");
    // Still one session: the same public id on both servers.
    let ids: HashSet<Option<String>> = a
        .seen()
        .iter()
        .chain(b.seen().iter())
        .map(|s| s.header("x-session-id"))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

// ---------------------------------------------------------------------------------------
// balancing
// ---------------------------------------------------------------------------------------

/// 20 new sessions, staggered by 10 ms, over `least_conn` between `slow` (set up by
/// `make_slow`) and `fast`; returns how many `fast` served.
async fn least_conn_share_of_fast(make_slow: impl FnOnce(&Upstream)) -> HashMap<String, usize> {
    let slow = Upstream::start("slow").await;
    let fast = Upstream::start("fast").await;
    make_slow(&slow);
    let proxy = start_proxy(
        &[quoted(slow.server()), quoted(fast.server())],
        "balance = \"least_conn\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let mut browser = Browser::new(&proxy);
            let url = proxy.url(&format!("/c/{i}"));
            // Staggered a little, as real arrivals are: each new request sees the loads
            // left by the earlier ones.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                let request = browser.client.get(url);
                let got = browser.send(request).await;
                assert_eq!(got.status, StatusCode::OK);
                got.body.trim().to_string()
            })
        })
        .collect();
    let mut served = Vec::new();
    for task in tasks {
        served.push(task.await.unwrap());
    }
    tally(served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_avoids_a_slow_server() {
    let counts = least_conn_share_of_fast(|slow| slow.set_delay(Duration::from_secs(1))).await;
    assert!(
        counts.get("fast").copied().unwrap_or(0) >= 14,
        "least_conn should prefer the fast server: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_counts_a_response_until_its_body_is_sent() {
    // The slow server answers its head at once but takes a second over the body: the
    // request is in flight there until the body is done.
    let counts = least_conn_share_of_fast(|slow| slow.set_slow_body(Duration::from_secs(1))).await;
    assert!(
        counts.get("fast").copied().unwrap_or(0) >= 14,
        "least_conn should prefer the server that is not busy sending bodies: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_balance_spreads_new_sessions() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"random\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let counts = tally(new_sessions(&proxy, 40).await.into_iter().map(|(_, s)| s));
    // 50/50 draws: fewer than 6 of 40 on one side has a probability under 1e-6.
    assert!(counts.get("a").copied().unwrap_or(0) >= 6, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 6, "{counts:?}");
}

// ---------------------------------------------------------------------------------------
// failures
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_server_gives_503_with_retry_after() {
    let proxy = start_proxy(
        &[quoted(refused_addr()), quoted(refused_addr())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    let client = proxy.client();
    // The first request finds out that both refuse (and reports the connect failure).
    let first = client.get(proxy.url("/")).send().await.unwrap();
    assert!(
        [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE].contains(&first.status()),
        "{}",
        first.status()
    );
    // Both are now known down: 503 with a Retry-After in seconds.
    for _ in 0..3 {
        let response = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = response
            .headers()
            .get("retry-after")
            .expect("Retry-After on 503")
            .to_str()
            .unwrap()
            .to_string();
        let seconds: u64 = retry_after.parse().expect("Retry-After in seconds");
        assert!(seconds >= 1, "{retry_after}");
    }
}

/// A POST whose first server (dead, but not yet known dead) refuses the connect: the
/// request, body and all, is sent to the other server once. `streamed`: HTTP/1.1 with a
/// chunked body; otherwise HTTP/2 with a known length.
async fn post_is_retried_after_a_refused_connect(streamed: bool) {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let proxy = start_proxy(
        &[quoted(first.server()), quoted(second.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;
    // The proxy still thinks `first` is up, and round robin starts at the first server.
    first.kill().await;

    // Two POSTs: round robin alternates, so at least one of them is tried on `first`
    // (nothing else can have marked it down: no health checks, no other requests).
    for i in 0..2u64 {
        let body = test_bytes(300_000, 7 + i);
        let path = format!("/upload/{i}");
        let request = if streamed {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(40_000).map(|c| Ok(c.to_vec())).collect();
            proxy
                .client_h1()
                .post(proxy.url(&path))
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
        } else {
            proxy.client().post(proxy.url(&path)).body(body.clone())
        };
        let response = request
            .header("content-type", "application/octet-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "second");
        let seen = second.last();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, path);
        assert!(seen.body == body, "the body arrived changed");
        assert!(seen.header("x-session-id").is_some());
    }
    assert_eq!(second.count(), 2, "each POST was sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_whose_first_server_refuses_the_connect_is_retried_on_the_other_with_its_body() {
    post_is_retried_after_a_refused_connect(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_post_whose_first_server_refuses_the_connect_is_retried_with_its_body() {
    post_is_retried_after_a_refused_connect(true).await;
}

// ---------------------------------------------------------------------------------------
// upgrades
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_of_a_session_goes_to_its_pinned_server() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = start_proxy(
        &[quoted(a.server()), quoted(b.server())],
        "balance = \"round_robin\"\naffinity = \"sticky\"",
        "",
    )
    .await;

    // Two sessions, one per server (round robin).
    let mut pinned = Vec::new();
    for _ in 0..2 {
        let mut browser = Browser::new(&proxy);
        let server = browser.visit(&proxy, "/").await;
        pinned.push((browser.cookie.clone().unwrap(), server));
    }
    assert_ne!(pinned[0].1, pinned[1].1);

    // Several upgrades each; round robin alone would alternate.
    for round in 0..3 {
        for (cookie, server) in &pinned {
            let upstream = if server == "a" { &a } else { &b };
            let before = upstream.request_count();
            let mut conn = proxy.raw().await;
            let request = format!(
                "GET /ws/{round} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n",
                proxy.host()
            );
            conn.send(request.as_bytes()).await.unwrap();
            let response = conn.read_response().await.unwrap();
            assert_eq!(response.status, 101, "{response:?}");
            assert_eq!(
                upstream.request_count(),
                before + 1,
                "upgrade went to {server}"
            );
            let seen = upstream.last_request();
            assert_eq!(seen.uri.path(), format!("/ws/{round}"));
            assert_eq!(seen.one("upgrade").as_deref(), Some("websocket"));
            conn.send(b"ping").await.unwrap();
            assert_eq!(conn.read_exact_raw(4).await.unwrap(), b"ping");
        }
    }
    // Each server saw exactly one session id.
    for upstream in [&a, &b] {
        let ids: HashSet<Option<String>> = upstream
            .requests()
            .iter()
            .map(|r| r.one("x-session-id"))
            .collect();
        assert_eq!(ids.len(), 1, "{}: {ids:?}", upstream.name());
    }
}
