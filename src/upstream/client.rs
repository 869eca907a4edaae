//! HTTP/1.1 connections to upstream servers: connect with a deadline, a small LIFO pool of
//! idle keep-alive connections per server, and errors classified where they happen.
//!
//! We drive `hyper::client::conn::http1` directly instead of hyper-util's pooled client
//! because a failed connect or a stale pooled connection must hand the request back
//! (body included) so the caller can retry it on another server; the pooled client
//! consumes it. A connection returns to the pool only when its response body was read
//! to the end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::BackendState;
use crate::proxy::body::RequestBody;

/// An idle pooled connection.
#[derive(Debug)]
pub(crate) struct IdleConn {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// Why a request to an upstream server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable, reset).
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TCP connect did not finish within `timeouts.connect`.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    /// HTTP handshake on a fresh connection failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The exchange failed after the request was (maybe partly) written.
    #[error("request to {addr} failed: {source}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// No response head within the upstream timeout.
    #[error("{addr} sent no response within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
}

impl UpstreamError {
    /// The server could not be reached at all: it is down (passive health).
    pub(crate) fn is_connect_failure(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Handshake { .. } => true,
            UpstreamError::Exchange { .. } | UpstreamError::Timeout { .. } => false,
        }
    }
}

/// A failed send. `request` is the request given back when none of it reached the
/// server, so it may be retried anywhere.
#[derive(Debug)]
pub(crate) struct SendError {
    pub(crate) error: UpstreamError,
    pub(crate) request: Option<Request<RequestBody>>,
}

/// Deadlines of one exchange.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) pool_idle: Duration,
}

impl BackendState {
    fn checkout(&self, pool_idle: Duration) -> Option<SendRequest<RequestBody>> {
        let mut idle = match self.idle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && conn.since.elapsed() < pool_idle {
                return Some(conn.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = match self.idle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Bound the pool; the oldest connections go first.
        if idle.len() >= MAX_IDLE_PER_SERVER {
            idle.remove(0);
        }
        idle.push(IdleConn {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<RequestBody>, UpstreamError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr,
                    after: timeout,
                })
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        // The task ends when the connection closes: after the last sender is dropped and
        // the exchange in flight is done, or when the server hangs up.
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Most idle connections kept per server.
const MAX_IDLE_PER_SERVER: usize = 256;

/// Sends `request` to the server behind `state`: a pooled connection when one is idle
/// (a stale one is replaced transparently when the request came back unsent), a new one
/// otherwise. `upgrade` requests always get a fresh connection that is never pooled.
pub(crate) async fn send(
    state: &Arc<BackendState>,
    mut request: Request<RequestBody>,
    deadlines: Deadlines,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, SendError> {
    let addr = state.addr;
    // Counted until the response body is done (or the attempt failed), for least_conn.
    let in_flight = InFlight::new(state);
    let pooled = if upgrade {
        None
    } else {
        state.checkout(deadlines.pool_idle)
    };
    let mut from_pool = pooled.is_some();
    let mut sender = match pooled {
        Some(sender) => sender,
        None => match state.connect(deadlines.connect).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendError {
                    error,
                    request: Some(request),
                })
            }
        },
    };
    loop {
        let exchange = async {
            // A pooled connection may still be finishing its previous exchange; a closed
            // one makes `try_send_request` hand the request back.
            let _ = std::future::poll_fn(|cx| sender.poll_ready(cx)).await;
            sender.try_send_request(request).await
        };
        match tokio::time::timeout(deadlines.response, exchange).await {
            Ok(Ok(response)) => {
                let keep = !upgrade;
                return Ok(response.map(|body| UpstreamBody {
                    inner: body,
                    sender: keep.then_some(sender),
                    state: state.clone(),
                    in_flight: Some(in_flight),
                }));
            }
            Ok(Err(mut err)) => {
                let returned = err.take_message();
                let source = err.into_error();
                match returned {
                    // A stale pooled connection: nothing was written, try a fresh one once.
                    Some(back) if from_pool => {
                        request = back;
                        from_pool = false;
                        sender = match state.connect(deadlines.connect).await {
                            Ok(sender) => sender,
                            Err(error) => {
                                return Err(SendError {
                                    error,
                                    request: Some(request),
                                })
                            }
                        };
                    }
                    back => {
                        return Err(SendError {
                            error: UpstreamError::Exchange { addr, source },
                            request: back,
                        })
                    }
                }
            }
            Err(_) => {
                return Err(SendError {
                    error: UpstreamError::Timeout {
                        addr,
                        after: deadlines.response,
                    },
                    request: None,
                })
            }
        }
    }
}

/// A response body from an upstream. When it has been read to the end, its connection
/// goes back to the server's pool; dropped early, the connection is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<SendRequest<RequestBody>>,
    state: Arc<BackendState>,
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    fn release(&mut self) {
        self.in_flight = None;
        if let Some(sender) = self.sender.take() {
            self.state.checkin(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => {
                this.sender = None;
                this.in_flight = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body (204, 304, HEAD) is complete without ever being polled.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

/// Counts a request as in flight on a server until dropped.
#[derive(Debug)]
struct InFlight(Arc<BackendState>);

impl InFlight {
    fn new(state: &Arc<BackendState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
