//! HTTP/1.1 connections to upstream servers: connect with a deadline, a small LIFO pool of
//! idle keep-alive connections per server, and errors classified where they happen.
//!
//! We drive `hyper::client::conn::http1` directly instead of hyper-util's pooled client
//! for two reasons. A failed connect or a stale pooled connection must hand the request
//! back (body included) so the caller can retry it elsewhere; the pooled client consumes
//! it. And a pooled connection is driven by the task that uses it, not by a task of its
//! own: the request future polls it during the exchange and the response body polls it
//! while streaming, so upstream IO wakes the client's connection task directly instead of
//! bouncing every request between two tasks (often on two threads). A connection returns
//! to the pool only when its response body was read to the end; an idle pooled
//! connection is not polled, and is checked (EOF, readiness) when it is taken out.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;
use super::BackendState;

/// The HTTP/1 connection future of a pooled connection.
type Driver = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// One upstream connection: the handle to send on, and who drives its IO.
#[derive(Debug)]
pub(crate) struct Conn {
    sender: SendRequest<RequestBody>,
    /// `Some` while this connection is driven by whoever holds it; `None` once it
    /// finished, or for an upgrade connection driven by a spawned task.
    driver: Option<Pin<Box<Driver>>>,
    spawned: bool,
}

impl Conn {
    /// Whether the connection can take no more requests.
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Polls the connection's IO. True when it is finished (closed or failed).
    fn poll_driver(
        driver: &mut Option<Pin<Box<Driver>>>,
        spawned: bool,
        cx: &mut Context<'_>,
    ) -> bool {
        let Some(future) = driver else {
            return !spawned;
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection ended");
                }
                *driver = None;
                true
            }
            Poll::Pending => false,
        }
    }

    /// Waits until the connection can take a request; false when it is gone.
    async fn ready(&mut self) -> bool {
        let Conn {
            sender,
            driver,
            spawned,
        } = self;
        std::future::poll_fn(|cx| {
            let finished = Conn::poll_driver(driver, *spawned, cx);
            match sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(true),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending if finished => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sends `request` and waits for the response head, driving the connection.
    async fn exchange(&mut self, request: Request<RequestBody>) -> Exchange {
        let Conn {
            sender,
            driver,
            spawned,
        } = self;
        let mut response = pin!(sender.try_send_request(request));
        std::future::poll_fn(|cx| {
            let finished = Conn::poll_driver(driver, *spawned, cx);
            match response.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => Poll::Ready(Exchange::Response(response)),
                Poll::Ready(Err(mut error)) => {
                    let request = error.take_message();
                    Poll::Ready(Exchange::Failed {
                        error: error.into_error(),
                        request,
                    })
                }
                // hyper answers pending requests before its connection future ends;
                // this is a guard against waiting forever if it ever did not.
                Poll::Pending if finished => Poll::Ready(Exchange::Closed),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// How one exchange on a connection ended.
enum Exchange {
    Response(Response<Incoming>),
    Failed {
        error: hyper::Error,
        request: Option<Request<RequestBody>>,
    },
    Closed,
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
    /// The connection closed before the response head arrived.
    #[error("{addr} closed the connection before answering")]
    Closed { addr: SocketAddr },
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
            UpstreamError::Exchange { .. }
            | UpstreamError::Closed { .. }
            | UpstreamError::Timeout { .. } => false,
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
    /// An idle connection of this thread (see `idle`), if one is open.
    fn checkout(&self, pool_idle: Duration) -> Option<Conn> {
        self.idle.take(pool_idle)
    }

    fn checkin(&self, conn: Conn) {
        if conn.is_closed() || conn.driver.is_none() {
            return;
        }
        self.idle.put(conn);
    }

    /// A new connection. Pooled ones are driven by their holder; an upgrade connection
    /// gets a task of its own, which drives it through the upgrade.
    async fn connect(&self, timeout: Duration, upgrade: bool) -> Result<Conn, UpstreamError> {
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
        let (sender, driver) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        if upgrade {
            tokio::spawn(async move {
                if let Err(error) = driver.with_upgrades().await {
                    tracing::debug!(backend = %addr, %error, "upstream connection ended");
                }
            });
            return Ok(Conn {
                sender,
                driver: None,
                spawned: true,
            });
        }
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
            spawned: false,
        })
    }
}

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
    let mut pooled = if upgrade {
        None
    } else {
        state.checkout(deadlines.pool_idle)
    };
    loop {
        let from_pool = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => match state.connect(deadlines.connect, upgrade).await {
                Ok(conn) => conn,
                Err(error) => {
                    return Err(SendError {
                        error,
                        request: Some(request),
                    })
                }
            },
        };
        // A pooled connection may have been closed by the server while idle, or still be
        // finishing its previous exchange; a dead one is skipped, the request untouched.
        if from_pool {
            let alive = tokio::time::timeout(deadlines.response, conn.ready()).await;
            if alive != Ok(true) {
                pooled = state.checkout(deadlines.pool_idle);
                continue;
            }
        }
        let outcome = match tokio::time::timeout(deadlines.response, conn.exchange(request)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(SendError {
                    error: UpstreamError::Timeout {
                        addr,
                        after: deadlines.response,
                    },
                    request: None,
                })
            }
        };
        match outcome {
            Exchange::Response(response) => {
                return Ok(response.map(|body| UpstreamBody {
                    inner: body,
                    conn: Some(conn),
                    pooled: !upgrade,
                    state: state.clone(),
                    in_flight: Some(in_flight),
                }));
            }
            // Nothing was written on a pooled connection: try a fresh one once.
            Exchange::Failed {
                request: Some(back),
                ..
            } if from_pool => {
                request = back;
                pooled = None;
            }
            Exchange::Failed {
                error: source,
                request: back,
            } => {
                return Err(SendError {
                    error: UpstreamError::Exchange { addr, source },
                    request: back,
                })
            }
            Exchange::Closed => {
                return Err(SendError {
                    error: UpstreamError::Closed { addr },
                    request: None,
                })
            }
        }
    }
}

/// A response body from an upstream. Polling it also drives its connection. When it has
/// been read to the end, the connection goes back to the server's pool; dropped early,
/// the connection is closed.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    pooled: bool,
    state: Arc<BackendState>,
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    fn release(&mut self) {
        self.in_flight = None;
        if let Some(conn) = self.conn.take() {
            if self.pooled {
                self.state.checkin(conn);
            }
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
        if let Some(conn) = &mut this.conn {
            // Read the connection so the body's bytes arrive; a finished connection
            // has already handed its last bytes (or its error) to the body.
            if Conn::poll_driver(&mut conn.driver, conn.spawned, cx) {
                this.pooled = false;
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => {
                this.pooled = false;
                this.release();
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
