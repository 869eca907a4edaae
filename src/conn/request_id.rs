//! `X-Request-Id`: one id per request, sent upstream, returned to the client and
//! written in the access log, so one request can be followed through every log.
//!
//! A trusted proxy's (`listen.trusted_proxies`) id is kept when it is a plausible id
//! (1 to 128 visible ASCII characters); anyone else's is replaced. A generated id is
//! `PREFIX-CONN-N`: a random 64-bit prefix per process start (so replicas and restarts
//! differ), the connection's number, and the request's number on that connection.
//! Making one costs no lock and no shared atomic per request.

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
        // `{prefix:016x}-{conn:x}-{n:x}`, written by hand: `write!` cost about 1,000
        // instructions per request (callgrind), this about 150.
        let mut buffer = [b'-'; 16 + 1 + 16 + 1 + 16];
        let mut len = hex(&mut buffer, 0, self.prefix, 16);
        len = hex(&mut buffer, len + 1, conn, 1);
        len = hex(&mut buffer, len + 1, n, 1);
        let mut value = buffer
            .get(..len)
            .and_then(|bytes| HeaderValue::from_bytes(bytes).ok())
            .unwrap_or(HeaderValue::from_static("-"));
        // Unique per request: HPACK must not index it (it would only evict useful
        // entries from the HTTP/2 header table).
        value.set_sensitive(true);
        value
    }
}

/// Writes `value` in lower-case hex at `at`, at least `min_digits` digits (zero-padded);
/// returns the end (digits past the buffer's end are dropped).
fn hex(buffer: &mut [u8], at: usize, value: u64, min_digits: u32) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(min_digits);
    let mut end = at;
    for i in (0..digits).rev() {
        if let Some(slot) = buffer.get_mut(end) {
            *slot = DIGITS[((value >> (i * 4)) & 0xf) as usize];
        }
        end += 1;
    }
    end.min(buffer.len())
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
        let expected = format!("{:016x}-{:x}-{:x}", ids.prefix, 0xabc_u64, 2);
        let c = ids.for_request(&headers, false, 0xabc, &counter);
        assert_eq!(c.to_str().unwrap(), expected);
        assert!(c.is_sensitive(), "never indexed by HPACK");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(ids.for_request(&headers, true, 1, &counter), "has space");
    }
}
