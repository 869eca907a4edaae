//! `X-Request-Id`: one id per request, sent upstream, returned to the client and
//! written in the access log, so one request can be followed through every log.
//!
//! A trusted proxy's (`listen.trusted_proxies`) id is kept when it is a plausible id
//! (1 to 128 visible ASCII characters); anyone else's is replaced. A generated id is
//! `PREFIX-CONN-N`: a random 64-bit prefix per process start (so replicas and restarts
//! differ), the connection's number, and the request's number on that connection.
//! Making one costs no lock and no shared atomic per request.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The request id header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id taken from a trusted proxy.
const MAX_LEN: usize = 128;

/// Numbers connections for request ids; one per process.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next_conn: AtomicU64,
}

impl RequestIds {
    /// A random prefix for this process.
    pub(crate) fn new() -> RequestIds {
        let prefix = crate::session::random_bytes::<8>().map_or(0, u64::from_le_bytes);
        RequestIds {
            prefix,
            next_conn: AtomicU64::new(1),
        }
    }

    /// The next connection's number (one shared atomic per connection, not per request).
    pub(crate) fn next_connection(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The id of a request: the trusted proxy's, or a new one.
    pub(crate) fn for_request(
        &self,
        headers: &HeaderMap,
        trusted: bool,
        conn: u64,
        counter: &AtomicU64,
    ) -> HeaderValue {
        if trusted {
            if let Some(id) = headers.get(&X_REQUEST_ID).filter(|v| plausible(v)) {
                return id.clone();
            }
        }
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let mut buffer = [0u8; 64];
        let mut cursor = &mut buffer[..];
        let written = write!(cursor, "{:016x}-{conn:x}-{n:x}", self.prefix).is_ok();
        let len = 64 - cursor.len();
        buffer
            .get(..len)
            .filter(|_| written)
            .and_then(|bytes| HeaderValue::from_bytes(bytes).ok())
            .unwrap_or(HeaderValue::from_static("-"))
    }
}

/// 1 to 128 visible ASCII characters.
fn plausible(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_ids_are_kept_others_replaced_and_new_ones_differ() {
        let ids = RequestIds::new();
        let counter = AtomicU64::new(0);
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-42"));
        assert_eq!(ids.for_request(&headers, true, 1, &counter), "lb-42");
        let a = ids.for_request(&headers, false, 1, &counter);
        let b = ids.for_request(&headers, false, 1, &counter);
        assert_ne!(a, "lb-42");
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().ends_with("-1-0"), "{a:?}");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(ids.for_request(&headers, true, 1, &counter), "has space");
    }
}
