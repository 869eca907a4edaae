//! Per-connection client deadlines, enforced by the connection's IO stream.
//!
//! hyper's own HTTP/1 header-read timer also runs while a keep-alive connection waits for
//! its next request, which would cap `client_idle` at `header_read`. So both deadlines
//! live in [`DeadlineIo`], which knows from [`Activity`] whether a request is in flight:
//! - no request in flight, no byte of the next one yet: close after `client_idle`;
//! - bytes of a request head have arrived: close `header_read` after the first of them;
//! - a request in flight: no deadline here (the upstream timeouts govern).
//!
//! Deadlines are enforced by one timer per connection that ticks at half the shorter
//! deadline; reads and writes only set a flag, so a request costs no clock read and no
//! timer update. A deadline is thus enforced within one tick of its nominal time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::conn::Activity;

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
    tick: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Bytes moved either way since the last tick.
    io_seen: bool,
    /// Bytes of a request head arrived while no request was in flight.
    head_pending: bool,
    /// Ticks since the head started / since the connection went quiet.
    head_ticks: u32,
    idle_ticks: u32,
    /// `Activity::started` at the last look: a change means a request began.
    started_seen: u64,
}

impl<T> DeadlineIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>, deadlines: ClientDeadlines) -> Self {
        let tick = (deadlines.header_read.min(deadlines.idle) / 2).max(Duration::from_millis(10));
        DeadlineIo {
            inner,
            activity,
            deadlines,
            tick,
            sleep: Box::pin(tokio::time::sleep(tick)),
            io_seen: false,
            // A new HTTP/1 connection must send its first request head within
            // `header_read`; an HTTP/2 one only has to stay active within `client_idle`.
            head_pending: deadlines.head_rule,
            head_ticks: 0,
            idle_ticks: 0,
            started_seen: 0,
        }
    }

    /// One timer tick: `Some` ends the stream (an error for a late request head, a
    /// clean end of stream for an idle connection).
    fn on_tick(&mut self) -> Option<io::Result<()>> {
        let started = self.activity.started();
        if started != self.started_seen || self.activity.in_flight() > 0 {
            self.started_seen = started;
            self.head_pending = false;
            self.head_ticks = 0;
            self.idle_ticks = 0;
        } else if self.head_pending {
            self.head_ticks += 1;
            if self.tick * self.head_ticks >= self.deadlines.header_read {
                return Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head read timed out",
                )));
            }
        } else if self.io_seen {
            self.idle_ticks = 0;
        } else {
            self.idle_ticks += 1;
            if self.tick * self.idle_ticks >= self.deadlines.idle {
                return Some(Ok(()));
            }
        }
        self.io_seen = false;
        None
    }

    /// Polls the tick timer; `Ready` when the stream must end.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if let Some(end) = self.on_tick() {
                return Poll::Ready(end);
            }
            let next = self.sleep.deadline() + self.tick;
            self.sleep.as_mut().reset(next.max(Instant::now()));
        }
        Poll::Pending
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
                    this.io_seen = true;
                    if this.deadlines.head_rule
                        && !this.head_pending
                        && this.activity.in_flight() == 0
                    {
                        this.head_pending = true;
                        this.head_ticks = 0;
                        this.started_seen = this.activity.started();
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
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
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.io_seen = true;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.io_seen = true;
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
