//! The `logging` phase: what one request leaves for the access log ([`AccessRecord`]),
//! the warning for a failed request, the request metrics, and the access line.
//!
//! The record is written only for the log and the metrics; nothing here changes the
//! response (that is [`Extras`](super::pipeline::Extras)' job). The access line names
//! why the proxy answered itself: `refused` (`csrf`, `rate_limit`, `require_user`, …)
//! or `error` (`upstream_connect`, `store`, …), so a 502 or 503 line says why without
//! joining it to a warning. Never a cookie value or a secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, Uri};

use super::body::ResponseBody;
use super::error::{Blame, ProxyError};
use crate::conn::ConnCtx;
use crate::error_chain::display_chain;
use crate::log::limit::Cause;
use crate::session::{Identity, PublicId};
use crate::state::Runtime;

/// The access-log fields of one request, filled in by the phases as they learn them.
#[derive(Debug, Default)]
pub(crate) struct AccessRecord {
    /// Index into `config.routes`.
    pub(crate) route: Option<usize>,
    pub(crate) backend: Option<Arc<str>>,
    pub(crate) session: Option<PublicId>,
    /// `X-Request-Id` of this request (sent upstream, returned, logged).
    pub(crate) request_id: Option<HeaderValue>,
    /// The session's identity when the request arrived.
    pub(crate) identity: Option<Arc<Identity>>,
    /// Time from sending upstream to its response head (retries included).
    pub(crate) upstream_elapsed: Option<Duration>,
    /// Why the proxy refused the request (`require_user`, `csrf`, ...): the `reason`
    /// label of `cloakroom_refused_total` and the line's `refused` field.
    pub(crate) refused: Option<&'static str>,
    /// The kind of failure that was not a refusal (`upstream_connect`, `store`, ...).
    pub(crate) error: Option<&'static str>,
}

/// The request line's fields, kept only when the access log is on.
#[derive(Debug)]
pub(crate) struct RequestLine {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
}

impl RequestLine {
    /// The method, URI and `Host` of `request` when the access log is `on`.
    pub(crate) fn capture<B>(request: &Request<B>, on: bool) -> Option<RequestLine> {
        on.then(|| RequestLine {
            method: request.method().clone(),
            uri: request.uri().clone(),
            host: request.headers().get(http::header::HOST).cloned(),
        })
    }
}

impl AccessRecord {
    /// Records a failed request and logs it at the level its blame asks for (client
    /// `debug`, upstream `warn` rate-limited per cause, our bug `error`).
    pub(crate) fn failed(&mut self, error: &ProxyError, conn: &ConnCtx) {
        match error.blame() {
            Blame::Client => tracing::debug!(peer = %conn.peer, %error, "request refused"),
            Blame::Upstream => {
                // An outage fails every request: one line per route, server and kind of
                // failure per second.
                let cause =
                    Cause::of(&("upstream failure", self.route, &self.backend, error.kind()));
                if let Some(suppressed) = crate::log::limit::admit(cause) {
                    tracing::warn!(
                        route = self.route,
                        backend = self.backend.as_deref().unwrap_or("-"),
                        error = %display_chain(error),
                        suppressed,
                        "upstream failure"
                    );
                }
            }
            Blame::Proxy => tracing::error!(%error, "internal error"),
        }
        match error.refusal() {
            Some(reason) => self.refused = self.refused.or(Some(reason)),
            None => self.error = Some(error.kind()),
        }
    }
}

/// The `logging` phase: request metrics, then the access line (when `line` was
/// captured, i.e. `log.access` is on).
pub(crate) fn logging(
    rt: &Runtime,
    conn: &ConnCtx,
    record: &AccessRecord,
    line: Option<RequestLine>,
    response: &Response<ResponseBody>,
    started: Instant,
) {
    let status = response.status().as_u16();
    if let Some(metrics) = &rt.metrics {
        metrics.answered(record.route, status, started.elapsed());
        if let Some(reason) = record.refused {
            metrics.refused(record.route, reason);
        }
    }
    let Some(RequestLine { method, uri, host }) = line else {
        return;
    };
    tracing::info!(
        target: "cloakroom::access",
        request_id = record.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        peer = %conn.peer.ip(),
        %method,
        host = host.as_ref().and_then(|h| h.to_str().ok()).or(uri.host()).unwrap_or("-"),
        path = uri.path(),
        route = record.route.and_then(|i| rt.route_names.get(i)).map_or("-", |r| &**r),
        backend = record.backend.as_deref().unwrap_or("-"),
        session = record.session.map(|id| id.encode()).as_deref().unwrap_or("-"),
        user = record.identity.as_ref().and_then(|i| i.user.as_deref()).unwrap_or("-"),
        status,
        refused = record.refused.unwrap_or("-"),
        error = record.error.unwrap_or("-"),
        bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0),
        elapsed_ms = millis(started.elapsed()),
        upstream_ms = record.upstream_elapsed.map_or(0.0, millis),
    );
}

/// Milliseconds to the microsecond, as a number (JSON logs keep it numeric).
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}
