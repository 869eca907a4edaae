//! Tunnels: WebSocket and other upgrades, spliced between the client and the upstream.
//!
//! Two ways in, one way out to the HTTP/1.1 upstream:
//! - HTTP/1.1 `Upgrade` (`Connection: upgrade`): the upstream's `101` goes to the
//!   client as it is;
//! - HTTP/2 extended CONNECT (RFC 8441, `:protocol = websocket`): sent upstream as
//!   `GET` with `Upgrade: websocket` and a fresh `Sec-WebSocket-Key`; the upstream's
//!   `101` is checked against that key and becomes the client's `200`.
//!
//! Once both sides are upgraded, [`splice`] copies bytes both ways until a side closes,
//! an error, `timeouts.tunnel_idle` without a byte either way, or the end of the
//! shutdown grace. A tunnel keeps the connection's permit and open count (its
//! [`ConnCtx`] holds them) and a request-in-flight mark, so `header_read` and
//! `client_idle` never apply to it. One access-log line is written when it ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::access::{millis, AccessRecord};
use super::error::ProxyError;
use super::headers;
use crate::conn::{Busy, ConnCtx};
use crate::state::{AppState, Runtime};

/// How the client asked for a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// HTTP/1.x `Upgrade`: the upstream's `101` is the client's answer.
    Upgrade,
    /// HTTP/2 extended CONNECT (RFC 8441): the upstream's `101` becomes a `200`.
    ExtendedConnect,
}

/// The tunnel a request asks for, if any.
pub(crate) fn requested<B>(request: &Request<B>) -> Option<Kind> {
    if request.version() <= Version::HTTP_11 {
        return headers::wants_upgrade(request.headers()).then_some(Kind::Upgrade);
    }
    (request.method() == Method::CONNECT
        && request.extensions().get::<hyper::ext::Protocol>().is_some())
    .then_some(Kind::ExtendedConnect)
}

/// A tunnel asked for: the client's side of the upgrade, waiting for the upstream's
/// answer.
pub(crate) struct Pending {
    kind: Kind,
    client: OnUpgrade,
    /// The `Sec-WebSocket-Key` we sent upstream for an extended CONNECT.
    key: Option<HeaderValue>,
}

impl Pending {
    /// Takes the client's side of the upgrade out of `request`.
    pub(crate) fn take<B>(kind: Kind, request: &mut Request<B>) -> Pending {
        Pending {
            kind,
            client: hyper::upgrade::on(request),
            key: None,
        }
    }

    /// The upstream request head for the tunnel (after hop-by-hop headers were
    /// stripped, `Upgrade` kept): `Connection: upgrade`, and for an extended CONNECT
    /// `GET` with `Upgrade: <protocol>` and, for WebSockets, a fresh key.
    pub(crate) fn upstream_head(
        &mut self,
        parts: &mut http::request::Parts,
    ) -> Result<(), ProxyError> {
        if self.kind == Kind::ExtendedConnect {
            let protocol = parts
                .extensions
                .remove::<hyper::ext::Protocol>()
                .ok_or(ProxyError::Internal("extended CONNECT without :protocol"))?;
            let upgrade = HeaderValue::from_str(protocol.as_str())
                .map_err(|_| ProxyError::BadRequest("bad :protocol"))?;
            if protocol.as_str().eq_ignore_ascii_case("websocket") {
                let nonce = crate::session::random_bytes::<16>()
                    .map_err(|_| ProxyError::Internal("the OS random generator failed"))?;
                let key = HeaderValue::from_str(&STANDARD.encode(nonce))
                    .map_err(|_| ProxyError::Internal("base64 is a valid header value"))?;
                parts.headers.insert(SEC_WEBSOCKET_KEY, key.clone());
                self.key = Some(key);
            }
            parts.method = Method::GET;
            parts.headers.insert(header::UPGRADE, upgrade);
        }
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(())
    }

    /// Whether the upstream's answer (status `status`) is one the client may see. A
    /// `2xx` other than `101` to an extended CONNECT would tell an HTTP/2 client its
    /// tunnel is open while nothing listens: refused.
    pub(crate) fn check_refusal(&self, status: StatusCode) -> Result<(), ProxyError> {
        if self.kind == Kind::ExtendedConnect && status.is_success() {
            return Err(ProxyError::BadUpgrade("a 2xx answer without 101"));
        }
        Ok(())
    }

    /// The upstream switched protocols: turn its `101` into the client's answer and
    /// start the splice. `Err` when the `101` is not a valid answer to our key.
    pub(crate) fn open<B>(
        self,
        response: &mut Response<B>,
        state: &Arc<AppState>,
        rt: &Runtime,
        conn: &Arc<ConnCtx>,
        log: &AccessRecord,
    ) -> Result<(), ProxyError> {
        let upstream = hyper::upgrade::on(&mut *response);
        let headers = response.headers_mut();
        if let Some(key) = &self.key {
            let accept = headers
                .get(SEC_WEBSOCKET_ACCEPT)
                .ok_or(ProxyError::BadUpgrade("no Sec-WebSocket-Accept"))?;
            if accept.as_bytes() != accept_for(key).as_bytes() {
                return Err(ProxyError::BadUpgrade("wrong Sec-WebSocket-Accept"));
            }
        }
        match self.kind {
            Kind::Upgrade => {
                headers::strip_hop_by_hop(headers, true);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            Kind::ExtendedConnect => {
                headers::strip_hop_by_hop(headers, false);
                headers.remove(SEC_WEBSOCKET_ACCEPT);
                *response.status_mut() = StatusCode::OK;
            }
        }
        let ends = Ends {
            state: state.clone(),
            conn: conn.clone(),
            // Marks a request in flight on the client connection until the tunnel
            // ends: its `header_read` and `client_idle` deadlines stop applying.
            busy: conn.activity.begin(),
            idle: rt.config.timeouts.tunnel_idle,
            log: rt.config.log.access.then(|| AccessFields::of(rt, log)),
        };
        tokio::spawn(splice(self.client, upstream, ends));
        Ok(())
    }
}

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn accept_for(key: &HeaderValue) -> String {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    STANDARD.encode(digest.as_ref())
}

/// What a running tunnel holds besides its two connections.
struct Ends {
    state: Arc<AppState>,
    /// The client connection's context: its permit, open count and cut signal.
    conn: Arc<ConnCtx>,
    busy: Busy,
    idle: Duration,
    /// The access-log fields, when the access log is on.
    log: Option<AccessFields>,
}

/// The request's access-log fields, for the tunnel's closing line.
struct AccessFields {
    request_id: Option<HeaderValue>,
    route: Option<Arc<str>>,
    backend: Option<Arc<str>>,
    session: Option<String>,
    user: Option<String>,
}

impl AccessFields {
    fn of(rt: &Runtime, log: &AccessRecord) -> AccessFields {
        AccessFields {
            request_id: log.request_id.clone(),
            route: log.route.and_then(|i| rt.route_names.get(i)).cloned(),
            backend: log.backend.clone(),
            session: log.session.map(|id| id.encode()),
            user: log
                .identity
                .as_ref()
                .and_then(|i| i.user.as_deref())
                .map(str::to_owned),
        }
    }
}

/// Why a tunnel ended, as the access log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClosedBy {
    Client,
    Upstream,
    ClientError,
    UpstreamError,
    Idle,
    Shutdown,
}

impl ClosedBy {
    fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::ClientError => "client_error",
            ClosedBy::UpstreamError => "upstream_error",
            ClosedBy::Idle => "idle",
            ClosedBy::Shutdown => "shutdown",
        }
    }
}

/// A direction of the copy failed: reading its source, or writing its sink.
enum Fault {
    Read,
    Write,
}

/// Bytes copied per read: tokio's `copy_bidirectional` uses the same.
const PUMP_BUFFER: usize = 8 * 1024;

/// Copies `from` into `to` until `from` ends (then half-closes `to`), counting bytes.
async fn pump<R, W>(mut from: R, mut to: W, moved: &AtomicU64) -> Result<(), Fault>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; PUMP_BUFFER];
    loop {
        let n = from.read(&mut buffer).await.map_err(|_| Fault::Read)?;
        if n == 0 {
            // A failed half-close is the peer already gone: the other way ends too.
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = buffer.get(..n).ok_or(Fault::Read)?;
        to.write_all(chunk).await.map_err(|_| Fault::Write)?;
        to.flush().await.map_err(|_| Fault::Write)?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How often a tunnel looks for traffic: an eighth of `tunnel_idle`, so a quiet tunnel
/// is closed within 1/8 of its nominal idle time (a timer wake-up per tunnel every 7.5
/// minutes at the default 1 h).
fn idle_step(idle: Duration) -> Duration {
    (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(450))
}

/// Waits for both upgrades, then copies both ways until the tunnel ends; logs its end.
async fn splice(client: OnUpgrade, upstream: OnUpgrade, ends: Ends) {
    let gauge = ends.state.metrics.tunnels_open.clone();
    gauge.inc();
    let started = Instant::now();
    let cut = ends.conn.hold.cut.clone();
    let upgraded = tokio::select! {
        pair = async { tokio::try_join!(client, upstream) } => pair,
        () = cut.wait() => {
            gauge.dec();
            return;
        }
    };
    let (client, upstream) = match upgraded {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            gauge.dec();
            return;
        }
    };
    let (client_rx, client_tx) = tokio::io::split(TokioIo::new(client));
    let (upstream_rx, upstream_tx) = tokio::io::split(TokioIo::new(upstream));
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let mut to_upstream = std::pin::pin!(pump(client_rx, upstream_tx, &sent));
    let mut to_client = std::pin::pin!(pump(upstream_rx, client_tx, &received));
    let step = idle_step(ends.idle);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    let (mut seen, mut quiet) = (0u64, Duration::ZERO);
    let (mut up_done, mut down_done) = (false, false);
    let mut first_close = None;
    let closed_by = loop {
        tokio::select! {
            done = &mut to_upstream, if !up_done => match done {
                Ok(()) => {
                    up_done = true;
                    let first = *first_close.get_or_insert(ClosedBy::Client);
                    if down_done {
                        break first;
                    }
                }
                Err(Fault::Read) => break ClosedBy::ClientError,
                Err(Fault::Write) => break ClosedBy::UpstreamError,
            },
            done = &mut to_client, if !down_done => match done {
                Ok(()) => {
                    down_done = true;
                    let first = *first_close.get_or_insert(ClosedBy::Upstream);
                    if up_done {
                        break first;
                    }
                }
                Err(Fault::Read) => break ClosedBy::UpstreamError,
                Err(Fault::Write) => break ClosedBy::ClientError,
            },
            _ = tick.tick() => {
                let total = sent.load(Ordering::Relaxed) + received.load(Ordering::Relaxed);
                if total == seen {
                    quiet += step;
                    if quiet >= ends.idle {
                        break ClosedBy::Idle;
                    }
                } else {
                    seen = total;
                    quiet = Duration::ZERO;
                }
            }
            () = cut.wait() => break ClosedBy::Shutdown,
        }
    };
    gauge.dec();
    let Some(fields) = &ends.log else {
        return;
    };
    tracing::info!(
        target: "cloakroom::access",
        request_id = fields.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        peer = %ends.conn.peer.ip(),
        kind = "tunnel",
        route = fields.route.as_deref().unwrap_or("-"),
        backend = fields.backend.as_deref().unwrap_or("-"),
        session = fields.session.as_deref().unwrap_or("-"),
        user = fields.user.as_deref().unwrap_or("-"),
        bytes_in = sent.load(Ordering::Relaxed),
        bytes_out = received.load(Ordering::Relaxed),
        elapsed_ms = millis(started.elapsed()),
        closed_by = closed_by.as_str(),
    );
    drop(ends.busy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc6455_example() {
        // RFC 6455 §1.3.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_for(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn idle_step_is_bounded() {
        assert_eq!(
            idle_step(Duration::from_secs(3600)),
            Duration::from_secs(450)
        );
        assert_eq!(
            idle_step(Duration::from_secs(1)),
            Duration::from_millis(125)
        );
        assert_eq!(idle_step(Duration::ZERO), Duration::from_millis(10));
    }
}
