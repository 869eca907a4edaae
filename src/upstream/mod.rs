//! Upstream pools: the servers of each `[upstreams.NAME]`, their live state, and the
//! choice of a server for a request.
//!
//! A [`Backend`] pairs the server's config of this generation (weight, drain) with its
//! [`BackendState`], which outlives reloads: connection pool, in-flight count and health
//! are kept per `(upstream, address)` in the [`BackendRegistry`] and handed to the next
//! runtime that names the same server. Sessions refer to servers by [`BackendId`], a hash
//! of the upstream and server names, never by address.

pub(crate) mod affinity;
pub(crate) mod balancer;
pub mod body;
pub(crate) mod client;
mod idle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Affinity, Balance, HealthConfig, OnPinnedDown, UpstreamConfig};

pub(crate) use client::SendError;
pub use client::{UpstreamBody, UpstreamError};

/// Stable identity of a server within an upstream, kept in sessions for affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub u64);

impl BackendId {
    /// FNV-1a of `upstream/server`: stable across restarts and instances.
    pub fn of(upstream: &str, server: &str) -> BackendId {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in upstream.bytes().chain([b'/']).chain(server.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        BackendId(hash)
    }
}

/// Live state of one server, shared by every runtime generation that names it.
#[derive(Debug)]
pub struct BackendState {
    pub(crate) addr: SocketAddr,
    /// Requests sent and not yet answered in full (for `least_conn` and metrics).
    pub(crate) in_flight: AtomicUsize,
    /// Passive and active health verdict.
    pub(crate) healthy: AtomicBool,
    /// Idle keep-alive connections, one list per worker thread (see `idle`).
    pub(crate) idle: idle::IdleLists,
    /// Health-check bookkeeping; touched by the health task and on passive failures.
    pub(crate) probe: Mutex<Probe>,
    /// Attempts, failures, latency and health notes (the admin status page).
    pub(crate) stats: crate::metrics::ServerStats,
}

/// Consecutive check results and when the next check or probe is due.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) passes: u32,
    pub(crate) fails: u32,
    pub(crate) next: Instant,
    /// Delay of the next reconnect probe of a server marked down (no active check).
    pub(crate) backoff: Duration,
}

/// First delay of a reconnect probe; doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl BackendState {
    fn new(addr: SocketAddr) -> Self {
        BackendState {
            addr,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            idle: idle::IdleLists::default(),
            probe: Mutex::new(Probe {
                passes: 0,
                fails: 0,
                next: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            stats: crate::metrics::ServerStats::default(),
        }
    }

    /// Whether requests may go here.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn probe(&self) -> std::sync::MutexGuard<'_, Probe> {
        crate::lock(&self.probe)
    }

    /// Takes the server out of rotation (logged once per transition). Pooled connections
    /// are dropped; a probe or the active check brings it back.
    pub(crate) fn mark_down(&self, upstream: &str, server: &str, why: &dyn std::fmt::Display) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            // Once per transition, and at most once a second for a flapping server.
            let cause = crate::log::limit::Cause::of(&("down", upstream, server));
            if let Some(suppressed) = crate::log::limit::admit(cause) {
                tracing::warn!(upstream, backend = server, reason = %why, suppressed, "server marked down");
            }
            self.stats.went(false, Some(why));
            let mut probe = self.probe();
            probe.passes = 0;
            probe.backoff = FIRST_BACKOFF;
            probe.next = Instant::now() + FIRST_BACKOFF;
            drop(probe);
            self.idle.clear();
        }
    }

    /// Puts the server back into rotation (logged once per transition).
    pub(crate) fn mark_up(&self, upstream: &str, server: &str) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream, backend = server, "server is up again");
            self.stats.went(true, None);
            let mut probe = self.probe();
            probe.fails = 0;
            probe.backoff = FIRST_BACKOFF;
        }
    }
}

/// One server of an upstream, as this config generation sees it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub id: BackendId,
    /// As written in the config, e.g. `127.0.0.1:9001`.
    pub name: Arc<str>,
    pub weight: u32,
    pub drain: bool,
    pub state: Arc<BackendState>,
}

/// An upstream and its servers.
#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    pub backends: Vec<Backend>,
    pub balance: Balance,
    pub affinity: Affinity,
    pub on_pinned_down: OnPinnedDown,
    pub health: Option<HealthConfig>,
    pub(crate) cursor: AtomicUsize,
    /// Smooth weighted round-robin order of `backends` indices.
    pub(crate) schedule: Vec<usize>,
    /// Random seed of this pool (for `random` balancing).
    pub(crate) seed: u64,
}

impl UpstreamPool {
    /// The backend with `id`, if this generation still has it.
    pub fn backend(&self, id: BackendId) -> Option<&Backend> {
        self.backends.iter().find(|b| b.id == id)
    }
}

/// Keeps each server's [`BackendState`] across reloads.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    states: Mutex<HashMap<(String, SocketAddr), Arc<BackendState>>>,
}

impl BackendRegistry {
    /// Builds the pools of a config generation, reusing the state of servers seen before
    /// and forgetting servers no longer named.
    pub fn build(&self, upstreams: &[UpstreamConfig]) -> Vec<Arc<UpstreamPool>> {
        let mut states = crate::lock(&self.states);
        let mut next = HashMap::new();
        let pools = upstreams
            .iter()
            .map(|up| {
                let backends = up
                    .servers
                    .iter()
                    .map(|server| {
                        let key = (up.name.clone(), server.addr);
                        let state = states
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(BackendState::new(server.addr)));
                        next.insert(key, state.clone());
                        Backend {
                            id: BackendId::of(&up.name, &server.name),
                            name: server.name.as_str().into(),
                            weight: server.weight,
                            drain: server.drain,
                            state,
                        }
                    })
                    .collect();
                let weights: Vec<u32> = up.servers.iter().map(|s| s.weight).collect();
                Arc::new(UpstreamPool {
                    name: up.name.clone(),
                    schedule: balancer::schedule(&weights),
                    seed: u64::from_le_bytes(crate::random::random_bytes::<8>().unwrap_or([7; 8])),
                    backends,
                    balance: up.balance,
                    affinity: up.affinity,
                    on_pinned_down: up.on_pinned_down,
                    health: up.health.clone(),
                    cursor: AtomicUsize::new(0),
                })
            })
            .collect();
        *states = next;
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_id_is_stable_and_distinct() {
        assert_eq!(
            BackendId::of("app", "127.0.0.1:9001"),
            BackendId::of("app", "127.0.0.1:9001")
        );
        assert_ne!(
            BackendId::of("app", "127.0.0.1:9001"),
            BackendId::of("app", "127.0.0.1:9002")
        );
        assert_ne!(
            BackendId::of("a", "pp/x:1"),
            BackendId::of("app", "x:1"),
            "the separator keeps names apart"
        );
    }
}
