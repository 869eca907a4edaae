//! Accepting client connections: the connection limit, TLS handshakes under a deadline,
//! per-connection deadlines for the request head and keep-alive idle (`deadline`), one
//! accept queue per worker (`reuseport`), and graceful shutdown.

mod deadline;
mod reuseport;

pub use reuseport::bind_https;
pub(crate) use reuseport::worker_listeners;

use deadline::{ClientDeadlines, DeadlineIo};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::conn::{Activity, ConnCtx, ConnHold};
use crate::proxy;
use crate::shutdown::Signal;
use crate::state::AppState;

/// The HTTP/1.1 and HTTP/2 connection builders, built once. TLS ALPN picks one per
/// connection (`h2`, else HTTP/1.1), as HAProxy and nginx do: no sniffing of the first
/// bytes. Sniffing (hyper-util's auto builder) made the first read of every connection
/// 24 bytes, after which hyper grew its read buffer to 16 KB for the rest of the
/// connection: 8.5 KB more RSS per idle connection, and a wrapper on every read.
pub(crate) struct HttpBuilders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl HttpBuilders {
    pub(crate) fn new(max_header_bytes: usize) -> HttpBuilders {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // `header_read` and `client_idle` are DeadlineIo's (see `deadline`): hyper's
            // own head timer (30 s by default) also runs while a keep-alive connection
            // waits for its next request, and cut idle connections at 30 s whatever
            // `client_idle` said.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(max_header_bytes.max(8192))
            .max_headers(200);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // The exact 431 limit is checked per request; this only bounds memory.
            .max_header_list_size(
                u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
            )
            .max_concurrent_streams(250)
            // RFC 8441: WebSockets over HTTP/2 (extended CONNECT), tunnelled to the
            // HTTP/1.1 upstream as an ordinary `Upgrade: websocket`.
            .enable_connect_protocol()
            // No server PINGs: their answers would count as activity and keep idle
            // connections open forever; `client_idle` closes dead and idle peers alike.
            .keep_alive_interval(None);
        HttpBuilders { http1, http2 }
    }
}

/// A hyper connection that can be asked to finish its requests in flight and close.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    http1::UpgradeableConnection<I, S>: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    http2::Connection<I, S, TokioExecutor>: Future<Output = hyper::Result<()>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Serves `conn` until it ends; when shutdown begins, finishes the request in flight and
/// closes (HTTP/2: GOAWAY).
async fn drive<C: Graceful>(conn: C, stop: &Signal) -> hyper::Result<()> {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = stop.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Everything an accept loop needs; cloned into every worker.
#[derive(Clone)]
pub(crate) struct Acceptor {
    pub(crate) state: Arc<AppState>,
    pub(crate) tls: TlsAcceptor,
    pub(crate) builders: Arc<HttpBuilders>,
    pub(crate) permits: Arc<Semaphore>,
    /// Raised when the shutdown grace period is over: connections still open are cut.
    pub(crate) cut: Arc<Signal>,
    /// Open client connections (from accept to close), across all workers.
    pub(crate) open: Arc<AtomicUsize>,
}

/// One worker thread: a single-threaded runtime that accepts on its own handle of the
/// https listener and serves the connections it accepted, start to end.
///
/// Why not one multi-threaded runtime: with work stealing, a connection's IO events
/// wake tasks on any thread, and idle threads are woken to steal; per request that cost
/// more CPU than the whole session stage. Like nginx and HAProxy, each worker here
/// runs its own event loop and keeps its connections; the kernel spreads accepts.
pub(crate) fn worker(listener: std::net::TcpListener, acceptor: Acceptor) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot register the listener in a worker");
                return;
            }
        };
        let open = acceptor.open.clone();
        let cut = acceptor.cut.clone();
        accept_loop(listener, acceptor).await;
        // Accepting stopped: keep serving the open connections until they finish or
        // the grace period cuts them (their tasks live on this runtime).
        while open.load(Ordering::Relaxed) > 0 && !cut.is_raised() {
            tokio::select! {
                () = cut.wait() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        // Cut: let the tasks that watch the signal (tunnels) end and log before the
        // runtime drops them, for at most as long as `run` waits for them.
        let mut waited = Duration::ZERO;
        while open.load(Ordering::Relaxed) > 0 && waited < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
    });
}

/// Accepts TLS connections until shutdown begins.
async fn accept_loop(listener: TcpListener, acceptor: Acceptor) {
    let stop = acceptor.state.stop.clone();
    loop {
        let permit = tokio::select! {
            permit = acceptor.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = stop.wait() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning. Another worker
                    // taking the connection first is not an error (WouldBlock is retried
                    // inside tokio).
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.wait() => return,
        };
        let acceptor = acceptor.clone();
        let hold = ConnHold::new(permit, &acceptor.open, acceptor.cut.clone());
        tokio::spawn(async move {
            let cut = acceptor.cut.clone();
            tokio::select! {
                () = serve_connection(stream, peer, &acceptor, hold) => {}
                // Dropping the connection future closes the socket.
                () = cut.wait() => {
                    tracing::debug!(%peer, "connection cut at the end of the shutdown grace period");
                }
            }
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &Acceptor,
    hold: ConnHold,
) {
    let _ = stream.set_nodelay(true);
    let state = acceptor.state.clone();
    let timeouts = state.runtime().config.timeouts.clone();
    let accept = acceptor.tls.accept(stream);
    let stream = match tokio::time::timeout(timeouts.tls_handshake, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            state.metrics.tls_handshake_failures.inc();
            return;
        }
    };
    // ACME tls-alpn-01: the validator only checks the certificate (RFC 8737 §3).
    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::acme::ACME_TLS_ALPN) {
        return;
    }
    let (io, ctx, h2) = prepare(stream, peer, &state, &timeouts, hold);

    // The request future is boxed too: it is large (about 9 KB), hyper keeps a
    // `Box<Option<future>>` per HTTP/1 connection (5.3 KB more RSS per idle connection
    // unboxed), and HTTP/2 moves it into a spawned task (a memcpy each time).
    let service =
        service_fn(move |request| Box::pin(proxy::serve(state.clone(), ctx.clone(), request)));
    let stop = &acceptor.state.stop;
    // Boxed, each protocol its own size (HTTP/1.1 about 4 KB, HTTP/2 about 5.6 KB),
    // instead of every connection's task holding the larger of the two inline (and, next
    // to it, the TLS stream the handshake returned): 1 KB less RSS per idle HTTP/1.1
    // connection (34.6 -> 33.6 KB at 2,000 connections), one allocation per connection.
    let result = if h2 {
        let conn = acceptor.builders.http2.serve_connection(io, service);
        Box::pin(drive(conn, stop)).await
    } else {
        let conn = acceptor.builders.http1.serve_connection(io, service);
        Box::pin(drive(conn.with_upgrades(), stop)).await
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

/// A connection's IO with its deadlines, its context, and whether ALPN chose HTTP/2.
/// Not async: the TLS stream is consumed here, so no future keeps a slot for it.
fn prepare(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    state: &AppState,
    timeouts: &crate::config::TimeoutsConfig,
    hold: ConnHold,
) -> (
    TokioIo<DeadlineIo<tokio_rustls::server::TlsStream<TcpStream>>>,
    Arc<ConnCtx>,
    bool,
) {
    let (_, tls) = stream.get_ref();
    let sni = tls
        .server_name()
        .map(|name| name.to_ascii_lowercase().into_boxed_str());
    let h2 = tls.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::default());
    let ctx = Arc::new(ConnCtx {
        peer,
        peer_value: proxy::headers::peer_value(peer.ip()),
        sni,
        activity: activity.clone(),
        cookies: crate::session::CookieCache::default(),
        conn_no: state.request_ids.next_connection(),
        requests: std::sync::atomic::AtomicU64::new(0),
        assertions: crate::assertion::AssertionCache::default(),
        agents: crate::anomaly::AgentCache::default(),
        flagged: std::sync::atomic::AtomicU64::new(0),
        hold,
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
    (TokioIo::new(io), ctx, h2)
}
