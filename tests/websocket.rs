//! Protocol upgrades (WebSocket) over HTTP/1.1: the `Upgrade` handshake reaches the
//! upstream, the client gets `101 Switching Protocols`, and bytes then flow both ways
//! through the tunnel.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{test_bytes, MockUpstream, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_gets_101_and_bytes_echo_both_ways() {
    let upstream = MockUpstream::start("ws").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    let mut conn = proxy.raw().await;
    conn.send_upgrade(&proxy.host(), "/ws").await.unwrap();
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(
        response
            .header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert!(
        response
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{response:?}"
    );

    let seen = upstream.last_request();
    assert_eq!(seen.uri.path(), "/ws");
    assert_eq!(seen.one("upgrade").as_deref(), Some("websocket"));
    assert!(seen
        .one("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(
        seen.one("sec-websocket-key").as_deref(),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    // Several round trips, small and large, through the tunnel.
    for message in [b"hello".to_vec(), test_bytes(200_000, 3), b"bye".to_vec()] {
        conn.send(&message).await.unwrap();
        let echoed = conn.read_exact_raw(message.len()).await.unwrap();
        assert!(echoed == message, "tunnel changed {} bytes", message.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_connection_upgrade_is_not_tunnelled() {
    let upstream = MockUpstream::start("ws").await;
    let proxy = TestProxy::in_front_of(&upstream).await;

    // `Upgrade` without `Connection: upgrade` is a hop-by-hop header to drop, not a tunnel.
    let mut conn = proxy.raw().await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\r\n",
        proxy.host()
    );
    conn.send(request.as_bytes()).await.unwrap();
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body_text(), "ws");
    assert!(upstream.last_request().all("upgrade").is_empty());
}
