//! A scripted upstream ([`App`]) and the client helpers the session tests share.
//!
//! [`App`] is a plain HTTP/1.1 upstream driven by request headers: `x-reply: Name: value`
//! (repeatable) makes it answer with that response header, `x-reply-status: N` with
//! that status, and its body lists every request header it received (`name: value`
//! lines), so a client can see what the upstream saw even when requests run
//! concurrently. [`Reply`] reads that listing and the proxy's `Set-Cookie`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Recorded, TestProxy};

/// The default cookie name.
pub const COOKIE: &str = "__Host-cloakroom";

// ---------------------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------------------

/// A plain HTTP/1.1 upstream scripted by request headers (see the module docs).
pub struct App {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    accept: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let shared = recorded.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| app_handle(request, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            recorded,
            accept,
        }
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn count(&self) -> usize {
        self.recorded.lock().unwrap().len()
    }

    pub fn last(&self) -> Recorded {
        self.recorded
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }
}

pub async fn app_handle(
    request: hyper::Request<Incoming>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    recorded.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    let mut listing = String::new();
    for (name, value) in &parts.headers {
        listing.push_str(name.as_str());
        listing.push_str(": ");
        listing.push_str(&String::from_utf8_lossy(value.as_bytes()));
        listing.push('\n');
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(listing)));
    if let Some(status) = parts
        .headers
        .get("x-reply-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
    {
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    }
    for reply in parts.headers.get_all("x-reply") {
        let text = reply.to_str().unwrap();
        let (name, value) = text.split_once(':').expect("x-reply: Name: value");
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Config and client helpers
// ---------------------------------------------------------------------------------------

/// One upstream `app` at `server`, `[session]` with `session` keys, one `/` route with
/// `route` keys, then `extra` (more sections or routes).
pub fn config(server: &str, session: &str, route: &str, extra: &str) -> String {
    format!(
        r#"
[session]
{session}

[upstreams.app]
servers = ["{server}"]

[[routes]]
path = "/"
upstream = "app"
{route}

{extra}
"#
    )
}

pub async fn start(config: String) -> TestProxy {
    TestProxy::builder().config(config).start().await
}

/// A proxy with default sessions in front of a fresh [`App`].
pub async fn default_proxy() -> (App, TestProxy) {
    let app = App::start().await;
    let proxy = start(config(&app.server(), "", "", "")).await;
    (app, proxy)
}

/// What the client got back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// Every value of request header `name` the upstream received (from the listing).
    pub fn seen(&self, name: &str) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
            .collect()
    }

    /// The single value of request header `name` the upstream received.
    pub fn seen_one(&self, name: &str) -> Option<String> {
        let all = self.seen(name);
        assert!(
            all.len() <= 1,
            "upstream saw {name} {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// The public id the upstream received; panics without one.
    pub fn id(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.body);
        self.seen_one("x-session-id")
            .expect("the upstream received no X-Session-Id")
    }

    pub fn user(&self) -> Option<String> {
        self.seen_one("x-session-user")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The `Set-Cookie` for our cookie, if any (at most one).
    pub fn our_set_cookie(&self) -> Option<String> {
        let ours: Vec<String> = self
            .set_cookies()
            .into_iter()
            .filter(|c| c.starts_with(&format!("{COOKIE}=")))
            .collect();
        assert!(ours.len() <= 1, "several Set-Cookie for {COOKIE}: {ours:?}");
        ours.into_iter().next()
    }

    /// The new value of our cookie; panics when the response sets none (or expires it).
    pub fn cookie(&self) -> String {
        let set = self
            .our_set_cookie()
            .unwrap_or_else(|| panic!("no Set-Cookie for {COOKIE}: {:?}", self.headers));
        let (name, value, _) = parse_set_cookie(&set);
        assert_eq!(name, COOKIE);
        assert!(!value.is_empty(), "cookie was expired, not set: {set}");
        value
    }
}

/// `name=value; Attr; Attr=x` → (name, value, [(lower-case attr, value)]).
pub fn parse_set_cookie(text: &str) -> (String, String, Vec<(String, Option<String>)>) {
    let mut parts = text.split(';').map(str::trim);
    let (name, value) = parts.next().unwrap().split_once('=').unwrap();
    let attributes = parts
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().to_string())),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect();
    (name.to_string(), value.to_string(), attributes)
}

pub fn attribute(attributes: &[(String, Option<String>)], name: &str) -> Option<Option<String>> {
    attributes
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Sends one request; `cookie` is the value of our cookie (sent as the only cookie).
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = client.request(method, url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

pub async fn get(proxy: &TestProxy, path: &str, cookie: Option<&str>) -> Reply {
    send(&proxy.client(), Method::GET, &proxy.url(path), cookie, &[]).await
}

/// A new anonymous session: (cookie value, public id).
pub async fn new_session(proxy: &TestProxy) -> (String, String) {
    let reply = get(proxy, "/", None).await;
    (reply.cookie(), reply.id())
}

/// Logs the session of `cookie` in as `user` (with `roles`); returns the new cookie.
pub async fn login(proxy: &TestProxy, cookie: Option<&str>, user: &str, roles: &str) -> Reply {
    let user_reply = format!("X-Session-Set-User: {user}");
    let roles_reply = format!("X-Session-Set-Roles: {roles}");
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/login"),
        cookie,
        &[("x-reply", &user_reply), ("x-reply", &roles_reply)],
    )
    .await
}
