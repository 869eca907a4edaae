//! Where sessions live: the [`SessionStore`] trait and its engines, one file each.
//!
//! Server-side stores (memory, Redis, PostgreSQL, Memcached) keep a session under its secret
//! [`Token`]; the browser's cookie carries only that token, MAC'd (see
//! `session::cookie`). Every method is one round trip at most; the request path wraps
//! each call in the store's timeout and turns a failure into a 503, never into an
//! anonymous session in place of a logged-in one.
//!
//! Implementations enforce expiry on read (a session past its idle or absolute limit
//! is `None`). Three narrow traits say what a caller may do: the request path's
//! [`SessionStore`] (load, create, save, regenerate, destroy, ping), the admin API's
//! [`SessionIndex`] (by user, by public id, count) and the upkeep task's [`Sweep`]; a
//! backend has only the ones it can serve ([`Sessions`]). `tests/store_conformance.rs`
//! runs one suite against every engine.

pub mod kv;
pub mod memcached;
pub mod memory;
pub mod persist;
pub mod postgres;
pub mod redis;
pub mod sealed;

use super::{Expiry, PublicId, Session, Token};

pub use self::redis::RedisStore;
pub use kv::{KeyValue, MemoryKv};
pub use memcached::MemcachedStore;
pub use memory::MemoryStore;
pub use persist::Snapshots;
pub use postgres::PostgresStore;
pub use sealed::{SealError, SealedCodec};

use std::sync::Arc;

use crate::config::{SessionConfig, StoreKind};

/// Where the sessions of this process live: decided once at start from
/// `session.store`, held for the life of the process. A reload never changes it (a
/// reload that changes `session.store` is refused), and no request path asks the
/// reloaded config which store is live: they match on this.
#[derive(Debug, Clone)]
pub enum SessionBackend {
    /// A server keeps each session under a token the cookie carries (memory, Redis,
    /// PostgreSQL).
    Server(Arc<dyn SessionStore>),
    /// `store = "cookie"`: the cookie carries the whole session sealed
    /// ([`SealedCodec`]); no server keeps anything, so there is nothing to list, end,
    /// count or sweep.
    Sealed,
}

impl SessionBackend {
    /// Why the sealed backend cannot do what needs a server-side store (the admin
    /// API's 501, "logout everywhere").
    pub const NOT_KEPT: &'static str =
        "store = \"cookie\" keeps sessions in the browsers' cookies, not on a server";

    /// The server-side store, if sessions are kept on a server.
    pub fn store(&self) -> Option<&Arc<dyn SessionStore>> {
        match self {
            SessionBackend::Server(store) => Some(store),
            SessionBackend::Sealed => None,
        }
    }
}

/// What a proxy holds of its session backend, each side typed by what it may do: the
/// request path's [`SessionBackend`], the admin API's [`SessionIndex`] and the upkeep
/// task's [`Sweep`]. A side a backend does not have is `None` (the sealed cookie has
/// neither; Redis expires sessions itself, so it has no sweep).
#[derive(Debug, Clone)]
pub struct Sessions {
    pub backend: SessionBackend,
    pub index: Option<Arc<dyn SessionIndex>>,
    pub sweep: Option<Arc<dyn Sweep>>,
    /// Small values with a TTL where the sessions are ([`KeyValue`]): shared by the
    /// instances that share Redis, PostgreSQL or Memcached, this process's own otherwise.
    pub kv: Arc<dyn KeyValue>,
}

impl Sessions {
    /// The memory store: an index, a sweep, and this process's own keys.
    pub fn memory(store: Arc<MemoryStore>) -> Sessions {
        Sessions {
            backend: SessionBackend::Server(store.clone()),
            index: Some(store.clone()),
            sweep: Some(store),
            kv: Arc::new(MemoryKv::new()),
        }
    }

    /// A shared server-side store that keeps an index and needs sweeping (PostgreSQL).
    pub fn swept<S: SessionStore + SessionIndex + Sweep + KeyValue + 'static>(
        store: Arc<S>,
    ) -> Sessions {
        Sessions {
            backend: SessionBackend::Server(store.clone()),
            index: Some(store.clone()),
            sweep: Some(store.clone()),
            kv: store,
        }
    }

    /// A shared server-side store that keeps an index and expires sessions itself
    /// (Redis, Memcached).
    pub fn self_expiring<S: SessionStore + SessionIndex + KeyValue + 'static>(
        store: Arc<S>,
    ) -> Sessions {
        Sessions {
            backend: SessionBackend::Server(store.clone()),
            index: Some(store.clone()),
            sweep: None,
            kv: store,
        }
    }

    /// `store = "cookie"`: nothing kept server-side; keys are this process's own.
    pub fn sealed() -> Sessions {
        Sessions {
            backend: SessionBackend::Sealed,
            index: None,
            sweep: None,
            kv: Arc::new(MemoryKv::new()),
        }
    }
}

/// The backend a proxy runs with, and the memory store's snapshots when `persist` is on.
#[derive(Debug)]
pub struct Opened {
    pub sessions: Sessions,
    pub snapshots: Option<Snapshots>,
}

/// Opens the backend `config` names (connecting to its server, if it has one; loading
/// the memory store's snapshot, if `persist` is set).
pub async fn open(config: &SessionConfig) -> Result<Opened, StoreError> {
    if let (StoreKind::Memory, Some(path)) = (&config.store, &config.persist) {
        let snapshots = Snapshots {
            store: Arc::new(MemoryStore::new(config.max_sessions)),
            path: path.clone(),
            interval: config.persist_interval,
        };
        let expiry = Expiry::of(config);
        let loading = snapshots.clone();
        tokio::task::spawn_blocking(move || loading.load(expiry))
            .await
            .map_err(|e| StoreError::backend("load the snapshot", e))?;
        return Ok(Opened {
            sessions: Sessions::memory(snapshots.store.clone()),
            snapshots: Some(snapshots),
        });
    }
    let sessions = match &config.store {
        StoreKind::Memory => Sessions::memory(Arc::new(MemoryStore::new(config.max_sessions))),
        StoreKind::Cookie => Sessions::sealed(),
        StoreKind::Redis(redis) => {
            Sessions::self_expiring(Arc::new(RedisStore::connect(redis).await?))
        }
        StoreKind::Postgres(postgres) => {
            Sessions::swept(Arc::new(PostgresStore::open(postgres).await?))
        }
        StoreKind::Memcached(memcached) => {
            Sessions::self_expiring(Arc::new(MemcachedStore::connect(memcached).await))
        }
    };
    Ok(Opened {
        sessions,
        snapshots: None,
    })
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

impl From<&Session> for SessionInfo {
    fn from(session: &Session) -> SessionInfo {
        SessionInfo {
            public_id: session.public_id,
            user: session.user().map(str::to_string),
            roles: session.roles().map(str::to_string),
            created: session.created,
            last_seen: session.last_seen,
        }
    }
}

/// A by-user index read back with its sessions (`None`: gone or no longer that user's):
/// the members to drop from the index, and the live sessions to list. For the stores
/// that keep the index as an item of its own beside the sessions (Redis, Memcached).
pub(crate) fn read_index(
    members: &[(String, Option<Session>)],
    now: u64,
    expiry: Expiry,
) -> (Vec<&str>, Vec<SessionInfo>) {
    let stale = members
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(r, _)| r.as_str())
        .collect();
    let live = members
        .iter()
        .filter_map(|(_, session)| session.as_ref())
        .filter(|s| expiry.allows(s.created, s.last_seen, now))
        .map(SessionInfo::from)
        .collect();
    (stale, live)
}

/// A session store failed. `Debug` redacts like `Display` (a `?error` in a log line
/// shows no password either).
#[derive(thiserror::Error)]
pub enum StoreError {
    /// The store did not answer within its deadline.
    #[error("session store timed out")]
    Timeout,
    /// The store is full of sessions that may not be evicted.
    #[error("session store is full")]
    Full,
    /// The store's backend failed (connection lost, protocol error) during `op`; the
    /// underlying error is kept as the source. The text names the operation and the
    /// cause with connection secrets redacted (`crate::error_chain::redact`).
    #[error("session store backend failed ({op}): {}", crate::error_chain::redact(&.source.to_string()))]
    Backend {
        /// The operation that failed (`load`, `create`, `connect`, ...).
        op: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl std::fmt::Debug for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Timeout => f.write_str("Timeout"),
            StoreError::Full => f.write_str("Full"),
            StoreError::Backend { op, source } => f
                .debug_struct("Backend")
                .field("op", op)
                .field(
                    "source",
                    &crate::error_chain::redact(&format!("{source:?}")),
                )
                .finish(),
        }
    }
}

impl StoreError {
    /// A backend failure of `op` caused by `source` (an error, or a message).
    pub fn backend(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Backend {
            op,
            source: source.into(),
        }
    }
}

/// Where sessions live. Every method is one round trip at most; the call site wraps
/// each call in a timeout. Implementations enforce expiry on read.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The live session for `token`, recording its use at `now` (at most once per
    /// `expiry.touch_ms`: a read-mostly session costs one read). `None` when unknown
    /// or expired.
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError>;

    /// Stores a new session under a fresh token (never overwriting another: NX) and
    /// returns the token.
    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError>;

    /// Replaces the stored session (identity, data, pin) if it still exists (XX).
    async fn save(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<(), StoreError>;

    /// Moves the session to a fresh token and stores `session` there; `old` is dead at
    /// once, atomically. Used on login and privilege change (session fixation defence).
    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError>;

    /// Removes the session; unknown tokens are fine.
    async fn destroy(&self, token: &Token) -> Result<(), StoreError>;

    /// Whether the store answers (for `/readyz`). Stores without a server are always
    /// ready.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store was last found not answering on a fresh connection (its
    /// server down, refusing or hung; one worker's broken connection does not count):
    /// an atomic load, cheap enough for every request. The request path then checks
    /// with [`SessionStore::ping`] before it starts a new session, so a request that
    /// would end in a 503 at commit gets it before reaching the upstream.
    fn known_down(&self) -> bool {
        false
    }
}

/// The admin side of a server-side store: find and end sessions by user or public id,
/// count them. A backend may not have one (the sealed cookie keeps nothing to list):
/// the admin API then answers 501 and "logout everywhere" is logged as not possible.
#[async_trait::async_trait]
pub trait SessionIndex: Send + Sync + std::fmt::Debug {
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

/// Upkeep of a server-side store, run periodically off the request path.
#[async_trait::async_trait]
pub trait Sweep: Send + Sync + std::fmt::Debug {
    /// Background upkeep, called periodically off the request path: remove expired
    /// sessions the engine does not expire by itself. Returns how many were removed.
    async fn sweep(&self, now: u64, expiry: Expiry) -> Result<usize, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_names_its_operation_keeps_its_cause_and_hides_passwords() {
        let cause = std::io::Error::other("cannot reach redis://app:s3cret@db:6379/0");
        let error = StoreError::backend("connect", cause);
        let text = error.to_string();
        assert!(text.contains("(connect)"), "{text}");
        assert!(text.contains("redis://app:***@db:6379/0"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!format!("{error:?}").contains("s3cret"), "{error:?}");
        let source = std::error::Error::source(&error).unwrap();
        assert!(
            source.to_string().contains("s3cret"),
            "the cause is kept whole"
        );
        let chain = crate::error_chain::display_chain(&error);
        assert!(!chain.contains("s3cret"), "{chain}");
        assert_eq!(chain.matches("db:6379").count(), 1, "{chain}");
    }

    fn config(store: StoreKind) -> SessionConfig {
        SessionConfig {
            cookie: "__Host-s".into(),
            same_site: crate::config::SameSite::Lax,
            secure: true,
            persistent: false,
            idle_timeout: std::time::Duration::from_secs(60),
            absolute_timeout: std::time::Duration::from_secs(600),
            store,
            secret: None,
            max_sessions: 10,
            previous_secrets: Vec::new(),
            persist: None,
            persist_interval: std::time::Duration::from_secs(30),
            touch_interval: std::time::Duration::from_secs(6),
        }
    }

    #[tokio::test]
    async fn each_backend_has_the_sides_it_can_serve() {
        let memory = open(&config(StoreKind::Memory)).await.unwrap().sessions;
        assert!(matches!(memory.backend, SessionBackend::Server(_)));
        assert!(memory.index.is_some() && memory.sweep.is_some());
        let sealed = open(&config(StoreKind::Cookie)).await.unwrap().sessions;
        assert!(matches!(sealed.backend, SessionBackend::Sealed));
        assert!(sealed.index.is_none() && sealed.sweep.is_none());
    }
}
