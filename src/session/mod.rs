//! Sessions: the model, the cookie that carries a session's token, and the stores that
//! keep sessions.
//!
//! A session has a secret [`Token`] (only ever in the cookie and the store's key), a
//! [`PublicId`] (what upstreams and logs see), an optional identity, a small data map,
//! its creation and last-use times, and the server it is pinned to. The request path
//! talks to a store only through [`SessionStore`].

pub mod cookie;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::upstream::BackendId;

pub use cookie::{CookieCache, CookieCodec};
pub use memory::MemoryStore;

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
}

impl Expiry {
    /// From the configured durations.
    pub fn new(idle: Duration, absolute: Duration) -> Expiry {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Expiry {
            idle_ms: ms(idle),
            absolute_ms: ms(absolute),
        }
    }

    /// Whether a session created and last seen at these times (unix ms) is live at
    /// `now`: the one expiry rule every store applies.
    pub fn allows(&self, created: u64, last_seen: u64, now: u64) -> bool {
        now.saturating_sub(last_seen) < self.idle_ms
            && now.saturating_sub(created) < self.absolute_ms
    }
}

/// What the admin API lists about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub public_id: PublicId,
    pub user: Option<String>,
    pub roles: Option<String>,
    pub created: u64,
    pub last_seen: u64,
}

/// A session store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer within its deadline.
    #[error("session store timed out")]
    Timeout,
    /// The store is full of sessions that may not be evicted.
    #[error("session store is full")]
    Full,
    /// The store's backend failed (connection lost, protocol error).
    #[error("session store backend failed: {0}")]
    Backend(String),
}

/// Where sessions live. Every method is one round trip at most; the call site wraps
/// each call in a timeout. Implementations enforce expiry on read.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The live session for `token`, recording its use at `now` (cheaply: a store may
    /// skip writing `last_seen` when it moved less than a second). `None` when
    /// unknown or expired.
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError>;

    /// Stores a new session under a fresh token and returns the token.
    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError>;

    /// Replaces the stored session (identity, data, pin) if it still exists.
    async fn save(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<(), StoreError>;

    /// Moves the session to a fresh token and stores `session` there; `old` is dead at
    /// once. Used on login and privilege change (session fixation defence).
    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError>;

    /// Removes the session; unknown tokens are fine.
    async fn destroy(&self, token: &Token) -> Result<(), StoreError>;

    /// Removes every session of `user`; returns how many.
    async fn destroy_user(&self, user: &str) -> Result<usize, StoreError>;

    /// Removes the session with this public id; returns whether one existed.
    async fn destroy_public(&self, id: &PublicId) -> Result<bool, StoreError>;

    /// The live sessions of `user`.
    async fn list_user(
        &self,
        user: &str,
        now: u64,
        expiry: Expiry,
    ) -> Result<Vec<SessionInfo>, StoreError>;

    /// How many sessions are stored (live or not yet reaped).
    async fn count(&self) -> Result<usize, StoreError>;
}

/// Fresh randomness from the OS CSPRNG. A failure of the OS generator is not
/// recoverable for a security component, so it is reported, never papered over.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StoreError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Backend("the OS random generator failed".into()))?;
    Ok(bytes)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
