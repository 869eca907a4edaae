//! Every way a request can fail, and the one place that maps failures to status codes.
//!
//! `ProxyError::status` is an exhaustive match without a wildcard arm, pinned by a table
//! test. Bodies are short and static; the details go to the log at a level chosen by
//! whose fault it was (client `debug`, upstream `warn`, our bug `error`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ResponseBody;
use crate::upstream::UpstreamError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed (no Host, bad header value, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The Host names a site whose certificate differs from the one the TLS SNI chose.
    #[error("host does not match the TLS server name")]
    Misdirected,
    /// No route matches host and path.
    #[error("no route")]
    NoRoute,
    /// `Content-Length` or the streamed body exceeds `limits.max_body_bytes`.
    #[error("request body over {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request head exceeds `limits.max_header_bytes` (HTTP/2; hyper answers HTTP/1).
    #[error("request head over {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// A cross-site unsafe request on a CSRF-protected route.
    #[error("cross-site request refused")]
    CrossSite,
    /// Every server of the upstream is down.
    #[error("no healthy server in upstream {upstream}")]
    NoHealthyUpstream { upstream: String },
    /// The pinned server is down and the upstream says `on_pinned_down = "fail"`.
    #[error("pinned server of upstream {upstream} is down")]
    PinnedDown { upstream: String },
    /// The session store did not answer in time or failed.
    #[error("session store unavailable: {0}")]
    Store(#[source] crate::session::StoreError),
    /// The OS random generator failed (a new session's id could not be drawn).
    #[error(transparent)]
    Random(#[from] crate::random::RandomError),
    /// The upstream exchange failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream answered an upgrade with `101` but not as the protocol demands
    /// (a WebSocket `Sec-WebSocket-Accept` that does not match the key we sent).
    #[error("the upstream's upgrade answer is invalid: {0}")]
    BadUpgrade(&'static str),
    /// A bug of ours; details in the log.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Over a rate limit (`limits.per_ip`, `per_session`, `new_sessions_per_ip`).
    #[error("over {}", .0.limit.key())]
    RateLimited(crate::rate_limit::Refusal),
}

/// Whose fault a failure is, for the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Proxy,
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::CrossSite => StatusCode::FORBIDDEN,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::PinnedDown { .. }
            | ProxyError::Store(_)
            | ProxyError::Random(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(e) => match e {
                UpstreamError::Connect { .. }
                | UpstreamError::Handshake { .. }
                | UpstreamError::Exchange { .. }
                | UpstreamError::Closed { .. } => StatusCode::BAD_GATEWAY,
                UpstreamError::ConnectTimeout { .. } | UpstreamError::Timeout { .. } => {
                    StatusCode::GATEWAY_TIMEOUT
                }
            },
            ProxyError::BadUpgrade(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Why the proxy itself refused the request (the `reason` label of
    /// `cloakroom_refused_total`), or `None` for failures that are not refusals.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            ProxyError::CrossSite => Some("csrf"),
            ProxyError::RateLimited(_) => Some("rate_limit"),
            ProxyError::BadRequest(_) => Some("bad_request"),
            ProxyError::BodyTooLarge { .. } => Some("body_too_large"),
            ProxyError::HeadersTooLarge { .. } => Some("headers_too_large"),
            ProxyError::Misdirected => Some("misdirected"),
            ProxyError::NoRoute => Some("no_route"),
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::PinnedDown { .. }
            | ProxyError::Store(_)
            | ProxyError::Random(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgrade(_)
            | ProxyError::Internal(_) => None,
        }
    }

    /// The kind of failure, as the access line's `error` field names it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Misdirected => "misdirected",
            ProxyError::NoRoute => "no_route",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::CrossSite => "csrf",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::PinnedDown { .. } => "pinned_down",
            ProxyError::Store(_) => "store",
            ProxyError::Upstream(e) => match e {
                UpstreamError::Connect { .. } => "upstream_connect",
                UpstreamError::ConnectTimeout { .. } => "upstream_connect_timeout",
                UpstreamError::Handshake { .. } => "upstream_handshake",
                UpstreamError::Exchange { .. } => "upstream_exchange",
                UpstreamError::Closed { .. } => "upstream_closed",
                UpstreamError::Timeout { .. } => "upstream_timeout",
            },
            ProxyError::BadUpgrade(_) => "bad_upgrade",
            ProxyError::Random(_) => "random",
            ProxyError::Internal(_) => "internal",
            ProxyError::RateLimited(_) => "rate_limit",
        }
    }

    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::Misdirected
            | ProxyError::NoRoute
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::CrossSite
            | ProxyError::RateLimited(_) => Blame::Client,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::PinnedDown { .. }
            | ProxyError::Store(_)
            | ProxyError::Upstream(_)
            | ProxyError::BadUpgrade(_) => Blame::Upstream,
            ProxyError::Internal(_) | ProxyError::Random(_) => Blame::Proxy,
        }
    }

    /// The short static body.
    fn body(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "400 bad request\n",
            StatusCode::FORBIDDEN => "403 cross-site request refused\n",
            StatusCode::NOT_FOUND => "404 no route for this host and path\n",
            StatusCode::PAYLOAD_TOO_LARGE => "413 request body too large\n",
            StatusCode::MISDIRECTED_REQUEST => "421 misdirected request\n",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "431 request header too large\n",
            StatusCode::BAD_GATEWAY => "502 upstream unavailable\n",
            StatusCode::SERVICE_UNAVAILABLE => "503 service unavailable, retry shortly\n",
            StatusCode::GATEWAY_TIMEOUT => "504 upstream timed out\n",
            StatusCode::TOO_MANY_REQUESTS => "429 too many requests, retry later\n",
            _ => "500 internal error\n",
        }
    }

    /// The response the client receives.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::Full(Some(Bytes::from_static(
            self.body().as_bytes(),
        ))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let ProxyError::RateLimited(refusal) = self {
            // Whole seconds, rounded up: a client that waits this long gets through.
            let millis = refusal.retry_after.as_millis();
            let seconds = millis.div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn status_table() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let table: Vec<(ProxyError, u16)> = vec![
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::Misdirected, 421),
            (ProxyError::NoRoute, 404),
            (ProxyError::BodyTooLarge { limit: 1 }, 413),
            (ProxyError::HeadersTooLarge { limit: 1 }, 431),
            (ProxyError::CrossSite, 403),
            (
                ProxyError::NoHealthyUpstream {
                    upstream: "a".into(),
                },
                503,
            ),
            (
                ProxyError::PinnedDown {
                    upstream: "a".into(),
                },
                503,
            ),
            (ProxyError::Store(crate::session::StoreError::Timeout), 503),
            (ProxyError::Random(crate::random::RandomError), 503),
            (UpstreamError::Connect { addr, source: io() }.into(), 502),
            (
                UpstreamError::ConnectTimeout {
                    addr,
                    after: Duration::from_secs(1),
                }
                .into(),
                504,
            ),
            (
                UpstreamError::Timeout {
                    addr,
                    after: Duration::from_secs(1),
                }
                .into(),
                504,
            ),
            (UpstreamError::Closed { addr }.into(), 502),
            (ProxyError::Internal("bug"), 500),
            (ProxyError::BadUpgrade("accept"), 502),
            (
                ProxyError::RateLimited(crate::rate_limit::Refusal {
                    limit: crate::rate_limit::Limit::PerIp,
                    retry_after: Duration::from_millis(1500),
                }),
                429,
            ),
        ];
        for (error, status) in table {
            assert_eq!(error.status().as_u16(), status, "{error}");
            let response = error.to_response();
            assert_eq!(response.status().as_u16(), status);
            if status == 429 {
                assert_eq!(response.headers()["retry-after"], "2");
            }
        }
    }

    #[test]
    fn a_refusal_is_named_by_its_kind_and_upstream_failures_apart() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let after = Duration::from_secs(1);
        let upstream: Vec<ProxyError> = vec![
            UpstreamError::Connect { addr, source: io() }.into(),
            UpstreamError::ConnectTimeout { addr, after }.into(),
            UpstreamError::Timeout { addr, after }.into(),
            UpstreamError::Closed { addr }.into(),
        ];
        let kinds: Vec<&str> = upstream.iter().map(ProxyError::kind).collect();
        assert_eq!(
            kinds,
            [
                "upstream_connect",
                "upstream_connect_timeout",
                "upstream_timeout",
                "upstream_closed"
            ]
        );
        // The access line's `refused` and the metric's `reason` agree with the kind.
        for error in [
            ProxyError::CrossSite,
            ProxyError::NoRoute,
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::BadRequest("x"),
        ] {
            assert_eq!(error.refusal(), Some(error.kind()), "{error}");
        }
        assert_eq!(
            ProxyError::Store(crate::session::StoreError::Timeout).refusal(),
            None
        );
    }
}
