//! Choosing a server for a request that has no pinned server. Synchronous, no IO, no
//! locks: a pool's cursor is one atomic.
//!
//! Candidates are the healthy servers not yet tried for this request. Draining servers
//! are used only when no other healthy server is left; unhealthy ones never (the caller
//! answers 503).
//! - `round_robin`: smooth weighted round robin over a schedule computed once per config
//!   (the nginx sequence: weights 5,1,1 give a,a,b,a,c,a,a).
//! - `least_conn`: fewest requests in flight relative to weight; ties rotate.
//! - `random`: power of two random choices, the less loaded of two weighted draws.

use std::sync::atomic::Ordering;

use super::{Backend, BackendId, UpstreamPool};
use crate::config::Balance;

/// The smooth weighted round-robin order of server indices for `weights` (one full
/// period, `sum(weights)` long, capped at 10,000 entries).
pub(crate) fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let period = usize::try_from(total).unwrap_or(0).min(10_000);
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(period);
    for _ in 0..period {
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if let Some(c) = current.get_mut(i) {
                *c += i64::from(*w);
            }
            let better = match best {
                None => true,
                Some(b) => current.get(i) > current.get(b),
            };
            if better {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            if let Some(c) = current.get_mut(b) {
                *c -= total;
            }
            order.push(b);
        }
    }
    order
}

/// splitmix64: a fast, well-mixed sequence from a counter (no global RNG needed).
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Picks a server by the pool's balancing policy, skipping `exclude`.
pub(crate) fn pick<'a>(pool: &'a UpstreamPool, exclude: &[BackendId]) -> Option<&'a Backend> {
    let usable = |b: &&Backend, skip_draining: bool| {
        b.state.is_healthy() && !exclude.contains(&b.id) && !(skip_draining && b.drain)
    };
    pick_with(pool, |b| usable(b, true)).or_else(|| pick_with(pool, |b| usable(b, false)))
}

fn pick_with<'a>(pool: &'a UpstreamPool, ok: impl Fn(&&'a Backend) -> bool) -> Option<&'a Backend> {
    let n = pool.backends.len();
    if n == 0 {
        return None;
    }
    let tick = pool.cursor.fetch_add(1, Ordering::Relaxed);
    match pool.balance {
        Balance::RoundRobin => {
            let len = pool.schedule.len().max(1);
            (0..len)
                .filter_map(|i| pool.schedule.get((tick + i) % len))
                .filter_map(|&i| pool.backends.get(i))
                .find(|b| ok(b))
                // A schedule cut at its cap may omit a server: fall back to a scan.
                .or_else(|| pool.backends.iter().find(|b| ok(b)))
        }
        Balance::LeastConn => (0..n)
            .filter_map(|i| pool.backends.get((tick + i) % n))
            .filter(|b| ok(b))
            .min_by_key(|b| load(b)),
        Balance::Random => {
            let candidates: Vec<&Backend> = pool.backends.iter().filter(|b| ok(b)).collect();
            let total: u64 = candidates.iter().map(|b| u64::from(b.weight)).sum();
            if total == 0 {
                return None;
            }
            let draw = |seed: u64| {
                let mut r = mix64(seed) % total;
                candidates.iter().copied().find(|b| {
                    let w = u64::from(b.weight);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
            };
            let seed = pool.seed ^ (tick as u64);
            match (draw(seed), draw(seed ^ 0x5555_5555_5555_5555)) {
                (Some(a), Some(b)) => Some(if load(b) < load(a) { b } else { a }),
                (a, b) => a.or(b),
            }
        }
    }
}

/// In-flight requests scaled by weight (×1000 to stay in integers).
fn load(backend: &Backend) -> u64 {
    let in_flight = backend.state.in_flight.load(Ordering::Relaxed) as u64;
    in_flight * 1000 / u64::from(backend.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_schedule() {
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(schedule(&[2, 1]), vec![0, 1, 0]);
    }
}
