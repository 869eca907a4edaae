//! The shared harness of the integration tests: a per-run PKI ([`TestPki`]), the one
//! scriptable upstream server ([`MockUpstream`], see [`Mode`]), a proxy on ephemeral ports ([`TestProxy`]),
//! clients that trust only the test CA (reqwest, and raw TLS for byte-level tests), and
//! [`poll_until`] for waiting on a state instead of sleeping.
//!
//! Nothing here uses fixed ports or the repository's `certs/`.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

pub mod config;
pub mod memcached;
pub mod ports;
pub mod postgres;
pub mod redis;
pub mod scripted;
pub mod sentinel;
pub mod session_app;
pub mod stores;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[allow(unused_imports)]
pub use config::{ProxyConfig, Route};
#[allow(unused_imports)]
pub use ports::refused_addr;

/// Generous deadline for anything that "should happen soon" on a loaded machine.
pub const SOON: Duration = Duration::from_secs(20);

/// Hostnames every default leaf certificate covers (tests resolve them to the proxy).
pub const TEST_HOSTS: [&str; 5] = [
    "localhost",
    "app.test",
    "other.test",
    "a.wild.test",
    "b.wild.test",
];

/// Installs a log subscriber once per test binary (`RUST_LOG=cloakroom=debug` to see more).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Waits until `check` returns true, polling every 25 ms; panics after `within`.
pub async fn poll_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so large bodies are not trivially repetitive.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------

/// A certificate and its key, PEM-encoded, plus the DER to compare against what a TLS
/// client sees.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

/// A throwaway CA made for one test run.
pub struct TestPki {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    serial: AtomicU64,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "cloakroom test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = params.self_signed(&ca_key).expect("CA cert");
        TestPki {
            ca_cert,
            ca_key,
            serial: AtomicU64::new(1000),
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_cert.der().clone()
    }

    /// A leaf for `names` with common name `cn` and a fresh serial, signed by the CA.
    pub fn issue(&self, names: &[&str], cn: &str) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(
            self.serial.fetch_add(1, Ordering::Relaxed),
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }

    /// The default leaf: every name in [`TEST_HOSTS`] plus 127.0.0.1.
    pub fn default_leaf(&self, cn: &str) -> Leaf {
        let mut names: Vec<&str> = TEST_HOSTS.to_vec();
        names.push("127.0.0.1");
        self.issue(&names, cn)
    }

    /// A rustls client config that trusts only this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("add CA root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Writes `leaf` as `cert.pem` and `key.pem` into `dir` (replacing what is there).
pub fn write_leaf(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).expect("write key.pem");
}

/// A whole `proxy.toml`: `[listen] https`, `[tls]` naming `cert.pem`/`key.pem` next to
/// the file, then `body` (upstreams, routes, timeouts, ...).
pub fn config_text(https: &str, body: &str) -> String {
    format!(
        "[listen]\nhttps = \"{https}\"\n\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n{body}\n"
    )
}

// ---------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// Every value of header `name`, as strings.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// The single value of header `name`; panics if there are several.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
}

/// What a mock upstream answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with its own name as the body (and `x-upstream: NAME`).
    Name,
    /// 200 with the request body as the body.
    Echo,
    /// 200 with this body.
    Body(Bytes),
    /// 200 announcing 100000 bytes, then 10 bytes, then the connection is cut.
    CloseMidResponse,
    /// 200 `text/event-stream` (chunked): `data: N` events `0..count`, one every `every`.
    Events { count: usize, every: Duration },
    /// Scripted by request headers (`scripted::App`): `x-reply: Name: value`
    /// (repeatable) answers with that response header, `x-reply-status: N` with that
    /// status; the body lists every request header received (`name: value` lines).
    Scripted,
    /// Drives sessions by path (`session_app::App`): `/login?user=NAME`, `/logout`,
    /// `/logout-everywhere`, `/healthz` (200, or 503 after `set_healthy(false)`);
    /// the body is the `X-Session-User` received (or `anon`).
    Sessions,
}

struct Behaviour {
    mode: Mode,
    delay: Duration,
    headers: Vec<(String, String)>,
}

struct Shared {
    name: String,
    /// What `/healthz` answers in [`Mode::Sessions`].
    healthy: Arc<AtomicBool>,
    behaviour: Mutex<Behaviour>,
    recorded: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
}

type MockBody = BoxBody<Bytes, io::Error>;

/// A plain HTTP/1.1 upstream on `127.0.0.1:0` that records every request.
/// Requests with `Upgrade` get `101` and their upgraded bytes echoed back.
pub struct MockUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MockUpstream {
    /// Starts an upstream answering [`Mode::Name`].
    pub async fn start(name: &str) -> MockUpstream {
        Self::start_with(name, Mode::Name).await
    }

    /// Starts an upstream answering `mode`.
    pub async fn start_with(name: &str, mode: Mode) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            healthy: Arc::new(AtomicBool::new(true)),
            behaviour: Mutex::new(Behaviour {
                mode,
                delay: Duration::ZERO,
                headers: Vec::new(),
            }),
            recorded: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        MockUpstream {
            addr,
            shared,
            accept,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// `"127.0.0.1:PORT"` for a `servers = [...]` entry.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.behaviour.lock().unwrap().mode = mode;
    }

    /// Wait this long (after reading the request) before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.behaviour.lock().unwrap().delay = delay;
    }

    /// Adds a response header to every answer.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.shared
            .behaviour
            .lock()
            .unwrap()
            .headers
            .push((name.to_string(), value.to_string()));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.recorded.lock().unwrap().len()
    }

    /// The most recent request; panics when there is none.
    pub fn last_request(&self) -> Recorded {
        self.shared
            .recorded
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }

    /// What `/healthz` answers in [`Mode::Sessions`]: 200, or 503 when not `healthy`.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The switch behind [`MockUpstream::set_healthy`], shared.
    pub fn health_switch(&self) -> Arc<AtomicBool> {
        self.shared.healthy.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| mock_handle(request, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn full(body: impl Into<Bytes>) -> MockBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn mock_handle(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<MockBody>, Infallible> {
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let body = if upgrade {
        Bytes::new()
    } else {
        match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                // The proxy gave up on the body (e.g. a size limit): record nothing.
                let mut response = Response::new(full("body error"));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(response);
            }
        }
    };
    shared.recorded.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let (mode, delay, extra) = {
        let behaviour = shared.behaviour.lock().unwrap();
        (
            behaviour.mode.clone(),
            behaviour.delay,
            behaviour.headers.clone(),
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = TokioIo::new(upgraded);
                let (mut read, mut write) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut read, &mut write).await;
            }
        });
        let protocol = parts
            .headers
            .get(http::header::UPGRADE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("websocket"));
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(http::header::UPGRADE, protocol);
        response.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        return Ok(response);
    }

    let mut response = match mode {
        Mode::Scripted => return Ok(scripted_response(&parts.headers)),
        Mode::Sessions => {
            return Ok(sessions_response(
                &parts,
                shared.healthy.load(Ordering::Relaxed),
            ))
        }
        Mode::Name => Response::new(full(shared.name.clone())),
        Mode::Echo => Response::new(full(body)),
        Mode::Body(bytes) => Response::new(full(bytes)),
        Mode::CloseMidResponse => {
            let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![
                Ok(Frame::data(Bytes::from_static(b"0123456789"))),
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut")),
            ];
            let stream = futures_util::stream::iter(frames);
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from_static("100000"),
            );
            response
        }
        Mode::Events { count, every } => {
            let stream = futures_util::stream::unfold(0usize, move |n| async move {
                if n == count {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(every).await;
                }
                let event = Bytes::from(format!("data: {n}\n\n"));
                Some((Ok::<_, io::Error>(Frame::data(event)), n + 1))
            });
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            response
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-upstream",
        HeaderValue::from_str(&shared.name).expect("name is a header value"),
    );
    for (name, value) in extra {
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(&value).expect("header value"),
        );
    }
    Ok(response)
}

/// The answer of [`Mode::Scripted`] to a request with `headers`.
fn scripted_response(headers: &HeaderMap) -> Response<MockBody> {
    let mut listing = String::new();
    for (name, value) in headers {
        listing.push_str(name.as_str());
        listing.push_str(": ");
        listing.push_str(&String::from_utf8_lossy(value.as_bytes()));
        listing.push('\n');
    }
    let mut response = Response::new(full(listing));
    if let Some(status) = headers
        .get("x-reply-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
    {
        *response.status_mut() = StatusCode::from_u16(status).expect("x-reply-status: a status");
    }
    for reply in headers.get_all("x-reply") {
        let text = reply.to_str().expect("x-reply is text");
        let (name, value) = text.split_once(':').expect("x-reply: Name: value");
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).expect("x-reply header name"),
            HeaderValue::from_str(value.trim()).expect("x-reply header value"),
        );
    }
    response
}

/// The answer of [`Mode::Sessions`] to a request.
fn sessions_response(parts: &http::request::Parts, healthy: bool) -> Response<MockBody> {
    let query = parts.uri.query().unwrap_or("");
    let user = parts
        .headers
        .get("x-session-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anon")
        .to_string();
    let mut response = Response::new(full(user));
    let headers = response.headers_mut();
    match parts.uri.path() {
        "/login" => {
            let name = query.strip_prefix("user=").unwrap_or("someone");
            headers.insert(
                "x-session-set-user",
                HeaderValue::from_str(name).expect("user name"),
            );
        }
        "/logout" => {
            headers.insert("x-session-logout", HeaderValue::from_static("1"));
        }
        "/logout-everywhere" => {
            headers.insert("x-session-logout", HeaderValue::from_static("everywhere"));
        }
        "/healthz" if !healthy => {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        _ => {}
    }
    response
}

// ---------------------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------------------

/// Builds a [`TestProxy`].
pub struct TestProxyBuilder {
    body: String,
    http_listener: bool,
    admin_listener: bool,
    listen: String,
    clock: cloakroom::clock::Clock,
}

impl TestProxyBuilder {
    /// The config after `[listen]` and `[tls]` (upstreams, routes, timeouts, limits...).
    pub fn config(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// More `[listen]` keys (e.g. `trusted_proxies = [...]`), written in that table.
    pub fn listen(mut self, keys: impl Into<String>) -> Self {
        self.listen = keys.into();
        self
    }

    /// Session time comes from a manual clock the test moves with
    /// [`TestProxy::advance`] instead of sleeping (it starts at the system time).
    pub fn manual_clock(mut self) -> Self {
        self.clock = cloakroom::clock::Clock::manual();
        self
    }

    /// Also bind the plain-HTTP (308) listener.
    pub fn http_listener(mut self) -> Self {
        self.http_listener = true;
        self
    }

    /// Also bind the admin listener (its address goes into `[listen] admin`, so
    /// metrics are counted).
    pub fn admin_listener(mut self) -> Self {
        self.admin_listener = true;
        self
    }

    /// Writes the files, loads them like the binary does, binds `127.0.0.1:0` and runs
    /// the proxy in a task.
    pub async fn start(self) -> TestProxy {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Arc::new(TestPki::new());
        let leaf = pki.default_leaf("cloakroom test leaf");
        write_leaf(dir.path(), &leaf);
        let config_path = dir.path().join("proxy.toml");
        let (admin, admin_addr) = if self.admin_listener {
            let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
            let addr = admin.local_addr().expect("admin addr");
            (Some(admin), Some(addr))
        } else {
            (None, None)
        };
        let text = match admin_addr {
            Some(addr) => config_text("127.0.0.1:0", &self.body).replacen(
                "[listen]\n",
                &format!("[listen]\nadmin = \"{addr}\"\n"),
                1,
            ),
            None => config_text("127.0.0.1:0", &self.body),
        };
        let text = text.replacen("\n\n[tls]", &format!("\n{}\n\n[tls]", self.listen), 1);
        std::fs::write(&config_path, text).expect("write proxy.toml");
        let (config, certs) = cloakroom::state::load_with_certs(&config_path)
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}"));

        let https = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        let https_addr = https.local_addr().expect("https addr");
        let (http, http_addr) = if self.http_listener {
            let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
            let addr = http.local_addr().expect("http addr");
            (Some(http), Some(addr))
        } else {
            (None, None)
        };
        let listeners = cloakroom::Listeners { https, http, admin };
        let (handle, commands) = cloakroom::control_with_clock(self.clock.clone());
        let join = tokio::spawn(cloakroom::run(config, certs, listeners, commands));
        TestProxy {
            clock: self.clock,
            https_addr,
            http_addr,
            admin_addr,
            handle,
            join: Some(join),
            config_path,
            pki,
            leaf,
            dir,
        }
    }
}

/// A proxy running in this test's runtime. Dropping it shuts the proxy down.
pub struct TestProxy {
    pub https_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The admin listener, with [`TestProxyBuilder::admin_listener`].
    pub admin_addr: Option<SocketAddr>,
    pub handle: cloakroom::Handle,
    pub join: Option<JoinHandle<Result<(), cloakroom::RunError>>>,
    pub config_path: PathBuf,
    pub pki: Arc<TestPki>,
    /// The certificate the proxy started with.
    pub leaf: Leaf,
    pub dir: tempfile::TempDir,
    /// The clock the proxy reads session time from (see [`TestProxyBuilder::manual_clock`]).
    pub clock: cloakroom::clock::Clock,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.handle.shutdown();
        // Pass on a panic of the proxy task, unless the test is already failing.
        if let Some(join) = self.join.as_mut() {
            if join.is_finished() && !std::thread::panicking() {
                if let Some(Err(error)) = join.now_or_never() {
                    if error.is_panic() {
                        std::panic::resume_unwind(error.into_panic());
                    }
                }
            }
        }
    }
}

impl TestProxy {
    /// A proxy with one upstream `app` (`upstream`) on every path, without sessions.
    pub async fn in_front_of(upstream: &MockUpstream) -> TestProxy {
        TestProxy::in_front_of_with(upstream, "").await
    }

    /// Like [`TestProxy::in_front_of`], with `extra` TOML (e.g. a `[timeouts]` section)
    /// before the upstream.
    pub async fn in_front_of_with(upstream: &MockUpstream, extra: &str) -> TestProxy {
        TestProxy::builder()
            .config(
                ProxyConfig::new()
                    .prelude(extra)
                    .upstream("app", [upstream.server()])
                    .route(Route::new("/", "app").session(false)),
            )
            .start()
            .await
    }

    pub fn builder() -> TestProxyBuilder {
        TestProxyBuilder {
            body: String::new(),
            http_listener: false,
            admin_listener: false,
            listen: String::new(),
            clock: cloakroom::clock::Clock::system(),
        }
    }

    /// Moves the proxy's session clock forward by `by`, as if that much time had
    /// passed; panics unless the proxy was started with a manual clock.
    pub fn advance(&self, by: Duration) {
        let before = self.clock.now_ms();
        self.clock.advance(by);
        assert!(
            self.clock.now_ms() >= before + u64::try_from(by.as_millis()).unwrap(),
            "start the proxy with .manual_clock() to move its clock"
        );
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        self.url_for("localhost", path)
    }

    /// `https://{host}:PORT{path}`; `host` must be one of [`TEST_HOSTS`].
    pub fn url_for(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https_addr.port())
    }

    /// The client's `Host` for `localhost`: `localhost:PORT`.
    pub fn host(&self) -> String {
        format!("localhost:{}", self.https_addr.port())
    }

    /// A client that negotiates the protocol by ALPN (HTTP/2 with this proxy).
    pub fn client(&self) -> reqwest::Client {
        reqwest_client(&self.pki, self.https_addr, false)
    }

    /// A client that speaks only HTTP/1.1.
    pub fn client_h1(&self) -> reqwest::Client {
        reqwest_client(&self.pki, self.https_addr, true)
    }

    /// A raw TLS connection offering only `http/1.1`, SNI `localhost`.
    pub async fn raw(&self) -> RawConn {
        RawConn::connect(self.https_addr, "localhost", &self.pki, &[b"http/1.1"]).await
    }

    /// Rewrites `proxy.toml` with the same `[listen]`/`[tls]` and a new `body`.
    pub fn write_config(&self, body: &str) {
        let text = match self.admin_addr {
            Some(addr) => config_text("127.0.0.1:0", body).replacen(
                "[listen]\n",
                &format!("[listen]\nadmin = \"{addr}\"\n"),
                1,
            ),
            None => config_text("127.0.0.1:0", body),
        };
        std::fs::write(&self.config_path, text).expect("rewrite proxy.toml");
    }

    /// `http://ADMIN{path}`; panics without an admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self
            .admin_addr
            .expect("start the proxy with .admin_listener()");
        format!("http://{addr}{path}")
    }

    /// Writes raw text as `proxy.toml`.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("rewrite proxy.toml");
    }

    /// Waits (up to `within`) for `run` to return, and returns its result.
    pub async fn wait_stopped(&mut self, within: Duration) -> Result<(), cloakroom::RunError> {
        let join = self.join.take().expect("already waited");
        match tokio::time::timeout(within, join).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Ok(Err(error)) => panic!("proxy task failed: {error}"),
            Err(_) => panic!("the proxy did not stop within {within:?}"),
        }
    }
}

/// A reqwest client that trusts only `pki`'s CA, resolves every name in [`TEST_HOSTS`]
/// to `addr`'s IP (the URL carries the port), never follows redirects and keeps no
/// cookies. ALPN picks HTTP/2 unless `http1_only`.
pub fn reqwest_client(pki: &TestPki, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).expect("CA pem");
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60));
    for host in TEST_HOSTS {
        builder = builder.resolve(host, addr);
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TLS
// ---------------------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TLS client connection driven byte by byte.
pub struct RawConn {
    pub stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl RawConn {
    /// Sends a WebSocket upgrade request for `path` (`Host: host`), the RFC 6455 §1.3
    /// sample key.
    pub async fn send_upgrade(&mut self, host: &str, path: &str) -> io::Result<()> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        self.send(request.as_bytes()).await
    }

    /// Connects to `addr` with SNI `server_name`, trusting `pki`'s CA, offering `alpn`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        pki: &TestPki,
        alpn: &[&[u8]],
    ) -> RawConn {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        let connector = TlsConnector::from(pki.client_config(alpn));
        let name = ServerName::try_from(server_name.to_string()).expect("server name");
        let stream = tokio::time::timeout(SOON, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// The leaf certificate the server presented.
    pub fn peer_leaf(&self) -> CertificateDer<'static> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("server sent a certificate")
            .clone()
            .into_owned()
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends `GET path` with `Host: host`.
    pub async fn send_get(&mut self, host: &str, path: &str) -> io::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.send(request.as_bytes()).await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16384);
        self.stream.read_buf(&mut self.buf).await
    }

    async fn need(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-response",
                ));
            }
        }
        Ok(())
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-line",
                ));
            }
        }
    }

    /// Reads one response (head and body) within [`SOON`].
    pub async fn read_response(&mut self) -> io::Result<RawResponse> {
        match tokio::time::timeout(SOON, self.read_response_inner()).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no response within the deadline",
            )),
        }
    }

    async fn read_response_inner(&mut self) -> io::Result<RawResponse> {
        let status_line = self.line().await?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.line().await?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                        })?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line().await?.is_empty() {}
                    break;
                }
                self.need(size + 2).await?;
                response.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            self.need(length).await?;
            response.body = self.buf.drain(..length).collect();
        } else {
            while self.fill().await? > 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// Reads exactly `len` raw bytes (e.g. from an upgraded connection) within [`SOON`].
    pub async fn read_exact_raw(&mut self, len: usize) -> io::Result<Vec<u8>> {
        match tokio::time::timeout(SOON, self.need(len)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "bytes did not arrive in time",
                ))
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads until the server closes the connection (EOF or an error). Returns what was
    /// read and whether it ended within `within`.
    pub async fn read_until_closed(&mut self, within: Duration) -> (Vec<u8>, bool) {
        let closed = tokio::time::timeout(within, async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        (std::mem::take(&mut self.buf), closed)
    }
}
