//! Deletes that failed (a logout, or the old item of a regeneration, whose server did
//! not answer): kept here, retried on a connection of their own as soon as their server
//! answers again, and logged. Until then this instance treats those keys as gone, so the
//! old token is dead here at once; another instance that shares the server reads it only
//! after the server is back and before the retry lands (a window of one round trip),
//! and never with a newer identity than the token had.
//!
//! Bounded: past [`MAX`] waiting deletes the oldest is dropped (and logged); each is
//! kept until its item would have expired anyway.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::wire;

/// Most deletes kept waiting.
const MAX: usize = 10_000;

/// One waiting delete.
struct Waiting {
    key: String,
    server: usize,
    /// Unix ms after which the item is gone by itself.
    until: u64,
}

/// The waiting deletes.
#[derive(Default)]
pub(super) struct Leftovers {
    waiting: Mutex<Vec<Waiting>>,
    count: AtomicUsize,
    flushing: AtomicBool,
}

impl Leftovers {
    /// Whether any delete waits (an atomic load: checked on every call).
    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Whether `key`'s delete waits (so its item counts as gone).
    pub(super) fn holds(&self, key: &str) -> bool {
        self.any()
            && self
                .waiting
                .lock()
                .is_ok_and(|w| w.iter().any(|entry| entry.key == key))
    }

    /// Keeps the delete of `key` (on server `server`, gone by itself at `until`).
    pub(super) fn push(&self, key: String, server: usize, until: u64) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        if waiting.len() >= MAX {
            waiting.remove(0);
            tracing::warn!("too many memcached deletes waiting for their server; the oldest is dropped (its item expires by its TTL)");
        }
        waiting.push(Waiting { key, server, until });
        self.count.store(waiting.len(), Ordering::Relaxed);
    }

    /// Takes the deletes waiting for `server` (those not yet expired by `now`).
    fn take(&self, server: usize, now: u64) -> Vec<Waiting> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return Vec::new();
        };
        waiting.retain(|entry| entry.until > now);
        let mut taken = Vec::new();
        waiting.retain_mut(|entry| {
            if entry.server == server {
                taken.push(Waiting {
                    key: std::mem::take(&mut entry.key),
                    server,
                    until: entry.until,
                });
                false
            } else {
                true
            }
        });
        self.count.store(waiting.len(), Ordering::Relaxed);
        taken
    }

    /// Sends the deletes waiting for `server` (at `address`) on a connection of their
    /// own; those that fail wait again. Returns how many were sent, how many failed.
    pub(super) async fn flush(
        &self,
        server: usize,
        address: &str,
        connect: Duration,
        timeout: Duration,
    ) -> (usize, usize) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return (0, 0);
        }
        // Lowers `flushing` however this ends (a runtime that shuts down drops it).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.flushing);
        let now = crate::clock::unix_ms();
        let keys = self.take(server, now);
        let (mut sent, mut failed) = (0, 0);
        if !keys.is_empty() {
            let requests: Vec<_> = keys.iter().map(|w| wire::delete(&w.key, None)).collect();
            let outcome = tokio::time::timeout(
                connect + timeout,
                wire::send_all(address, connect, requests),
            )
            .await;
            if let Ok(Ok(())) = outcome {
                sent = keys.len();
                tracing::info!(
                    deleted = sent,
                    "memcached deletes that had failed were retried and done"
                );
            } else {
                failed = keys.len();
                for entry in keys {
                    self.push(entry.key, server, entry.until);
                }
            }
        }
        (sent, failed)
    }
}
