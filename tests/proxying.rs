//! Plain proxying through the TLS listener: HTTP/1.1 and HTTP/2 clients, the headers the
//! upstream receives (`X-Forwarded-*`, `Host`, joined cookies), hop-by-hop stripping in
//! both directions, route precedence, 404 for unmatched requests, large bodies both
//! ways, and keep-alive reuse.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{test_bytes, MockUpstream, Mode, TestProxy};
use reqwest::{StatusCode, Version};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_over_http1_reaches_upstream() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    let response = proxy
        .client_h1()
        .get(proxy.url("/hello?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "alpha");

    let seen = upstream.last_request();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri.to_string(), "/hello?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_over_http2_reaches_upstream_as_http1() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    let response = proxy
        .client()
        .get(proxy.url("/hello?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "alpha");

    let seen = upstream.last_request();
    assert_eq!(seen.uri.to_string(), "/hello?x=1");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.one("host").as_deref(), Some(proxy.host().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_set_and_client_values_replaced() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    for client in [proxy.client_h1(), proxy.client()] {
        let response = client
            .get(proxy.url("/"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let seen = upstream.last_request();
        assert_eq!(seen.one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(seen.one("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(
            seen.one("x-forwarded-host").as_deref(),
            Some(proxy.host().as_str())
        );
        // The client's Host (with its port) is passed on unchanged.
        assert_eq!(seen.one("host").as_deref(), Some(proxy.host().as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    let response = proxy
        .client_h1()
        .get(proxy.url("/"))
        .header("connection", "close, X-Hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("trailer", "x-trailer")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let seen = upstream.last_request();
    for name in [
        "x-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            seen.all(name).is_empty(),
            "upstream received hop-by-hop header {name}: {:?}",
            seen.all(name)
        );
    }
    // Whatever `Connection` the proxy's own client writes, it must not name the client's.
    for value in seen.all("connection") {
        let value = value.to_ascii_lowercase();
        assert!(!value.contains("x-hop"), "connection: {value}");
    }
    assert_eq!(seen.one("x-end-to-end").as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_forwarded() {
    let upstream = MockUpstream::start("alpha").await;
    upstream.add_response_header("connection", "X-Up");
    upstream.add_response_header("x-up", "1");
    upstream.add_response_header("keep-alive", "timeout=5");
    upstream.add_response_header("proxy-authenticate", "Basic realm=\"x\"");
    upstream.add_response_header("x-end-to-end", "kept");
    let proxy = TestProxy::in_front_of(&upstream).await;

    for client in [proxy.client_h1(), proxy.client()] {
        let response = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(response.text().await.unwrap(), "alpha");
        for name in ["x-up", "keep-alive", "proxy-authenticate"] {
            assert!(
                !headers.contains_key(name),
                "client received hop-by-hop header {name}: {:?}",
                headers.get(name)
            );
        }
        for value in headers.get_all("connection") {
            let value = value.to_str().unwrap().to_ascii_lowercase();
            assert!(!value.contains("x-up"), "connection: {value}");
        }
        assert_eq!(headers.get("x-end-to-end").unwrap(), "kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookies_arrive_as_one_header() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    let response = proxy
        .client()
        .get(proxy.url("/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.last_request();
    assert_eq!(seen.all("cookie"), vec!["a=1; b=2; c=3".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn most_specific_host_then_longest_path_wins_regardless_of_file_order() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let c = MockUpstream::start("c").await;
    // Deliberately listed from least to most specific, mixed up.
    let proxy = TestProxy::builder()
        .config(format!(
            r#"
[upstreams.a]
servers = ["{a}"]
[upstreams.b]
servers = ["{b}"]
[upstreams.c]
servers = ["{c}"]

[[routes]]
path = "/"
upstream = "c"
session = false

[[routes]]
host = "*.test"
path = "/"
upstream = "b"
session = false

[[routes]]
path = "/static/img"
upstream = "a"
session = false

[[routes]]
host = "app.test"
path = "/"
upstream = "a"
session = false

[[routes]]
path = "/static"
upstream = "b"
session = false

[[routes]]
host = "app.test"
path = "/admin"
upstream = "c"
session = false
"#,
            a = a.server(),
            b = b.server(),
            c = c.server()
        ))
        .start()
        .await;
    let client = proxy.client_h1();

    let cases = [
        ("app.test", "/", "a"),             // exact host beats *.test and no host
        ("app.test", "/static/img/x", "a"), // exact host beats longer paths of other hosts
        ("app.test", "/admin/users", "c"),  // longest path within the exact host
        ("app.test", "/admin", "c"),
        ("app.test", "/adminx", "a"), // prefixes match on segment boundaries
        ("other.test", "/", "b"),     // *.test
        ("a.wild.test", "/static/img/x", "b"),
        ("localhost", "/", "c"),                 // no host
        ("localhost", "/static/x", "b"),         // longer path
        ("localhost", "/static/img/1.png", "a"), // longest path, listed before /static
        ("localhost", "/staticfoo", "c"),
    ];
    for (host, path, expected) in cases {
        let response = client.get(proxy.url_for(host, path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{host}{path}");
        assert_eq!(
            response.text().await.unwrap(),
            expected,
            "{host}{path} went to the wrong upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_request_returns_404() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::builder()
        .config(format!(
            r#"
[upstreams.app]
servers = ["{}"]

[[routes]]
host = "app.test"
path = "/"
upstream = "app"
session = false

[[routes]]
path = "/only"
upstream = "app"
session = false
"#,
            upstream.server()
        ))
        .start()
        .await;

    for client in [proxy.client_h1(), proxy.client()] {
        let response = client.get(proxy.url("/elsewhere")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = client
            .get(proxy.url_for("other.test", "/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = client.get(proxy.url("/only/x")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_body_is_streamed_intact() {
    let upstream = MockUpstream::start_with("echo", Mode::Echo).await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    let body = test_bytes(5 * 1024 * 1024, 7);

    for (client, version) in [
        (proxy.client_h1(), Version::HTTP_11),
        (proxy.client(), Version::HTTP_2),
    ] {
        let response = client
            .post(proxy.url("/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), StatusCode::OK);
        let echoed = response.bytes().await.unwrap();
        assert_eq!(echoed.len(), body.len(), "{version:?}: echoed length");
        assert!(echoed == body, "{version:?}: echoed body differs");
        let seen = upstream.last_request();
        assert!(
            seen.body == body,
            "{version:?}: upstream got a different body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_body_arrives_intact() {
    let body = test_bytes(5 * 1024 * 1024, 11);
    let upstream = MockUpstream::start_with("big", Mode::Body(body.clone().into())).await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    for client in [proxy.client_h1(), proxy.client()] {
        let response = client.get(proxy.url("/download")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let received = response.bytes().await.unwrap();
        assert_eq!(received.len(), body.len());
        assert!(received == body, "response body differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_serves_50_sequential_requests() {
    let upstream = MockUpstream::start("alpha").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    // One client connection for all of them.
    let mut conn = proxy.raw().await;
    for i in 0..50 {
        conn.send_get(&proxy.host(), &format!("/n/{i}"))
            .await
            .unwrap();
        let response = conn.read_response().await.unwrap();
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.body_text(), "alpha", "request {i}");
    }
    assert_eq!(upstream.request_count(), 50);
    // The proxy pools its upstream connections too.
    assert!(
        upstream.connections() <= 5,
        "50 sequential requests used {} upstream connections",
        upstream.connections()
    );

    // And reqwest's pooled client sees the same.
    let client = proxy.client_h1();
    for _ in 0..50 {
        let response = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "alpha");
    }
}
