//! Long-lived connections: WebSockets (HTTP/1.1 upgrades and RFC 8441 over HTTP/2) and
//! streamed responses held longer than every client timeout.
//!
//! Real peers where it matters: Debian's python3-websockets as the client and the echo
//! upstream, python3-h2 for the HTTP/2 extended CONNECT. The tunnel's own mechanics
//! (idle close, the connection limit, shutdown) are driven with raw bytes through the
//! mock upstream's echo, which speaks no WebSocket framing and needs none.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    poll_until, test_bytes, MockUpstream, Mode, ProxyConfig, RawConn, Route, TestProxy, SOON,
};
use futures_util::StreamExt as _;

/// The interpreter that has Debian's python3-websockets and python3-h2 (`.ci/run`
/// installs them); a `python3` earlier on `PATH` (pyenv) may not.
const PYTHON: &str = "/usr/bin/python3";
const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tunnels/ws_tools.py");

/// A WebSocket echo server (python3-websockets), killed on drop.
struct WsEcho {
    child: Child,
    port: u16,
}

impl WsEcho {
    async fn start() -> WsEcho {
        let mut child = Command::new(PYTHON)
            .args([TOOLS, "server"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the python3 WebSocket echo server");
        let stdout = child.stdout.take().unwrap();
        // Its first line names the port; later lines are drained so it never blocks.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok).unwrap_or_default());
            for _ in lines {}
        });
        let line = tokio::time::timeout(SOON, rx)
            .await
            .expect("the echo server printed no port")
            .unwrap_or_default();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        WsEcho { child, port }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy in front of `server` on every path, without sessions, with `extra` TOML.
async fn proxy_for(server: &str, extra: &str) -> TestProxy {
    TestProxy::builder()
        .config(
            ProxyConfig::new()
                .prelude(extra)
                .upstream("app", [server])
                .route(Route::new("/", "app").session(false)),
        )
        .admin_listener()
        .start()
        .await
}

/// Runs a `ws_tools.py` client to its end (off the runtime); its output and success.
async fn python_client(proxy: &TestProxy, args: Vec<String>) -> (String, bool) {
    let ca = proxy.dir.path().join("ca.pem");
    std::fs::write(&ca, proxy.pki.ca_pem()).unwrap();
    let ca = ca.to_string_lossy().into_owned();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| if a == "CA" { ca.clone() } else { a })
        .collect();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(PYTHON)
            .arg(TOOLS)
            .args(&args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the python client hung")
    .expect("run the python client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (text, output.status.success())
}

/// A metric's value from the admin listener's /metrics.
async fn metric(proxy: &TestProxy, name: &str) -> Option<f64> {
    let text = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| line.split([' ', '{']).next() == Some(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// An upgraded raw connection through the proxy to the mock upstream's echo.
async fn raw_tunnel(proxy: &TestProxy) -> RawConn {
    let mut conn = proxy.raw().await;
    conn.send_upgrade(&proxy.host(), "/ws").await.unwrap();
    let response = conn.read_response().await.unwrap();
    assert_eq!(response.status, 101, "{response:?}");
    conn
}

async fn echo(conn: &mut RawConn, message: &[u8]) {
    conn.send(message).await.unwrap();
    let echoed = conn.read_exact_raw(message.len()).await.unwrap();
    assert!(
        echoed == message,
        "the tunnel changed {} bytes",
        message.len()
    );
}

const SHORT_CLIENT_TIMEOUTS: &str = "[timeouts]\nheader_read = \"1s\"\nclient_idle = \"2s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_header_read_and_client_idle() {
    let upstream = WsEcho::start().await;
    let proxy = proxy_for(&upstream.server(), SHORT_CLIENT_TIMEOUTS).await;
    let url = format!("wss://localhost:{}/chat", proxy.https_addr.port());

    // A message every 300 ms for 5 s: five times header_read, more than twice client_idle.
    let args = ["client", &url, "CA", "0.3", "5"]
        .map(String::from)
        .to_vec();
    let (output, ok) = python_client(&proxy, args).await;
    assert!(ok, "{output}");
    assert!(output.starts_with("OK "), "{output}");

    // Silent for 3 s (longer than client_idle) right after the upgrade, then talking.
    let args = ["client", &url, "CA", "0.2", "1", "3"]
        .map(String::from)
        .to_vec();
    let (output, ok) = python_client(&proxy, args).await;
    assert!(ok, "a quiet tunnel was cut: {output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_extended_connect_reaches_the_http1_upstream() {
    let upstream = WsEcho::start().await;
    let proxy = proxy_for(&upstream.server(), SHORT_CLIENT_TIMEOUTS).await;
    let args = [
        "h2client",
        "127.0.0.1",
        &proxy.https_addr.port().to_string(),
        "CA",
        "/chat",
        "20",
    ]
    .map(String::from)
    .to_vec();
    let (output, ok) = python_client(&proxy, args).await;
    assert!(ok, "{output}");
    assert_eq!(output.trim(), "OK 20 messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_survives_its_first_bytes_past_header_read() {
    // The defect this pins: the first client bytes after the upgrade looked like the
    // start of a request head, and `header_read` later cut the tunnel.
    let upstream = MockUpstream::start("ws").await;
    let proxy = proxy_for(&upstream.server(), SHORT_CLIENT_TIMEOUTS).await;
    let mut conn = raw_tunnel(&proxy).await;
    echo(&mut conn, b"first").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    echo(&mut conn, &test_bytes(100_000, 7)).await;
    assert_eq!(metric(&proxy, "cloakroom_tunnels_open").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_is_closed_after_tunnel_idle() {
    let upstream = MockUpstream::start("ws").await;
    let proxy = proxy_for(&upstream.server(), "[timeouts]\ntunnel_idle = \"1s\"\n").await;
    let mut conn = raw_tunnel(&proxy).await;
    // Traffic keeps it open past tunnel_idle...
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        echo(&mut conn, b"ping").await;
    }
    // ...and silence closes it.
    let quiet = Instant::now();
    let (_, closed) = conn.read_until_closed(Duration::from_secs(5)).await;
    assert!(closed, "an idle tunnel stayed open");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        quiet.elapsed()
    );
    poll_until(SOON, "the tunnel gauge back to 0", || async {
        metric(&proxy, "cloakroom_tunnels_open").await == Some(0.0)
            && metric(&proxy, "cloakroom_connections_open").await == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_hold_their_connection_slot_until_they_end() {
    let upstream = MockUpstream::start("ws").await;
    let proxy = proxy_for(&upstream.server(), "[limits]\nmax_connections = 2\n").await;
    let mut first = raw_tunnel(&proxy).await;
    let mut second = raw_tunnel(&proxy).await;
    echo(&mut first, b"one").await;
    echo(&mut second, b"two").await;
    assert_eq!(metric(&proxy, "cloakroom_tunnels_open").await, Some(2.0));
    assert_eq!(
        metric(&proxy, "cloakroom_connections_open").await,
        Some(2.0)
    );

    // A third connection waits for a slot: not served while both tunnels are open.
    let client = proxy.client_h1();
    let url = proxy.url("/");
    let third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!third.is_finished(), "served past max_connections");

    // A tunnel ends: the waiting connection is served.
    drop(first);
    let status = tokio::time::timeout(SOON, third)
        .await
        .expect("the third connection was never served")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    echo(&mut second, b"still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_tunnel_work_through_the_grace_then_closes_it() {
    let upstream = MockUpstream::start("ws").await;
    let mut proxy = proxy_for(&upstream.server(), "[timeouts]\nshutdown_grace = \"3s\"\n").await;
    let mut conn = raw_tunnel(&proxy).await;
    echo(&mut conn, b"before").await;
    let stopping = Instant::now();
    proxy.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    echo(&mut conn, b"during the grace").await;
    let (_, closed) = conn.read_until_closed(Duration::from_secs(8)).await;
    assert!(closed, "the tunnel outlived the grace period");
    assert!(
        stopping.elapsed() >= Duration::from_millis(2500),
        "cut after {:?}, before the grace ended",
        stopping.elapsed()
    );
    proxy.wait_stopped(SOON).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_past_header_read_and_client_idle() {
    let upstream = MockUpstream::start_with(
        "events",
        Mode::Events {
            count: 8,
            every: Duration::from_millis(400),
        },
    )
    .await;
    let proxy = proxy_for(&upstream.server(), SHORT_CLIENT_TIMEOUTS).await;
    for client in [proxy.client_h1(), proxy.client()] {
        let started = Instant::now();
        let response = client.get(proxy.url("/events")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let mut text = String::new();
        let mut first = None;
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            first.get_or_insert_with(|| started.elapsed());
        }
        let first = first.expect("no event arrived");
        assert!(
            first < Duration::from_secs(1),
            "first event after {first:?}"
        );
        let events: Vec<&str> = text.lines().filter(|l| l.starts_with("data: ")).collect();
        assert_eq!(events.len(), 8, "{text}");
        assert_eq!(events.last(), Some(&"data: 7"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_keeps_a_tunnel_through_sigterm_and_exits_0() {
    let upstream = MockUpstream::start("ws").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = common::TestPki::new();
    common::write_leaf(dir.path(), &pki.default_leaf("binary"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let body = format!(
        "[timeouts]\nshutdown_grace = \"3s\"\n\n[upstreams.app]\nservers = [\"{}\"]\n\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n",
        upstream.server()
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        common::config_text(&format!("127.0.0.1:{port}"), &body),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloakroom"))
        .arg("--config")
        .arg(&config)
        .env_remove("CLOAKROOM_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = ([127, 0, 0, 1], port).into();
    poll_until(SOON, "the binary listens", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut conn = RawConn::connect(addr, "localhost", &pki, &[b"http/1.1"]).await;
    conn.send_upgrade(&format!("localhost:{port}"), "/ws")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.unwrap().status, 101);
    echo(&mut conn, b"before").await;

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    echo(&mut conn, b"during the grace").await;
    let (_, closed) = conn.read_until_closed(Duration::from_secs(8)).await;
    assert!(closed, "the tunnel outlived the grace period");
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("cloakroom did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{status:?}\n{text}");
    assert!(text.contains("closed_by=\"shutdown\""), "{text}");
}
