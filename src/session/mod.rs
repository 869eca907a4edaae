//! Sessions: the model, the cookie that carries a session's token, and the stores that
//! keep sessions.
//!
//! A session has a secret [`Token`] (only ever in the cookie and the store's key), a
//! [`PublicId`] (what upstreams and logs see), an optional identity, a small data map,
//! its creation and last-use times, and the server it is pinned to. The request path
//! talks to a store only through [`SessionStore`].

pub mod cookie;
pub mod record;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::upstream::BackendId;

pub use cookie::{CookieCache, CookieCodec};
pub use store::{MemoryStore, RedisStore, SessionBackend, SessionInfo, SessionStore, StoreError};

/// The secret part of a session: 256 bits from the OS CSPRNG. Never logged, never sent
/// upstream.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A session's public id: 128 random bits, independent of the token. Safe to log and to
/// hand to upstreams; knowing it grants nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicId(pub [u8; 16]);

impl PublicId {
    /// base64url without padding (22 characters).
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl std::fmt::Debug for PublicId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicId({})", self.encode())
    }
}

/// Who the session belongs to, as the upstream said with the control headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Non-empty when logged in; a valid header value.
    pub user: Option<Box<str>>,
    /// Comma-separated, each a valid header value.
    pub roles: Option<Box<str>>,
}

/// A session as the request path sees it (a snapshot; changes are written back with
/// [`SessionStore::save`] or [`SessionStore::regenerate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub public_id: PublicId,
    /// Unix milliseconds; restarts when a user logs in.
    pub created: u64,
    /// Unix milliseconds of the last request.
    pub last_seen: u64,
    /// The server this session is pinned to (affinity).
    pub pinned: Option<BackendId>,
    /// `None` for an anonymous session (the common case: kept small).
    pub identity: Option<Arc<Identity>>,
    /// Application data set with the `set_data` control header, in insertion order.
    pub data: Option<Arc<Vec<(String, String)>>>,
    /// Fingerprints of the client that started the session (hijack signals); `None`
    /// when not recorded.
    pub origin: Option<ClientOrigin>,
}

/// What a session remembers of the client that started it, as two 32-bit
/// fingerprints (small enough to keep in every session): one of the User-Agent's
/// product family, one of the client's network. Compared, never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientOrigin {
    pub agent: u32,
    pub network: u32,
}

impl Session {
    /// A fresh anonymous session.
    pub fn new(public_id: PublicId, now: u64) -> Session {
        Session {
            public_id,
            created: now,
            last_seen: now,
            pinned: None,
            identity: None,
            data: None,
            origin: None,
        }
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.user.as_deref())
    }

    /// The roles, if any.
    pub fn roles(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.roles.as_deref())
    }
}

/// Idle and absolute lifetimes, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub idle_ms: u64,
    pub absolute_ms: u64,
    /// A store may skip recording a session's use when its `last_seen` moved less than
    /// this (`session.touch_interval`, default 10 % of the idle timeout): a read-mostly
    /// session then costs one read per request, not a read and a write.
    pub touch_ms: u64,
}

impl Expiry {
    /// From the configured durations.
    pub fn new(idle: Duration, absolute: Duration, touch: Duration) -> Expiry {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Expiry {
            idle_ms: ms(idle),
            absolute_ms: ms(absolute),
            touch_ms: ms(touch),
        }
    }

    /// The session config's `idle_timeout`, `absolute_timeout` and `touch_interval`.
    pub fn of(config: &crate::config::SessionConfig) -> Expiry {
        Expiry::new(
            config.idle_timeout,
            config.absolute_timeout,
            config.touch_interval,
        )
    }

    /// Milliseconds until a session created and last seen at these times expires
    /// (the lesser of its idle and absolute remainders; 0 when expired). Stores with
    /// native expiry (Redis TTLs, a row's `expires`) use it.
    pub fn remaining(&self, created: u64, last_seen: u64, now: u64) -> u64 {
        let idle = last_seen.saturating_add(self.idle_ms).saturating_sub(now);
        let absolute = created.saturating_add(self.absolute_ms).saturating_sub(now);
        idle.min(absolute)
    }

    /// Whether a use at `now` should be recorded (see [`Expiry::touch_ms`]).
    pub fn touch_due(&self, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) >= self.touch_ms
    }

    /// Whether a session created and last seen at these times (unix ms) is live at
    /// `now`: the one expiry rule every store applies.
    pub fn allows(&self, created: u64, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) < self.idle_ms
            && now.saturating_sub(created) < self.absolute_ms
    }
}

/// Fresh randomness from the OS CSPRNG. A failure of the OS generator is not
/// recoverable for a security component, so it is reported, never papered over.
///
/// The bytes come from the kernel in blocks of [`RANDOM_BLOCK`], kept per thread and
/// handed out once (each byte is zeroed as it is taken): a new session draws 48 bytes
/// (public id and token): one `getrandom(2)` per draw cost 306 ns each, from the block
/// 49 ns (16 bytes) and 97 ns (32 bytes); a whole new session 1.48 -> 0.83 µs
/// (`benches/new_session.rs`).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    if N > RANDOM_BLOCK {
        os_random(&mut bytes)?;
        return Ok(bytes);
    }
    RANDOM.with(|cell| {
        let mut pool = cell.borrow_mut();
        if pool.taken + N > RANDOM_BLOCK {
            os_random(&mut pool.block)?;
            pool.taken = 0;
        }
        let start = pool.taken;
        if let Some(source) = pool.block.get_mut(start..start + N) {
            bytes.copy_from_slice(source);
            source.fill(0);
        }
        pool.taken += N;
        Ok(bytes)
    })
}

/// Bytes fetched from the kernel at once by [`random_bytes`].
const RANDOM_BLOCK: usize = 512;

/// A thread's unused OS randomness.
struct RandomPool {
    block: [u8; RANDOM_BLOCK],
    /// Bytes already handed out (and zeroed) from the front of `block`.
    taken: usize,
}

thread_local! {
    static RANDOM: std::cell::RefCell<RandomPool> = const {
        std::cell::RefCell::new(RandomPool { block: [0; RANDOM_BLOCK], taken: RANDOM_BLOCK })
    };
}

fn os_random(out: &mut [u8]) -> Result<(), StoreError> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(out)
        .map_err(|_| StoreError::Backend("the OS random generator failed".into()))
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_draws_differ_across_block_refills_and_large_sizes_work() {
        let mut seen = std::collections::HashSet::new();
        // 100 draws of 48 bytes cross several 512-byte blocks.
        for _ in 0..100 {
            let token = random_bytes::<32>().unwrap();
            let id = random_bytes::<16>().unwrap();
            assert_ne!(token, [0; 32]);
            assert_ne!(id, [0; 16]);
            assert!(seen.insert(token.to_vec()), "a token repeated");
            assert!(seen.insert(id.to_vec()), "an id repeated");
        }
        let big = random_bytes::<1024>().unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }
}
