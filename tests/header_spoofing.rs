//! Spoofed identity headers: a client-sent `X_Session_User` (or any `_`/`-` spelling of
//! an `inject` name or of the reserved `X-Session-` prefix) never reaches the upstream,
//! on session and `session = false` routes, anonymous and logged in, over HTTP/1.1 and
//! HTTP/2; `listen.drop_underscore_headers` drops every header with a `_`; and a real
//! WSGI server (Python's `wsgiref`, which reads `X_Session_User` and `X-Session-User`
//! as the same `HTTP_X_SESSION_USER`) sees only the proxy's value.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{MockUpstream, TestProxy};
use tokio::io::{AsyncBufReadExt, BufReader};

const SPOOFS: [(&str, &str); 7] = [
    ("X_Session_User", "mallory"),
    ("x_session_roles", "admin"),
    ("X-Session_Id", "forged"),
    ("x_session-data", "admin=1"),
    ("X_SESSION_ASSERTION", "forged"),
    ("x_session_anomaly", "none"),
    ("X-Session-User", "mallory"),
];

/// `name` with `_` read as `-`, lower-case: the name a CGI-style app sees.
fn collapsed(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

fn config(upstream: &str) -> String {
    format!(
        r#"
[inject]
assertion = "X-Session-Assertion"

[upstreams.app]
servers = ["{upstream}"]

[[routes]]
path = "/plain"
upstream = "app"
session = false

[[routes]]
path = "/"
upstream = "app"
"#
    )
}

/// Logs in through a route whose upstream answers with `X-Session-Set-User`; returns the
/// session cookie pair (`name=value`).
async fn login(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.unwrap();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-cloakroom="))
        .expect("a session cookie");
    cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_and_dash_spoofs_never_reach_the_upstream_on_any_route_protocol_or_session() {
    let upstream = MockUpstream::start("app").await;
    let login_app = MockUpstream::start("login").await;
    login_app.add_response_header("X-Session-Set-User", "alice");
    let proxy = TestProxy::builder()
        .config(format!(
            "{}\n[upstreams.login]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/login\"\nupstream = \"login\"\n",
            config(&upstream.server()),
            login_app.server()
        ))
        .start()
        .await;
    for (protocol, client) in [("h1", proxy.client_h1()), ("h2", proxy.client())] {
        let logged_in = login(&client, &proxy.url("/login")).await;
        for cookie in [None, Some(logged_in.as_str())] {
            for path in ["/", "/plain"] {
                let mut request = client.get(proxy.url(path));
                for (name, value) in SPOOFS {
                    request = request.header(name, value);
                }
                request = request.header("x_custom", "1");
                if let Some(cookie) = cookie {
                    request = request.header("cookie", cookie);
                }
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                let seen = upstream.last_request();
                let case = format!("{protocol} {path} logged_in={}", cookie.is_some());
                for (name, value) in &seen.headers {
                    let name = name.as_str();
                    assert!(!name.contains('_'), "{case}: {name} reached the upstream");
                    let value = value.to_str().unwrap();
                    assert!(
                        !["mallory", "admin", "forged", "admin=1", "none"].contains(&value),
                        "{case}: spoofed {name}: {value} reached the upstream"
                    );
                }
                let user = seen.one("x-session-user");
                let expected = (path == "/" && cookie.is_some()).then(|| "alice".to_string());
                assert_eq!(user, expected, "{case}");
                assert_eq!(seen.one("x-session-id").is_some(), path == "/", "{case}");
                let assertion = seen.one("x-session-assertion");
                assert_eq!(assertion.is_some(), path == "/", "{case}");
                assert!(
                    assertion.is_none_or(|a| a.split('.').count() == 3),
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_underscores_allowed_other_underscore_headers_pass_but_identity_spellings_do_not() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::builder()
        .config(config(&upstream.server()))
        .listen("drop_underscore_headers = false")
        .start()
        .await;
    for client in [proxy.client_h1(), proxy.client()] {
        for path in ["/", "/plain"] {
            let mut request = client.get(proxy.url(path)).header("x_custom", "kept");
            for (name, value) in SPOOFS {
                request = request.header(name, value);
            }
            assert_eq!(request.send().await.unwrap().status(), 200);
            let seen = upstream.last_request();
            assert_eq!(seen.one("x_custom").as_deref(), Some("kept"), "{path}");
            for (name, value) in &seen.headers {
                if collapsed(name.as_str()).starts_with("x-session-") {
                    assert!(!name.as_str().contains('_'), "{path}: {name} passed");
                    assert_ne!(value, "mallory", "{path}: {name}");
                }
            }
            assert_eq!(seen.one("x-session-user"), None, "{path}");
        }
    }
}

/// A real WSGI server (`wsgiref`) answering `user=<HTTP_X_SESSION_USER>`.
struct Wsgi {
    child: tokio::process::Child,
    port: u16,
}

impl Wsgi {
    async fn start() -> Wsgi {
        const APP: &str = r#"
import sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
def app(environ, start):
    body = ("user=%s\n" % environ.get("HTTP_X_SESSION_USER", "")).encode()
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", APP])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the WSGI server printed its port in time")
        .unwrap();
        Wsgi {
            child,
            port: line.trim().parse().expect("a port"),
        }
    }
}

impl Drop for Wsgi {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wsgi_app_that_collapses_underscores_never_sees_a_spoofed_user() {
    let wsgi = Wsgi::start().await;
    let server = format!("127.0.0.1:{}", wsgi.port);
    for listen in ["", "drop_underscore_headers = false"] {
        let proxy = TestProxy::builder()
            .config(config(&server))
            .listen(listen)
            .start()
            .await;
        for client in [proxy.client_h1(), proxy.client()] {
            for path in ["/", "/plain"] {
                let body = client
                    .get(proxy.url(path))
                    .header("X_Session_User", "mallory")
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                assert_eq!(body, "user=\n", "{listen:?} {path}");
            }
        }
    }
}
