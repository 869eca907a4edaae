//! The client connection as the request path sees it: who is on the other end
//! ([`ConnCtx`]), whether a request is in flight ([`Activity`], [`Busy`]), what the
//! connection holds until it ends ([`ConnHold`]), and how its requests are numbered
//! ([`RequestIds`]).
//!
//! It sits below both the listener (which fills it in at accept) and the proxy (which
//! reads it per request), so neither imports the other for it. It does no IO.

mod request_id;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

pub(crate) use request_id::{RequestIds, X_REQUEST_ID};

use crate::shutdown::Signal;

/// What the proxy knows about a client connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) peer: SocketAddr,
    /// The peer's IP as a header value, for `X-Forwarded-For`.
    pub(crate) peer_value: http::HeaderValue,
    /// Lower-case TLS server name, when the client sent one.
    pub(crate) sni: Option<Box<str>>,
    pub(crate) activity: Arc<Activity>,
    /// The session cookie this connection last presented, already verified.
    pub(crate) cookies: crate::session::CookieCache,
    /// This connection's number, for generated request ids.
    pub(crate) conn_no: u64,
    /// Requests served on this connection so far, for generated request ids.
    pub(crate) requests: AtomicU64,
    /// The identity assertion last signed for this connection.
    pub(crate) assertions: crate::assertion::AssertionCache,
    /// The User-Agent fingerprint last computed for this connection.
    pub(crate) agents: crate::anomaly::AgentCache,
    /// The first 8 bytes of the public id of the session last flagged as used by
    /// another client on this connection (0: none), so a flagged session logs one
    /// warning per connection, not one per request.
    pub(crate) flagged: AtomicU64,
    /// The connection's permit, open count and cut signal (see [`ConnHold`]); a
    /// tunnel keeps the context, and so these, until it ends.
    pub(crate) hold: ConnHold,
}

/// Requests in flight on one client connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    started: AtomicU64,
}

impl Activity {
    /// Marks a request as in flight until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Requests in flight now (a tunnel counts as one until it ends).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests begun on the connection so far: a change means a request began.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a client connection holds from accept to its end: its `max_connections` permit,
/// its place in the open-connections count, and the signal that cuts it when the
/// shutdown grace is over. It lives in the connection's [`ConnCtx`], so a tunnel that
/// outlives hyper's connection (an HTTP/1.1 upgrade) keeps all three until it ends.
#[derive(Debug)]
pub(crate) struct ConnHold {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: OpenGuard,
    /// Raised when the shutdown grace period is over.
    pub(crate) cut: Arc<Signal>,
}

impl ConnHold {
    /// Holds `permit`, counts the connection in `open` and watches `cut`.
    pub(crate) fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        open: &Arc<AtomicUsize>,
        cut: Arc<Signal>,
    ) -> ConnHold {
        ConnHold {
            _permit: permit,
            _open: OpenGuard::new(open),
            cut,
        }
    }
}

/// Counts an open connection until dropped.
#[derive(Debug)]
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
