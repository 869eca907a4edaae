//! Choosing a server among an upstream's healthy candidates. Synchronous and pure apart
//! from the round-robin cursor; never blocks.

use std::sync::atomic::Ordering;

use super::{Backend, BackendId, UpstreamPool};

/// Picks a server for a request that has no pinned server, skipping `exclude`
/// (servers already tried for this request) and unhealthy or draining servers.
/// A draining server is used only when no other healthy server is left; an unhealthy
/// one never (the caller answers 503).
pub(crate) fn pick<'a>(pool: &'a UpstreamPool, exclude: &[BackendId]) -> Option<&'a Backend> {
    let n = pool.backends.len();
    if n == 0 {
        return None;
    }
    let start = pool.cursor.fetch_add(1, Ordering::Relaxed);
    let candidates = |skip_draining: bool| {
        (0..n)
            .filter_map(move |i| pool.backends.get((start + i) % n))
            .filter(move |b| !exclude.contains(&b.id))
            .filter(|b| b.state.is_healthy())
            .filter(move |b| !(skip_draining && b.drain))
    };
    candidates(true).next().or_else(|| candidates(false).next())
}
