//! The embedded session store: a sharded `DashMap` keyed by token.
//!
//! Invariants:
//! - Expiry is enforced on read; a background reaper (see [`MemoryStore::reap`]) removes
//!   what nobody reads, one shard lock at a time.
//! - `max_sessions` bounds memory. At the bound, a new session evicts the least recently
//!   seen anonymous session among a sample; logged-in sessions are never evicted for
//!   it. If the sample holds none, the new session is refused (`StoreError::Full`).
//! - An anonymous entry is small (about 80 bytes of payload); identity and data live
//!   behind pointers that are null for anonymous sessions.
//! - Guards are never held across `.await` (nothing here awaits) and the map is never
//!   re-entered while a guard is held.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::{SessionIndex, SessionInfo, SessionStore, StoreError, Sweep};
use crate::random::random_bytes;
use crate::session::{ClientOrigin, Expiry, Identity, PublicId, Session, Token};
use crate::upstream::BackendId;

/// One stored session.
#[derive(Debug)]
struct Entry {
    public_id: PublicId,
    created: u64,
    /// Updated in place on every read, without a write lock.
    last_seen: AtomicU64,
    pinned: Option<BackendId>,
    origin: Option<ClientOrigin>,
    extra: Option<Box<Extra>>,
}

/// The parts an anonymous session does not have.
#[derive(Debug, Clone)]
struct Extra {
    identity: Option<Arc<Identity>>,
    data: Option<Arc<Vec<(String, String)>>>,
}

impl Entry {
    fn from_session(session: &Session) -> Entry {
        let extra = (session.identity.is_some() || session.data.is_some()).then(|| {
            Box::new(Extra {
                identity: session.identity.clone(),
                data: session.data.clone(),
            })
        });
        Entry {
            public_id: session.public_id,
            created: session.created,
            last_seen: AtomicU64::new(session.last_seen),
            pinned: session.pinned,
            origin: session.origin,
            extra,
        }
    }

    fn to_session(&self) -> Session {
        let (identity, data) = match &self.extra {
            Some(extra) => (extra.identity.clone(), extra.data.clone()),
            None => (None, None),
        };
        Session {
            public_id: self.public_id,
            created: self.created,
            last_seen: self.last_seen.load(Ordering::Relaxed),
            pinned: self.pinned,
            identity,
            data,
            origin: self.origin,
        }
    }

    fn user(&self) -> Option<&str> {
        self.extra
            .as_ref()
            .and_then(|e| e.identity.as_ref())
            .and_then(|i| i.user.as_deref())
    }

    fn is_live(&self, now: u64, expiry: Expiry) -> bool {
        expiry.allows(self.created, self.last_seen.load(Ordering::Relaxed), now)
    }
}

/// How many entries an eviction looks at.
const EVICTION_SAMPLE: usize = 32;
/// How often a creator retries eviction when racing other creators.
const EVICTION_ATTEMPTS: usize = 16;

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    sessions: DashMap<Token, Entry>,
    /// user → tokens that were bound to that user (may be stale; checked on use).
    users: DashMap<Box<str>, Vec<Token>>,
    count: AtomicUsize,
    max: usize,
}

impl MemoryStore {
    /// A store bounded to `max_sessions`.
    pub fn new(max_sessions: usize) -> MemoryStore {
        MemoryStore {
            // Many shards keep each lock short for the reaper and for writers.
            sessions: DashMap::with_shard_amount(64),
            users: DashMap::with_shard_amount(16),
            count: AtomicUsize::new(0),
            max: max_sessions.max(1),
        }
    }

    fn fresh_token(&self) -> Result<Token, StoreError> {
        random_bytes::<32>()
            .map(Token)
            .map_err(|e| StoreError::backend("draw a token", e))
    }

    fn remove(&self, token: &Token) -> Option<Entry> {
        let removed = self.sessions.remove(token).map(|(_, entry)| entry);
        if removed.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Inserts under a token that is not in use (NX); a collision draws a new token.
    /// The caller has accounted for the entry in `count`.
    fn insert_new(&self, entry: Entry) -> Result<Token, StoreError> {
        let user = entry.user().map(Box::<str>::from);
        let mut entry = Some(entry);
        for _ in 0..4 {
            let token = self.fresh_token()?;
            if let dashmap::Entry::Vacant(slot) = self.sessions.entry(token) {
                if let Some(entry) = entry.take() {
                    slot.insert(entry);
                }
                if let Some(user) = user {
                    self.users.entry(user).or_default().push(token);
                }
                return Ok(token);
            }
        }
        Err(StoreError::backend(
            "draw a token",
            "could not draw an unused token",
        ))
    }

    /// Claims room for one more session under the bound (atomically: concurrent
    /// creators can never overshoot it).
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Reserves room for a new session, evicting if the store is full: an expired
    /// session first, else the least recently seen anonymous one in a sample. Each
    /// retry samples further into the map, so concurrent creators pick different
    /// victims. `Full` when only logged-in sessions are left to evict.
    fn reserve_evicting(&self, now: u64, expiry: Expiry) -> Result<(), StoreError> {
        for attempt in 0..EVICTION_ATTEMPTS {
            if self.reserve() {
                return Ok(());
            }
            let Some(victim) = self.pick_victim(attempt * EVICTION_SAMPLE, now, expiry) else {
                return Err(StoreError::Full);
            };
            // Losing the race for this victim is fine: try again.
            self.remove(&victim);
        }
        Err(StoreError::Full)
    }

    /// The eviction victim among `EVICTION_SAMPLE` entries from `skip` on. The
    /// iterator's guards are dropped before the caller removes anything.
    fn pick_victim(&self, skip: usize, now: u64, expiry: Expiry) -> Option<Token> {
        let mut best: Option<(Token, bool, u64)> = None;
        for item in self.sessions.iter().skip(skip).take(EVICTION_SAMPLE) {
            let entry = item.value();
            let expired = !entry.is_live(now, expiry);
            if !expired && entry.extra.is_some() {
                continue;
            }
            let seen = entry.last_seen.load(Ordering::Relaxed);
            let better = match best {
                None => true,
                Some((_, best_expired, best_seen)) => {
                    (expired && !best_expired) || (expired == best_expired && seen < best_seen)
                }
            };
            if better {
                best = Some((*item.key(), expired, seen));
            }
        }
        best.map(|(token, _, _)| token)
    }

    /// Removes expired sessions, one shard at a time; returns how many. Run from a
    /// background task.
    pub fn reap(&self, now: u64, expiry: Expiry) -> usize {
        let before = self.count.load(Ordering::Relaxed);
        let mut removed = 0usize;
        self.sessions.retain(|_, entry| {
            let keep = entry.is_live(now, expiry);
            if !keep {
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed.min(before), Ordering::Relaxed);
        // Drop index entries whose sessions are gone.
        self.users.retain(|_, tokens| {
            tokens.retain(|t| self.sessions.contains_key(t));
            !tokens.is_empty()
        });
        removed
    }

    /// Every live session with its token (for the snapshot). Iterates shard by shard;
    /// run off the request threads.
    pub(crate) fn live_sessions(&self, now: u64, expiry: Expiry) -> Vec<(Token, Session)> {
        self.sessions
            .iter()
            .filter(|item| item.value().is_live(now, expiry))
            .map(|item| (*item.key(), item.value().to_session()))
            .collect()
    }

    /// Puts back a session saved under `token` (loading a snapshot). Skips it when the
    /// bound is reached or the token is taken; returns whether it was kept.
    pub(crate) fn restore(&self, token: Token, session: &Session) -> bool {
        if !self.reserve() {
            return false;
        }
        let user = session.user().map(Box::<str>::from);
        match self.sessions.entry(token) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Entry::from_session(session));
            }
            dashmap::Entry::Occupied(_) => {
                self.count.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
        }
        if let Some(user) = user {
            self.users.entry(user).or_default().push(token);
        }
        true
    }

    /// Tokens of `user` whose sessions still carry that user.
    fn tokens_of(&self, user: &str) -> Vec<Token> {
        let candidates = self
            .users
            .get(user)
            .map(|tokens| tokens.clone())
            .unwrap_or_default();
        candidates
            .into_iter()
            .filter(|t| self.sessions.get(t).is_some_and(|e| e.user() == Some(user)))
            .collect()
    }
}

#[async_trait::async_trait]
impl SessionStore for MemoryStore {
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError> {
        let live = match self.sessions.get(token) {
            None => return Ok(None),
            Some(entry) if entry.is_live(now, expiry) => {
                entry.last_seen.fetch_max(now, Ordering::Relaxed);
                Some(entry.to_session())
            }
            Some(_) => None,
        };
        if live.is_none() {
            self.remove(token);
        }
        Ok(live)
    }

    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError> {
        self.reserve_evicting(session.last_seen, expiry)?;
        self.insert_new(Entry::from_session(session))
            .inspect_err(|_| {
                self.count.fetch_sub(1, Ordering::Relaxed);
            })
    }

    async fn save(
        &self,
        token: &Token,
        session: &Session,
        _expiry: Expiry,
    ) -> Result<(), StoreError> {
        let new_user = session.user().map(Box::<str>::from);
        let mut user_changed = false;
        if let Some(mut entry) = self.sessions.get_mut(token) {
            user_changed = entry.user() != session.user();
            *entry = Entry::from_session(session);
        }
        if let (true, Some(user)) = (user_changed, new_user) {
            self.users.entry(user).or_default().push(*token);
        }
        Ok(())
    }

    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        _expiry: Expiry,
    ) -> Result<Token, StoreError> {
        // The old token dies first, so it can never see the new identity. Its slot
        // passes to the new token; if it was already gone, take a new one (a login is
        // never refused for room).
        if self.sessions.remove(old).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        self.insert_new(Entry::from_session(session))
            .inspect_err(|_| {
                self.count.fetch_sub(1, Ordering::Relaxed);
            })
    }

    async fn destroy(&self, token: &Token) -> Result<(), StoreError> {
        self.remove(token);
        Ok(())
    }
}

#[async_trait::async_trait]
impl SessionIndex for MemoryStore {
    async fn destroy_user(&self, user: &str) -> Result<usize, StoreError> {
        let tokens = self.tokens_of(user);
        let removed = tokens.iter().filter(|t| self.remove(t).is_some()).count();
        self.users.remove(user);
        Ok(removed)
    }

    async fn destroy_public(&self, id: &PublicId) -> Result<bool, StoreError> {
        // Rare (admin API): a scan, with every guard dropped before removing.
        let token = self
            .sessions
            .iter()
            .find(|item| item.value().public_id == *id)
            .map(|item| *item.key());
        Ok(token.is_some_and(|t| self.remove(&t).is_some()))
    }

    async fn list_user(
        &self,
        user: &str,
        now: u64,
        expiry: Expiry,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        Ok(self
            .tokens_of(user)
            .iter()
            .filter_map(|t| {
                let entry = self.sessions.get(t)?;
                entry
                    .is_live(now, expiry)
                    .then(|| SessionInfo::from(&entry.to_session()))
            })
            .collect())
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.count.load(Ordering::Relaxed))
    }
}

#[async_trait::async_trait]
impl Sweep for MemoryStore {
    async fn sweep(&self, now: u64, expiry: Expiry) -> Result<usize, StoreError> {
        // Runs on the main runtime, not a request worker; the scan locks one shard at
        // a time.
        Ok(self.reap(now, expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: Expiry = Expiry {
        idle_ms: 1_000,
        absolute_ms: 10_000,
        touch_ms: 0,
    };

    fn anon(now: u64) -> Session {
        Session::new(PublicId(random_bytes().unwrap()), now)
    }

    fn user(now: u64, name: &str) -> Session {
        let mut s = anon(now);
        s.identity = Some(Arc::new(Identity {
            user: Some(name.into()),
            roles: None,
        }));
        s
    }

    #[tokio::test]
    async fn create_load_and_idle_expiry() {
        let store = MemoryStore::new(10);
        let s = anon(0);
        let t = store.create(&s, EXPIRY).await.unwrap();
        assert_eq!(
            store
                .load(&t, 500, EXPIRY)
                .await
                .unwrap()
                .unwrap()
                .public_id,
            s.public_id
        );
        // Use slides the idle deadline.
        assert!(store.load(&t, 1_400, EXPIRY).await.unwrap().is_some());
        assert!(store.load(&t, 2_500, EXPIRY).await.unwrap().is_none());
        assert_eq!(
            store.count().await.unwrap(),
            0,
            "expired on read is removed"
        );
    }

    #[tokio::test]
    async fn absolute_expiry_is_not_extended_by_use() {
        let store = MemoryStore::new(10);
        let t = store.create(&anon(0), EXPIRY).await.unwrap();
        let mut now = 0;
        while now < 9_900 {
            now += 900;
            let live = store.load(&t, now, EXPIRY).await.unwrap();
            assert_eq!(live.is_some(), now < 10_000, "at {now}");
        }
        assert!(store.load(&t, 10_000, EXPIRY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn regenerate_kills_old_token() {
        let store = MemoryStore::new(10);
        let s = anon(0);
        let old = store.create(&s, EXPIRY).await.unwrap();
        let new = store
            .regenerate(&old, &user(0, "ann"), EXPIRY)
            .await
            .unwrap();
        assert_ne!(old, new);
        assert!(store.load(&old, 1, EXPIRY).await.unwrap().is_none());
        assert_eq!(
            store.load(&new, 1, EXPIRY).await.unwrap().unwrap().user(),
            Some("ann")
        );
    }

    #[tokio::test]
    async fn bound_evicts_anonymous_never_logged_in() {
        let store = MemoryStore::new(4);
        let a = store.create(&user(0, "a"), EXPIRY).await.unwrap();
        let b = store.create(&user(0, "b"), EXPIRY).await.unwrap();
        for i in 0..100 {
            store.create(&anon(i), EXPIRY).await.unwrap();
            assert!(store.count().await.unwrap() <= 4);
        }
        assert!(store.load(&a, 100, EXPIRY).await.unwrap().is_some());
        assert!(store.load(&b, 100, EXPIRY).await.unwrap().is_some());
        // Full of logged-in users: a new anonymous session is refused, not stored.
        let store = MemoryStore::new(2);
        store.create(&user(0, "a"), EXPIRY).await.unwrap();
        store.create(&user(0, "b"), EXPIRY).await.unwrap();
        assert!(matches!(
            store.create(&anon(0), EXPIRY).await,
            Err(StoreError::Full)
        ));
    }

    #[test]
    fn concurrent_creators_never_overshoot_the_bound() {
        let store = Arc::new(MemoryStore::new(50));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for i in 0..500 {
                        let _ = rt.block_on(store.create(&anon(i), EXPIRY));
                        assert!(store.count.load(Ordering::Relaxed) <= 50);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(store.sessions.len() <= 50, "{}", store.sessions.len());
        assert_eq!(store.sessions.len(), store.count.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn by_user_index() {
        let store = MemoryStore::new(100);
        let t1 = store.create(&user(0, "ann"), EXPIRY).await.unwrap();
        store.create(&user(0, "ann"), EXPIRY).await.unwrap();
        store.create(&user(0, "bob"), EXPIRY).await.unwrap();
        assert_eq!(store.list_user("ann", 1, EXPIRY).await.unwrap().len(), 2);
        // A session that changed user no longer lists under the old one.
        store.save(&t1, &user(0, "carl"), EXPIRY).await.unwrap();
        assert_eq!(store.list_user("ann", 1, EXPIRY).await.unwrap().len(), 1);
        assert_eq!(store.destroy_user("ann").await.unwrap(), 1);
        assert_eq!(store.list_user("ann", 1, EXPIRY).await.unwrap().len(), 0);
        assert_eq!(store.list_user("bob", 1, EXPIRY).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn reaper_removes_expired() {
        let store = MemoryStore::new(100);
        for i in 0..10 {
            store.create(&anon(i), EXPIRY).await.unwrap();
        }
        store.create(&anon(5_000), EXPIRY).await.unwrap();
        assert_eq!(store.reap(5_500, EXPIRY), 10);
        assert_eq!(store.count().await.unwrap(), 1);
    }
}
