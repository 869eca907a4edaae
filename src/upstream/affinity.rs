//! Which server a session's request goes to. Pure: no IO; health is read from atomics.
//!
//! - `sticky`: the session's pinned server while it is healthy (even when draining). A
//!   new session gets a server from the balancer. When the pinned server is down or gone
//!   the session moves (or, with `on_pinned_down = "fail"`, the request is refused) to
//!   the server that rendezvous hashing of its public id picks among the usable ones, so
//!   that concurrent requests of the session all agree on the same new server.
//! - `hash`: rendezvous (highest random weight) hashing of the session's public id over
//!   the usable servers: every instance picks the same server with no shared state, and
//!   removing one of N servers moves only the sessions that were on it (about 1/N). The
//!   session remembers its last server, so a move is reported once, and a draining
//!   server keeps the sessions it already has.
//! - `none`, and requests without a session: the balancer.

use super::balancer::{self, mix64};
use super::{Backend, BackendId, UpstreamPool};
use crate::config::{Affinity, OnPinnedDown};
/// The affinity-relevant part of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionKey {
    /// The session's public id (its bytes: upstream does not import the session
    /// layer, which imports [`BackendId`] from here).
    pub(crate) public_id: [u8; 16],
    pub(crate) pinned: Option<BackendId>,
}

/// Where a request goes.
#[derive(Debug)]
pub(crate) enum Choice<'a> {
    /// This server. `repinned`: the session's server was down or gone and it moved.
    Server {
        backend: &'a Backend,
        repinned: bool,
    },
    /// The pinned server is down and the upstream refuses to move sessions.
    PinnedDown,
    /// No usable server.
    NoServer,
}

/// Chooses the server for a request of `session` (if any), skipping `exclude`.
pub(crate) fn choose<'a>(
    pool: &'a UpstreamPool,
    session: Option<SessionKey>,
    exclude: &[BackendId],
) -> Choice<'a> {
    let fresh = |repinned: bool| match balancer::pick(pool, exclude) {
        Some(backend) => Choice::Server { backend, repinned },
        None => Choice::NoServer,
    };
    let Some(session) = session else {
        return fresh(false);
    };
    let key = hash_key(&session.public_id);
    let usable = |b: &Backend| {
        b.state.is_healthy()
            && !exclude.contains(&b.id)
            && (!b.drain || session.pinned == Some(b.id))
    };
    // The session's new home when it must move: the same for every request of it.
    let moved = || match rendezvous(pool, key, usable) {
        Some(backend) => Choice::Server {
            backend,
            repinned: true,
        },
        None => Choice::NoServer,
    };
    match pool.affinity {
        Affinity::None => fresh(false),
        Affinity::Sticky => {
            let Some(pinned) = session.pinned else {
                return fresh(false);
            };
            match pool.backend(pinned) {
                Some(b) if b.state.is_healthy() && !exclude.contains(&b.id) => Choice::Server {
                    backend: b,
                    repinned: false,
                },
                _ if pool.on_pinned_down == OnPinnedDown::Fail => Choice::PinnedDown,
                _ => moved(),
            }
        }
        Affinity::Hash => match rendezvous(pool, key, usable) {
            Some(backend) => Choice::Server {
                backend,
                repinned: session.pinned.is_some_and(|p| p != backend.id),
            },
            None => Choice::NoServer,
        },
    }
}

fn hash_key(id: &[u8; 16]) -> u64 {
    let (a, b) = id.split_at(8);
    let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    word(a) ^ word(b).rotate_left(32)
}

/// Highest weighted random score among the servers `keep` accepts:
/// `weight / -ln(u)`, `u` uniform in (0, 1) from the hash of key and server.
fn rendezvous(pool: &UpstreamPool, key: u64, keep: impl Fn(&Backend) -> bool) -> Option<&Backend> {
    pool.backends
        .iter()
        .filter(|b| keep(b))
        .map(|b| {
            let h = mix64(key ^ mix64(b.id.0));
            // 53 random bits, shifted off zero so ln() is finite.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (b, f64::from(b.weight) / -u.ln())
        })
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, ServerConfig, UpstreamConfig};
    use crate::upstream::BackendRegistry;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn pool(n: usize, affinity: Affinity, on_down: OnPinnedDown) -> Arc<UpstreamPool> {
        let servers = (0..n)
            .map(|i| ServerConfig {
                name: format!("10.0.0.{i}:80"),
                addr: format!("10.0.0.{i}:80").parse().unwrap(),
                weight: 1,
                drain: false,
            })
            .collect();
        let up = UpstreamConfig {
            name: "app".into(),
            servers,
            balance: Balance::RoundRobin,
            affinity,
            on_pinned_down: on_down,
            health: None,
        };
        BackendRegistry::default().build(&[up]).remove(0)
    }

    fn key(i: u32) -> SessionKey {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id[4..8].copy_from_slice(&mix64(u64::from(i)).to_le_bytes()[..4]);
        SessionKey {
            public_id: id,
            pinned: None,
        }
    }

    fn server(choice: Choice<'_>) -> BackendId {
        match choice {
            Choice::Server { backend, .. } => backend.id,
            other => panic!("no server: {other:?}"),
        }
    }

    #[test]
    fn rendezvous_moves_about_one_nth_when_a_server_goes() {
        let five = pool(5, Affinity::Hash, OnPinnedDown::Repin);
        let before: Vec<BackendId> = (0..10_000)
            .map(|i| server(choose(&five, Some(key(i)), &[])))
            .collect();
        // Spread: each of 5 servers gets roughly 2,000 of the 10,000 keys.
        for b in &five.backends {
            let n = before.iter().filter(|&&id| id == b.id).count();
            assert!((1_600..2_400).contains(&n), "{n}");
        }
        // Server 2 goes down: only its keys move.
        let gone = five.backends[2].id;
        five.backends[2]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        let mut moved = 0;
        for i in 0..10_000u32 {
            let now = server(choose(&five, Some(key(i)), &[]));
            let was = before[i as usize];
            if now != was {
                moved += 1;
                assert_eq!(was, gone, "a key on a surviving server moved");
            }
        }
        assert!((1_600..2_400).contains(&moved), "moved {moved} of 10000");
        // A sixth server joins: only about 1/6 move, all of them to the new server.
        let six = pool(6, Affinity::Hash, OnPinnedDown::Repin);
        let mut moved = 0;
        for i in 0..10_000u32 {
            let now = server(choose(&six, Some(key(i)), &[]));
            if now != before[i as usize] {
                moved += 1;
                assert_eq!(now, six.backends[5].id);
            }
        }
        assert!((1_300..2_000).contains(&moved), "moved {moved} of 10000");
    }

    #[test]
    fn hash_agrees_between_independent_instances() {
        // Two proxies build their pools separately (own registry, own random seeds) from
        // the same server list: a session goes to the same server on either.
        let first = pool(4, Affinity::Hash, OnPinnedDown::Repin);
        let second = pool(4, Affinity::Hash, OnPinnedDown::Repin);
        for i in 0..1_000 {
            assert_eq!(
                server(choose(&first, Some(key(i)), &[])),
                server(choose(&second, Some(key(i)), &[]))
            );
        }
    }

    #[test]
    fn hash_marks_repinned_when_home_is_down() {
        let p = pool(3, Affinity::Hash, OnPinnedDown::Repin);
        let mut k = key(7);
        let home = server(choose(&p, Some(k), &[]));
        // The session remembers where it was served.
        k.pinned = Some(home);
        assert!(matches!(
            choose(&p, Some(k), &[]),
            Choice::Server {
                repinned: false,
                ..
            }
        ));
        let b = p.backends.iter().find(|b| b.id == home).unwrap();
        b.state.healthy.store(false, Ordering::Relaxed);
        match choose(&p, Some(k), &[]) {
            Choice::Server { backend, repinned } => {
                assert_ne!(backend.id, home);
                assert!(repinned);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sticky_keeps_pin_and_repins_or_fails_when_down() {
        let p = pool(3, Affinity::Sticky, OnPinnedDown::Repin);
        let mut k = key(1);
        k.pinned = Some(p.backends[1].id);
        for _ in 0..10 {
            assert_eq!(server(choose(&p, Some(k), &[])), p.backends[1].id);
        }
        // Tried and failed in this request: move.
        match choose(&p, Some(k), &[p.backends[1].id]) {
            Choice::Server { backend, repinned } => {
                assert_ne!(backend.id, p.backends[1].id);
                assert!(repinned);
            }
            other => panic!("{other:?}"),
        }
        p.backends[1].state.healthy.store(false, Ordering::Relaxed);
        assert!(matches!(
            choose(&p, Some(k), &[]),
            Choice::Server { repinned: true, .. }
        ));
        // Concurrent requests of a moved session agree on its new server.
        let first = server(choose(&p, Some(k), &[]));
        for _ in 0..20 {
            assert_eq!(server(choose(&p, Some(k), &[])), first);
        }
        let strict = pool(3, Affinity::Sticky, OnPinnedDown::Fail);
        k.pinned = Some(strict.backends[0].id);
        strict.backends[0]
            .state
            .healthy
            .store(false, Ordering::Relaxed);
        assert!(matches!(choose(&strict, Some(k), &[]), Choice::PinnedDown));
        // A pin to a server gone from the config also moves.
        k.pinned = Some(BackendId(12345));
        assert!(matches!(
            choose(&p, Some(k), &[]),
            Choice::Server { repinned: true, .. }
        ));
    }

    #[test]
    fn no_healthy_server_is_no_server() {
        let p = pool(2, Affinity::None, OnPinnedDown::Repin);
        for b in &p.backends {
            b.state.healthy.store(false, Ordering::Relaxed);
        }
        assert!(matches!(choose(&p, None, &[]), Choice::NoServer));
    }
}
