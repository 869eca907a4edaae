//! Request hygiene against smuggling and desync, through raw sockets: requests with
//! both `Content-Length` and `Transfer-Encoding`, conflicting `Content-Length`s, a
//! `Transfer-Encoding` other than `chunked`, obsolete line folding, or control
//! characters in header names or values get 400 and never reach the upstream; what the
//! upstream receives is always re-serialised (one request per client request, framing
//! of our own); and an upstream response with the same defects becomes a 502 without
//! desynchronising the client's connection. hyper guarantees most of this; these tests
//! pin it.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{MockUpstream, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn host(proxy: &TestProxy) -> String {
    proxy.host()
}

/// Sends `head` (and `body`) raw; returns the status of the first response and whether
/// the connection then still serves a plain GET correctly.
async fn send_raw(proxy: &TestProxy, bytes: &[u8]) -> (u16, bool) {
    let mut conn = proxy.raw().await;
    conn.send(bytes).await.unwrap();
    let first = conn.read_response().await.expect("a response");
    let follow_up = async {
        conn.send_get(&host(proxy), "/after").await.ok()?;
        conn.read_response().await.ok()
    }
    .await;
    (first.status, follow_up.is_some_and(|r| r.status == 200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_and_header_syntax_get_400_and_reach_no_upstream() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    let h = host(&proxy);
    let cases: Vec<(&str, String)> = vec![
        (
            "conflicting Content-Lengths",
            format!("POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ),
        (
            "Content-Length list",
            format!("POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 4, 5\r\n\r\nabcde"),
        ),
        (
            "Transfer-Encoding gzip",
            format!("POST /x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: gzip\r\n\r\nabcd"),
        ),
        (
            "Transfer-Encoding chunked not last",
            format!("POST /x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding xchunked",
            format!("POST /x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        ),
        (
            "obsolete line folding",
            format!("GET /x HTTP/1.1\r\nHost: {h}\r\nX-Folded: a\r\n b\r\n\r\n"),
        ),
        (
            "control character in a value",
            format!("GET /x HTTP/1.1\r\nHost: {h}\r\nX-Bad: a\x01b\r\n\r\n"),
        ),
        (
            "NUL in a value",
            format!("GET /x HTTP/1.1\r\nHost: {h}\r\nX-Bad: a\0b\r\n\r\n"),
        ),
        (
            "control character in a name",
            format!("GET /x HTTP/1.1\r\nHost: {h}\r\nX\x07Bad: a\r\n\r\n"),
        ),
        (
            "space before the colon",
            format!("GET /x HTTP/1.1\r\nHost: {h}\r\nX-Bad : a\r\n\r\n"),
        ),
    ];
    for (what, request) in cases {
        let mut conn = proxy.raw().await;
        conn.send(request.as_bytes()).await.unwrap();
        let response = conn.read_response().await;
        match response {
            Ok(response) => assert_eq!(response.status, 400, "{what}: {}", response.status),
            Err(error) => panic!("{what}: no 400 but {error}"),
        }
        assert_eq!(upstream.request_count(), 0, "{what} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_read_as_chunked_then_the_connection_closes() {
    let upstream = MockUpstream::start_with("app", common::Mode::Echo).await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    let h = host(&proxy);
    // CL.TE: a front end trusting Content-Length would forward "0\r\n\r\nG" and leave
    // the rest; read as chunked the body is empty and "GET /smuggled" would follow.
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n"
    );
    let mut conn = proxy.raw().await;
    conn.send(request.as_bytes()).await.unwrap();
    let response = conn.read_response().await.expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    let (rest, closed) = conn
        .read_until_closed(std::time::Duration::from_secs(10))
        .await;
    assert!(
        closed,
        "the connection stayed open after a doubly framed request"
    );
    assert!(rest.is_empty(), "a second response followed: {rest:?}");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "the upstream saw a smuggled request");
    assert!(requests[0].body.is_empty());
    assert_eq!(requests[0].one("content-length"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_hiding_a_second_request_reaches_the_upstream_as_one_reframed_request() {
    let upstream = MockUpstream::start_with("app", common::Mode::Echo).await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    let h = host(&proxy);
    // A body that looks like a request: it must stay body, and be framed by us.
    let smuggled = format!("GET /admin HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let (status, follow_up_ok) = send_raw(&proxy, request.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(follow_up_ok, "the connection desynchronised");
    let requests = upstream.requests();
    let paths: Vec<String> = requests.iter().map(|r| r.uri.path().to_string()).collect();
    assert_eq!(
        paths,
        ["/upload", "/after"],
        "the upstream saw a smuggled request"
    );
    assert_eq!(requests[0].body, smuggled.as_bytes());
    assert_eq!(requests[0].version, http::Version::HTTP_11);
}

/// An upstream that answers each request with `responses[path]`, raw.
async fn raw_upstream(
    responses: Vec<(&'static str, &'static str)>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let responses = Arc::new(Mutex::new(responses));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let responses = responses.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let answer = responses
                            .lock()
                            .unwrap()
                            .iter()
                            .find(|(p, _)| *p == path)
                            .map(|(_, r)| *r)
                            .unwrap_or("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                        counter.fetch_add(1, Ordering::Relaxed);
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_response_is_a_502_and_the_client_connection_stays_in_step() {
    let (addr, _served) = raw_upstream(vec![
        (
            "/cl-te",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
        (
            "/two-lengths",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
        ),
        (
            "/folded",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: a\r\n b\r\n\r\nok",
        ),
        (
            "/control",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad: a\x01b\r\n\r\nok",
        ),
    ])
    .await;
    let proxy = TestProxy::builder()
        .config(format!(
            "[upstreams.app]\nservers = [\"{addr}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n"
        ))
        .start()
        .await;
    let h = host(&proxy);
    for path in ["/cl-te", "/two-lengths", "/folded", "/control"] {
        let mut conn = proxy.raw().await;
        conn.send_get(&h, path).await.unwrap();
        let first = conn.read_response().await.expect("a response");
        assert!(
            first.status == 502 || (first.status == 200 && first.body_text() != "smuggled"),
            "{path}: {} {:?}",
            first.status,
            first.body_text()
        );
        // The next request on the same client connection gets its own answer.
        conn.send_get(&h, "/plain").await.unwrap();
        let next = conn
            .read_response()
            .await
            .expect("the connection still answers");
        assert_eq!(
            (next.status, next.body_text().as_str()),
            (200, "ok"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_upstream_receives_is_reframed_by_the_proxy() {
    let upstream = MockUpstream::start_with("app", common::Mode::Echo).await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    let h = host(&proxy);
    // Odd but legal input: lower-case chunk sizes with extensions, a trailer.
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    );
    let (status, follow_up_ok) = send_raw(&proxy, request.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(follow_up_ok);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.body, "abc");
    assert_eq!(seen.one("trailer"), None, "hop-by-hop Trailer forwarded");
}
