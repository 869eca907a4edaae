//! Idle HTTP/1.1 keep-alive connections are parked between requests (hyper's
//! connection and its buffers are dropped, the TLS stream kept; see
//! `src/listener/park.rs`): whatever the client sends next on the same connection is
//! served as before. A connection parks after one quiet tick of its deadline timer (half
//! of `header_read` here: 150 ms); the pauses below are the behaviour under test (the
//! connection goes idle for longer than that), not waits for something to happen.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{MockUpstream, Mode, TestProxy};

/// Long enough for a connection to be seen idle and parked (two ticks and more).
const IDLE: Duration = Duration::from_millis(450);

async fn proxy_and_upstream(mode: Mode) -> (TestProxy, MockUpstream) {
    let upstream = MockUpstream::start_with("a", mode).await;
    let proxy = TestProxy::builder()
        .config(format!(
            "[timeouts]\nheader_read = \"300ms\"\nclient_idle = \"10s\"\n\n\
             [upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n",
            upstream.server()
        ))
        .start()
        .await;
    (proxy, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_serves_gets_and_posts_again() {
    let (proxy, upstream) = proxy_and_upstream(Mode::Echo).await;
    let host = proxy.host();
    let mut conn = proxy.raw().await;
    conn.send_get(&host, "/one").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    tokio::time::sleep(IDLE).await;

    let post = format!(
        "POST /two HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    );
    conn.send(post.as_bytes()).await.unwrap();
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
    tokio::time::sleep(IDLE).await;

    conn.send_get(&host, "/three").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    tokio::time::sleep(IDLE).await;
    conn.send_get(&host, "/four").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);

    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/four"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_an_idle_pause_are_all_answered() {
    let (proxy, upstream) = proxy_and_upstream(Mode::Name).await;
    let host = proxy.host();
    let mut conn = proxy.raw().await;
    conn.send_get(&host, "/first").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    tokio::time::sleep(IDLE).await;

    let three: String = ["/a", "/b", "/c"]
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
        .collect();
    conn.send(three.as_bytes()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(conn.read_response().await.unwrap().status, 200);
    }
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_split_across_writes_after_an_idle_pause_is_served() {
    let (proxy, upstream) = proxy_and_upstream(Mode::Name).await;
    let host = proxy.host();
    let mut conn = proxy.raw().await;
    conn.send_get(&host, "/first").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    tokio::time::sleep(IDLE).await;

    conn.send(b"GET /split HTTP/1.1\r\nHo").await.unwrap();
    // Within header_read: the head is still allowed to complete.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(format!("st: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    assert_eq!(upstream.last_request().uri.path(), "/split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_before_its_first_request_is_served() {
    let (proxy, upstream) = proxy_and_upstream(Mode::Name).await;
    let host = proxy.host();
    let mut conn = proxy.raw().await;
    // Within header_read, which applies before the first request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send_get(&host, "/late").await.unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 200);
    assert_eq!(upstream.request_count(), 1);
}
