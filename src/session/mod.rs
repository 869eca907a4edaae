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

/// Where session tokens and ids come from (see `crate::random`); re-exported for the
/// callers that draw a [`PublicId`] or [`Token`].
pub use crate::random::{random_bytes, RandomError};
pub use cookie::{CookieCache, CookieCodec};
pub use store::{
    MemoryStore, RedisStore, SessionBackend, SessionIndex, SessionInfo, SessionStore, Sessions,
    StoreError, Sweep,
};

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

/// Unix milliseconds now, from the system clock (the request path reads
/// `AppState::clock` instead, which a test may move).
pub use crate::clock::unix_ms as now_ms;
