//! Rate limits through the proxy: a burst over `limits.per_ip` gets 429 with
//! `Retry-After`, reaches no upstream, and passes again after the window;
//! `new_sessions_per_ip` refuses new sessions but spares existing ones; `per_session`
//! counts each session alone; a client's `X-Forwarded-For` is believed only from a
//! trusted proxy.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{poll_until, MockUpstream, ProxyConfig, Route, TestProxy};

fn config(upstream: &MockUpstream, limits: &str, session: bool) -> String {
    ProxyConfig::new()
        .table("limits", limits)
        .upstream("app", [upstream.server()])
        .route(Route::new("/", "app").session(session))
        .build()
}

async fn status(
    proxy: &TestProxy,
    client: &reqwest::Client,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Option<String>) {
    let mut request = client.get(proxy.url("/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .next();
    (response.status().as_u16(), retry, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_per_ip_gets_429_with_retry_after_reaches_no_upstream_and_recovers() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::builder()
        // 10 a minute: one request back every 6 s, far more than the burst takes even
        // on a loaded machine.
        .config(config(&upstream, "per_ip = \"10/m\"", false))
        .start()
        .await;
    let client = proxy.client();
    for i in 0..10 {
        assert_eq!(status(&proxy, &client, &[]).await.0, 200, "request {i}");
    }
    let (code, retry, _) = status(&proxy, &client, &[]).await;
    assert_eq!(code, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=6).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        upstream.request_count(),
        10,
        "a refused request reached the upstream"
    );
    poll_until(
        Duration::from_secs(15),
        "a request passes after the window",
        || {
            let (proxy, client) = (&proxy, &client);
            async move { status(proxy, client, &[]).await.0 == 200 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_per_ip_refuses_new_sessions_and_spares_existing_ones() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::builder()
        .config(config(&upstream, "new_sessions_per_ip = \"2/m\"", true))
        .start()
        .await;
    let client = proxy.client();
    let (code, _, first) = status(&proxy, &client, &[]).await;
    assert_eq!(code, 200);
    let first = first.expect("a session cookie");
    assert_eq!(status(&proxy, &client, &[]).await.0, 200);
    let (code, retry, cookie) = status(&proxy, &client, &[]).await;
    assert_eq!(code, 429);
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    assert!(
        cookie.is_none(),
        "a refused request must not start a session"
    );
    for _ in 0..10 {
        assert_eq!(status(&proxy, &client, &[("cookie", &first)]).await.0, 200);
    }
    assert_eq!(upstream.request_count(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_limits_each_session_on_its_own() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::builder()
        .config(config(&upstream, "per_session = \"3/m\"", true))
        .start()
        .await;
    let client = proxy.client();
    let a = status(&proxy, &client, &[]).await.2.unwrap();
    let b = status(&proxy, &client, &[]).await.2.unwrap();
    for _ in 0..3 {
        assert_eq!(status(&proxy, &client, &[("cookie", &a)]).await.0, 200);
    }
    assert_eq!(status(&proxy, &client, &[("cookie", &a)]).await.0, 429);
    assert_eq!(status(&proxy, &client, &[("cookie", &b)]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_picks_the_client_only_behind_a_trusted_proxy() {
    let upstream = MockUpstream::start("app").await;
    let untrusted = TestProxy::builder()
        .config(config(&upstream, "per_ip = \"2/m\"", false))
        .start()
        .await;
    let client = untrusted.client();
    for i in 0..2 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(
            status(&untrusted, &client, &[("x-forwarded-for", &xff)])
                .await
                .0,
            200
        );
    }
    let spoofed = status(&untrusted, &client, &[("x-forwarded-for", "198.51.100.9")]).await;
    assert_eq!(
        spoofed.0, 429,
        "a spoofed X-Forwarded-For escaped the limit"
    );

    let trusted = TestProxy::builder()
        .config(config(&upstream, "per_ip = \"2/m\"", false))
        .listen("trusted_proxies = [\"127.0.0.1\"]")
        .start()
        .await;
    let client = trusted.client();
    for i in 0..6 {
        let xff = format!("198.51.100.{i}");
        assert_eq!(
            status(&trusted, &client, &[("x-forwarded-for", &xff)])
                .await
                .0,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            status(&trusted, &client, &[("x-forwarded-for", "203.0.113.5")])
                .await
                .0,
            200
        );
    }
    assert_eq!(
        status(&trusted, &client, &[("x-forwarded-for", "203.0.113.5")])
            .await
            .0,
        429
    );
}
