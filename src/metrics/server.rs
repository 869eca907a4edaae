//! Per-server traffic and health notes, read by the status page's sampler
//! (`admin::status`).
//!
//! Request-path cost: one [`ServerStats::attempt`] per attempt on a server, i.e. two or
//! three relaxed atomic adds (requests, the latency bucket and sum, failures when it
//! failed). No lock, no allocation. The notes about health transitions and checks are
//! written by the health task and by `mark_down`/`mark_up`, once per transition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::{Timing, BUCKET_COUNT};

/// Traffic and health notes of one server; lives in its `BackendState`, so it
/// outlives reloads like the server's health does.
#[derive(Debug, Default)]
pub struct ServerStats {
    requests: AtomicU64,
    failures: AtomicU64,
    latency: Timing,
    note: Mutex<HealthNote>,
}

/// What changed last in a server's health, for people.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthNote {
    /// Unix ms of the last up/down transition (`None`: none since start).
    pub changed_ms: Option<u64>,
    /// Why it went down last (a connect error, a failed health check).
    pub down_reason: Option<String>,
    /// The last active health check.
    pub check: Option<CheckNote>,
}

/// One active health check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckNote {
    pub at_ms: u64,
    pub ok: bool,
    /// `"ok"` or why it failed.
    pub detail: String,
}

/// Cumulative counts of a server, as the sampler reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Attempts sent to the server.
    pub requests: u64,
    /// Attempts that failed to get a response head, or got a 5xx.
    pub failures: u64,
    /// Response-head latency histogram (not cumulative per bucket).
    pub buckets: [u64; BUCKET_COUNT],
}

impl ServerStats {
    /// Counts one attempt: `status` is the response's status, `None` when the attempt
    /// failed (connect, reset, timeout). A 5xx or a failure counts as an error.
    #[inline]
    pub fn attempt(&self, elapsed: Duration, status: Option<u16>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match status {
            Some(status) => {
                self.latency.observe(elapsed);
                if status >= 500 {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Notes an up/down transition (`why`: the reason it went down).
    pub fn went(&self, up: bool, why: Option<&dyn std::fmt::Display>) {
        let mut note = crate::lock(&self.note);
        note.changed_ms = Some(crate::clock::unix_ms());
        note.down_reason = if up { None } else { why.map(|w| w.to_string()) };
    }

    /// Notes the result of an active health check.
    pub fn checked(&self, ok: bool, detail: &str) {
        let mut note = crate::lock(&self.note);
        note.check = Some(CheckNote {
            at_ms: crate::clock::unix_ms(),
            ok,
            detail: detail.to_string(),
        });
    }

    /// The counts so far.
    pub fn counts(&self) -> ServerCounts {
        ServerCounts {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            buckets: self.latency.buckets(),
        }
    }

    /// The health notes.
    pub fn note(&self) -> HealthNote {
        crate::lock(&self.note).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_failures_and_latency() {
        let stats = ServerStats::default();
        stats.attempt(Duration::from_millis(3), Some(200));
        stats.attempt(Duration::from_millis(3), Some(503));
        stats.attempt(Duration::from_millis(3), None);
        let counts = stats.counts();
        assert_eq!((counts.requests, counts.failures), (3, 2));
        assert_eq!(counts.buckets.iter().sum::<u64>(), 2);
        stats.went(false, Some(&"connect refused"));
        assert_eq!(stats.note().down_reason.as_deref(), Some("connect refused"));
        stats.went(true, None);
        assert!(stats.note().down_reason.is_none());
    }
}
