//! Idle HTTP/1.1 keep-alive connections without hyper's buffers ("parking").
//!
//! hyper keeps, per HTTP/1 connection, a read buffer (8 KB from the first request on,
//! never given back) and a write buffer (8 KB, allocated with the connection), and no
//! option releases them: `max_buf_size` only caps their growth and cannot go below 8 KB,
//! the write strategy (`writev`) only changes how bodies are queued. With them an idle
//! TLS keep-alive connection cost 33.1 KB of RSS (2,000 connections, `bench/compare.sh`
//! idle row) against HAProxy's and nginx's about 15.5 KB.
//!
//! So a connection that went idle between two requests is taken apart
//! (`UpgradeableConnection::into_parts`): hyper's connection, with both buffers and its
//! state, is freed; the TLS stream (boxed) and the service are kept, and the task waits,
//! with no buffer, for the socket to become readable. On the next bytes a new hyper
//! connection is made on the same stream (bytes hyper had read and not parsed, if any,
//! are handed back first). A new hyper connection costs about the allocation of its two
//! buffers; it is made only after a connection was idle, not per request of a busy one.
//!
//! When: after a whole tick of the connection's deadline timer passed with no byte either
//! way and no request (`IoFlags::quiet`; the tick is half the shorter of `header_read`
//! and `client_idle`, so 5 to 10 s of quiet with the default timeouts). Parking at once
//! would take a busy keep-alive connection apart between every two requests (a client
//! that sends its next request right after a response still leaves hyper waiting for a
//! moment), costing a new hyper connection per request; after a quiet tick it costs one
//! per idle period, and the tick is there anyway.
//!
//! Idle means all of: hyper's last read found nothing ([`IoFlags::read_blocked`]), all it
//! wrote is flushed, no byte came in since the last request began (no next request head
//! has started), no request is in flight and no response body is still being sent, and
//! the last request had no body (hyper may still be reading or draining a request body,
//! which a new connection would take for the next request head: such a connection stays
//! whole until a body-less request). While parked the connection keeps its deadlines:
//! `header_read` before its first request, `client_idle` after one; shutdown closes it
//! at once, as hyper closes an idle connection.
//!
//! Only HTTP/1.1: an HTTP/2 connection's streams, flow-control windows and HPACK tables
//! live in hyper's connection and cannot be carried over to a new one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::deadline::{DeadlineIo, IoFlags};
use crate::conn::Activity;
use crate::shutdown::Signal;

/// A client connection's IO as hyper gets it.
pub(super) type ClientIo = TokioIo<DeadlineIo<tokio_rustls::server::TlsStream<TcpStream>>>;

/// A request being served, until its response body is sent (or dropped).
#[derive(Debug)]
pub(super) struct Sending(Arc<IoFlags>);

impl Sending {
    /// Counts `request` as being served on the connection whose flags these are.
    pub(super) fn begin(flags: &Arc<IoFlags>, request: &Request<Incoming>) -> Sending {
        flags.responses.fetch_add(1, Ordering::Relaxed);
        flags.fresh_bytes.store(false, Ordering::Relaxed);
        flags
            .body_seen
            .store(!request.body().is_end_stream(), Ordering::Relaxed);
        Sending(flags.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.responses.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that counts its request as served until it is sent or dropped.
#[derive(Debug)]
pub(super) struct Tracked<B> {
    pub(super) body: B,
    pub(super) _sending: Sending,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether hyper's connection is idle between two requests (see the module header).
fn idle(flags: &IoFlags, activity: &Activity) -> bool {
    flags.quiet.load(Ordering::Relaxed)
        && flags.read_blocked.load(Ordering::Relaxed)
        && flags.flushed.load(Ordering::Relaxed)
        && !flags.fresh_bytes.load(Ordering::Relaxed)
        && flags.responses.load(Ordering::Relaxed) == 0
        && !flags.body_seen.load(Ordering::Relaxed)
        && activity.in_flight() == 0
}

/// How a run of one hyper connection ended.
enum Run {
    Ended(hyper::Result<()>),
    Idle,
}

/// Serves an HTTP/1.1 connection until it ends, parking it whenever it is idle.
pub(super) async fn serve<S, B>(
    builder: &http1::Builder,
    io: ClientIo,
    mut service: S,
    activity: &Activity,
    deadlines: (Duration, Duration),
    stop: &Signal,
) -> hyper::Result<()>
where
    S: HttpService<Incoming, ResBody = B, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (header_read, client_idle) = deadlines;
    let flags = io.inner().flags().clone();
    let mut io = Box::new(io);
    loop {
        let mut conn = Box::new(builder.serve_connection(*io, service).with_upgrades());
        let mut stopping = false;
        let run = {
            let mut stopped = std::pin::pin!(stop.wait());
            std::future::poll_fn(|cx| {
                if !stopping && stopped.as_mut().poll(cx).is_ready() {
                    stopping = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                    return Poll::Ready(Run::Ended(result));
                }
                if !stopping && idle(&flags, activity) {
                    return Poll::Ready(Run::Idle);
                }
                Poll::Pending
            })
            .await
        };
        if let Run::Ended(result) = run {
            return result;
        }
        let Some(parts) = conn.into_parts() else {
            return Ok(());
        };
        *io = parts.io;
        service = parts.service;
        if !parts.read_buf.is_empty() {
            // Not expected (no byte came in since the request began); served first.
            io.inner_mut().unread(parts.read_buf);
            continue;
        }
        // The (empty) read buffer still owns hyper's 8 KB allocation: freed now, not at
        // the end of this iteration.
        drop(parts.read_buf);
        // Parked: nothing of hyper's is left. Before the first request the head
        // deadline applies, after one the keep-alive idle.
        let wait = if activity.started() == 0 {
            header_read
        } else {
            client_idle
        };
        let parked = Instant::now();
        let tcp = io.inner().get_ref().get_ref().0;
        tokio::select! {
            ready = tcp.readable() => {
                if ready.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep(wait) => return close(&mut io).await,
            () = stop.wait() => return close(&mut io).await,
        }
        io.inner_mut().resume(parked.elapsed());
    }
}

/// Closes a parked connection: TLS close_notify, then FIN, within a second.
async fn close(io: &mut ClientIo) -> hyper::Result<()> {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncWriteExt::shutdown(io.inner_mut()),
    )
    .await;
    Ok(())
}
