//! Accepting client connections: the connection limit, TLS handshakes under a deadline,
//! per-connection deadlines for the request head and keep-alive idle, and graceful
//! shutdown.
//!
//! hyper's own HTTP/1 header-read timer also runs while a keep-alive connection waits for
//! its next request, which would cap `client_idle` at `header_read`. So both deadlines
//! live in [`DeadlineIo`], which knows from [`Activity`] whether a request is in flight:
//! - no request in flight, no byte of the next one yet: close after `client_idle`;
//! - bytes of a request head have arrived: close `header_read` after the first of them;
//! - a request in flight: no deadline here (the upstream timeouts govern).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use crate::proxy::{self, ConnCtx};
use crate::state::AppState;

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
}

/// A request in flight; see [`Activity::begin`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Client-side deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientDeadlines {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
    /// HTTP/1: bytes arriving while no request is in flight start a request head, which
    /// must complete within `header_read`. Not for HTTP/2, whose idle connections carry
    /// frames (PING, SETTINGS) that are no request.
    pub(crate) head_rule: bool,
}

/// An IO stream that ends itself when the client idles or dribbles its request head.
pub(crate) struct DeadlineIo<T> {
    inner: T,
    activity: Arc<Activity>,
    deadlines: ClientDeadlines,
    sleep: Pin<Box<Sleep>>,
    /// When the last byte moved either way.
    last_io: Instant,
    /// When the first byte of a request head arrived while no request was in flight.
    head_since: Option<Instant>,
    /// `Activity::started` when `head_since` was set.
    started_seen: u64,
}

impl<T> DeadlineIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, deadlines: ClientDeadlines) -> Self {
        let now = Instant::now();
        DeadlineIo {
            inner,
            activity,
            deadlines,
            sleep: Box::pin(tokio::time::sleep_until(now + deadlines.header_read)),
            last_io: now,
            // A new HTTP/1 connection must send its first request head within
            // `header_read`; an HTTP/2 one only has to stay active within `client_idle`.
            head_since: deadlines.head_rule.then_some(now),
            started_seen: 0,
        }
    }

    /// The deadline in force now, if any.
    fn deadline(&mut self) -> Option<Instant> {
        let started = self.activity.started.load(Ordering::Relaxed);
        if started != self.started_seen {
            self.started_seen = started;
            self.head_since = None;
        }
        if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(match self.head_since {
            Some(since) => since + self.deadlines.header_read,
            None => self.last_io + self.deadlines.idle,
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_io = Instant::now();
                    let idle = this.activity.in_flight.load(Ordering::Relaxed) == 0;
                    if idle && this.head_since.is_none() && this.deadlines.head_rule {
                        this.head_since = Some(this.last_io);
                        this.started_seen = this.activity.started.load(Ordering::Relaxed);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) if this.head_since.is_some() => Poll::Ready(Err(
                        io::Error::new(io::ErrorKind::TimedOut, "request head read timed out"),
                    )),
                    // Idle keep-alive: end the stream cleanly.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.last_io = Instant::now();
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.last_io = Instant::now();
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/1.1 + HTTP/2 connection builder, built once.
pub(crate) fn http_builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(max_header_bytes.max(8192))
        .max_headers(200);
    builder
        .http2()
        .timer(TokioTimer::new())
        // The exact 431 limit is checked per request; this only bounds memory.
        .max_header_list_size(u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX))
        .max_concurrent_streams(250)
        // No server PINGs: their answers would count as activity and keep idle
        // connections open forever; `client_idle` closes dead and idle peers alike.
        .keep_alive_interval(None);
    builder
}

/// Everything an accept loop needs.
pub(crate) struct Acceptor {
    pub(crate) state: Arc<AppState>,
    pub(crate) tls: TlsAcceptor,
    pub(crate) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) graceful: Arc<GracefulShutdown>,
    /// Flips when the shutdown grace period is over: connections still open are cut.
    pub(crate) cut: watch::Receiver<bool>,
    /// Open client connections (after the handshake started).
    pub(crate) open: Arc<AtomicUsize>,
}

impl Acceptor {
    fn watcher(&self) -> Watcher {
        self.graceful.watcher()
    }
}

/// Accepts TLS connections on `listener` until `stop` flips.
pub(crate) async fn serve_https(
    listener: TcpListener,
    acceptor: Acceptor,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            permit = acceptor.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = acceptor.state.clone();
        let tls = acceptor.tls.clone();
        let builder = acceptor.builder.clone();
        let watcher = acceptor.watcher();
        let mut cut = acceptor.cut.clone();
        let open = OpenGuard::new(&acceptor.open);
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            tokio::select! {
                () = serve_connection(stream, peer, state, tls, builder, watcher) => {}
                // Dropping the connection future closes the socket.
                _ = cut.wait_for(|cut| *cut) => {
                    tracing::debug!(%peer, "connection cut at the end of the shutdown grace period");
                }
            }
        });
    }
}

/// Counts an open connection until dropped.
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

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    tls: TlsAcceptor,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let timeouts = state.runtime().config.timeouts.clone();
    let stream = match tokio::time::timeout(timeouts.tls_handshake, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let sni = stream
        .get_ref()
        .1
        .server_name()
        .map(|name| name.to_ascii_lowercase().into_boxed_str());
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::default());
    let ctx = Arc::new(ConnCtx {
        peer,
        peer_value: crate::proxy::headers::peer_value(peer.ip()),
        sni,
        activity: activity.clone(),
    });
    let io = DeadlineIo::new(
        stream,
        activity,
        ClientDeadlines {
            header_read: timeouts.header_read,
            idle: timeouts.client_idle,
            head_rule: !h2,
        },
    );
    let service = service_fn(move |request| proxy::serve(state.clone(), ctx.clone(), request));
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %error, "client connection ended with an error");
    }
}
