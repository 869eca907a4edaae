//! The client's request body on its way upstream: streamed, with
//! `limits.max_body_bytes` enforced while streaming. It lives with the upstream client
//! that sends it, below the proxy that builds it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client sent more than `limits.max_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    /// The client's stream failed (reset, malformed chunking).
    #[error("reading the request body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// The request body sent upstream.
#[derive(Debug)]
pub enum RequestBody {
    /// No body (or one known to be empty).
    Empty,
    /// The client's body, streamed, counted against the limit.
    Stream {
        inner: Incoming,
        seen: u64,
        limit: u64,
        /// Set when the limit was hit, so the pipeline can answer 413 instead of 502.
        exceeded: Arc<AtomicBool>,
    },
}

impl RequestBody {
    /// Wraps the client's body; `exceeded` is raised if it grows past `limit`.
    pub fn limited(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        if inner.is_end_stream() {
            return RequestBody::Empty;
        }
        RequestBody::Stream {
            inner,
            seen: 0,
            limit,
            exceeded,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream {
                inner,
                seen,
                limit,
                exceeded,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len() as u64;
                        if *seen > *limit {
                            exceeded.store(true, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                                limit: *limit,
                            })));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
