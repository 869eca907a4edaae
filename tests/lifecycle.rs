//! The proxy's life around requests: graceful shutdown, hot reload of routes and
//! certificates (and refusal of a broken config), client deadlines (slowloris vs idle
//! keep-alive), and the plain-HTTP listener's 308 to https.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{poll_until, write_leaf, MockUpstream, TestProxy, SOON};
use reqwest::StatusCode;
use tokio::net::TcpStream;

fn routes_config(a: &MockUpstream, b: &MockUpstream, routes: &str, extra: &str) -> String {
    format!(
        r#"
{extra}

[upstreams.a]
servers = ["{a}"]

[upstreams.b]
servers = ["{b}"]

{routes}
"#,
        a = a.server(),
        b = b.server()
    )
}

const ROOT_TO_A: &str = r#"
[[routes]]
path = "/"
upstream = "a"
session = false
"#;

const ROOT_TO_A_NEW_TO_B: &str = r#"
[[routes]]
path = "/"
upstream = "a"
session = false

[[routes]]
path = "/new"
upstream = "b"
session = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_request() {
    let upstream = MockUpstream::start("slow").await;
    upstream.set_delay(Duration::from_secs(2));
    let mut proxy = TestProxy::in_front_of_with(
        &upstream,
        r#"
[timeouts]
shutdown_grace = "30s"
"#,
    )
    .await;

    let client = proxy.client_h1();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move {
        let response = client.get(url).send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    poll_until(SOON, "the request reaches the upstream", || async {
        upstream.request_count() == 1
    })
    .await;

    proxy.handle.shutdown();
    let addr = proxy.https_addr;
    poll_until(SOON, "new connections are refused", || async move {
        TcpStream::connect(addr).await.is_err()
    })
    .await;

    let (status, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow");
    proxy.wait_stopped(SOON).await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_requests_still_running_after_the_grace_period() {
    let upstream = MockUpstream::start("stuck").await;
    upstream.set_delay(Duration::from_secs(60));
    let mut proxy = TestProxy::in_front_of_with(
        &upstream,
        r#"
[timeouts]
shutdown_grace = "500ms"
upstream = "120s"
"#,
    )
    .await;

    let client = proxy.client_h1();
    let url = proxy.url("/");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    poll_until(SOON, "the request reaches the upstream", || async {
        upstream.request_count() == 1
    })
    .await;

    proxy.handle.shutdown();
    // The grace period is 500ms; the upstream would take 60s.
    proxy.wait_stopped(SOON).await.unwrap();
    let result = tokio::time::timeout(SOON, in_flight)
        .await
        .expect("the cut request must end")
        .unwrap();
    assert!(
        result.is_err(),
        "a request cut at shutdown cannot succeed: {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_route_and_keeps_open_connections_working() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(&a, &b, ROOT_TO_A, ""))
        .start()
        .await;

    let mut before = proxy.raw().await;
    before.send_get(&proxy.host(), "/new").await.unwrap();
    let response = before.read_response().await.unwrap();
    assert_eq!(response.body_text(), "a");

    proxy.write_config(&routes_config(&a, &b, ROOT_TO_A_NEW_TO_B, ""));
    assert_eq!(proxy.handle.reload().await.unwrap(), 2);

    // The connection opened before the reload sees the new routes.
    before.send_get(&proxy.host(), "/new").await.unwrap();
    let response = before.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "b");
    before.send_get(&proxy.host(), "/other").await.unwrap();
    assert_eq!(before.read_response().await.unwrap().body_text(), "a");

    // And so do new ones, over both protocols.
    for client in [proxy.client_h1(), proxy.client()] {
        let response = client.get(proxy.url("/new/x")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "b");
        let response = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_reload_is_refused_and_old_routes_stay() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let old_routes = r#"
[[routes]]
path = "/old"
upstream = "a"
session = false
"#;
    let proxy = TestProxy::builder()
        .config(routes_config(&a, &b, old_routes, ""))
        .start()
        .await;
    let client = proxy.client_h1();

    // A TOML syntax error.
    proxy.write_raw_config("[listen\nhttps = \"127.0.0.1:0\"\n");
    let error = proxy.handle.reload().await.unwrap_err();
    assert!(
        error.to_string().contains("proxy.toml"),
        "the error names the file: {error}"
    );

    // A route to an upstream that does not exist.
    let unknown = r#"
[[routes]]
path = "/new"
upstream = "nope"
session = false
"#;
    proxy.write_config(&routes_config(&a, &b, unknown, ""));
    let error = proxy.handle.reload().await.unwrap_err();
    assert!(
        error.to_string().contains("routes[0].upstream"),
        "the error names the key: {error}"
    );

    // Still the first config.
    let response = client.get(proxy.url("/old")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "a");
    let response = client.get(proxy.url("/new")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Failed reloads do not count as generations.
    proxy.write_config(&routes_config(&a, &b, ROOT_TO_A_NEW_TO_B, ""));
    assert_eq!(proxy.handle.reload().await.unwrap(), 2);
    let response = client.get(proxy.url("/new")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_for_new_connections() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(&a, &b, ROOT_TO_A, ""))
        .start()
        .await;

    let mut old = proxy.raw().await;
    assert_eq!(old.peer_leaf(), proxy.leaf.cert_der);

    let rotated = proxy.pki.default_leaf("rotated leaf");
    assert_ne!(rotated.cert_der, proxy.leaf.cert_der);
    write_leaf(proxy.dir.path(), &rotated);
    assert_eq!(proxy.handle.reload().await.unwrap(), 2);

    let mut new = proxy.raw().await;
    assert_eq!(new.peer_leaf(), rotated.cert_der, "new handshake, new cert");
    new.send_get(&proxy.host(), "/").await.unwrap();
    assert_eq!(new.read_response().await.unwrap().status, 200);

    // The connection made before still works.
    old.send_get(&proxy.host(), "/").await.unwrap();
    assert_eq!(old.read_response().await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_missing_certificate_is_refused() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(&a, &b, ROOT_TO_A, ""))
        .start()
        .await;

    std::fs::write(proxy.dir.path().join("cert.pem"), "not a certificate").unwrap();
    assert!(proxy.handle.reload().await.is_err());

    let conn = proxy.raw().await;
    assert_eq!(
        conn.peer_leaf(),
        proxy.leaf.cert_der,
        "old cert still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_client_is_cut_after_header_read() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(
            &a,
            &b,
            ROOT_TO_A,
            "[timeouts]\nheader_read = \"500ms\"\nclient_idle = \"5s\"",
        ))
        .start()
        .await;

    let mut conn = proxy.raw().await;
    let started = Instant::now();
    conn.send(format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", proxy.host()).as_bytes())
        .await
        .unwrap();
    // A 408 before the close is fine; what matters is that the connection ends.
    let (_, closed) = conn.read_until_closed(Duration::from_secs(5)).await;
    assert!(closed, "a stalled request head was not cut");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "cut before header_read: {:?}",
        started.elapsed()
    );
    assert_eq!(a.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_outlives_header_read() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(
            &a,
            &b,
            ROOT_TO_A,
            "[timeouts]\nheader_read = \"500ms\"\nclient_idle = \"5s\"",
        ))
        .start()
        .await;

    let mut conn = proxy.raw().await;
    conn.send_get(&proxy.host(), "/").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    // Idling between requests is the behaviour under test: longer than header_read,
    // shorter than client_idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.send_get(&proxy.host(), "/").await.unwrap();
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(a.connections(), 1, "the upstream connection was reused too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_is_closed_after_client_idle() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(
            &a,
            &b,
            ROOT_TO_A,
            "[timeouts]\nheader_read = \"5s\"\nclient_idle = \"1s\"",
        ))
        .start()
        .await;

    let mut conn = proxy.raw().await;
    conn.send_get(&proxy.host(), "/").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    let idle_since = Instant::now();
    let (rest, closed) = conn.read_until_closed(SOON).await;
    assert!(closed, "an idle keep-alive connection was never closed");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    assert!(
        idle_since.elapsed() >= Duration::from_millis(800),
        "closed before client_idle: {:?}",
        idle_since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listener_redirects_to_https_with_308() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let proxy = TestProxy::builder()
        .config(routes_config(&a, &b, ROOT_TO_A, ""))
        .http_listener()
        .start()
        .await;
    let http_port = proxy.http_addr.unwrap().port();

    let response = proxy
        .client_h1()
        .get(format!("http://localhost:{http_port}/some/path?q=1&r=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        response.headers().get("location").unwrap(),
        &format!(
            "https://localhost:{}/some/path?q=1&r=2",
            proxy.https_addr.port()
        )
    );
    assert_eq!(a.request_count(), 0, "nothing is proxied over plain HTTP");
}
