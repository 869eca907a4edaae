//! Small values with a time to live, kept where the sessions are: the [`KeyValue`]
//! side of a backend. Features that need state shared by every instance which shares
//! the session store use it (an OIDC login in progress, a replay guard for a one-time
//! token, a lock that lets one replica order a certificate): with Redis or PostgreSQL
//! every replica sees the same keys; with the memory store (and the sealed cookie,
//! which keeps nothing on a server) each process has its own ([`KeyValue::shared`]
//! says which).
//!
//! Keys are short strings chosen by the feature (`oidc:state:…`); each engine puts
//! them under its own prefix or table. Values are a few KB at most. A set
//! ([`KeyValue::add`]/[`KeyValue::members`]) is a small group of strings under one
//! key (the sessions of one OIDC `sid`). Expired keys read as absent; engines remove
//! them by themselves (Redis TTLs) or when they sweep (memory, PostgreSQL).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::StoreError;
use crate::clock::unix_ms;

/// Small values with a TTL, shared by every instance that shares the store.
#[async_trait::async_trait]
pub trait KeyValue: Send + Sync + std::fmt::Debug {
    /// Whether other instances see these keys (Redis, PostgreSQL), or only this
    /// process (memory, sealed cookie).
    fn shared(&self) -> bool;

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Stores `value` under `key` for `ttl` only if no live value is there; whether it
    /// was stored (a lock taken, a token seen for the first time).
    async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;

    /// The live value under `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes the value under `key` and returns it, atomically: of two callers, one
    /// gets it (a one-time value redeemed once).
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes `key` (a value or a set); an absent key is fine.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Removes `key` only if it still holds `value` (a lock released by its holder
    /// only, not after it expired and another took it); whether it did.
    async fn release(&self, key: &str, value: &[u8]) -> Result<bool, StoreError>;

    /// Adds `member` to the set under `key`; the set lives `ttl` from this addition.
    async fn add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError>;

    /// The members of the set under `key` (empty when absent or expired).
    async fn members(&self, key: &str) -> Result<Vec<String>, StoreError>;
}

/// Milliseconds of `ttl`, at least 1 (Redis refuses `PX 0`).
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// How many keys one process keeps at most (values and sets together): a flood of
/// started logins cannot grow memory without bound. Past it, expired keys are
/// dropped, and if none were, a new key is refused ([`StoreError::Full`]).
const MAX_KEYS: usize = 100_000;

#[derive(Debug)]
enum Item {
    Value(Vec<u8>),
    Set(HashSet<String>),
}

#[derive(Debug, Default)]
struct Items {
    map: HashMap<String, (Item, u64)>,
}

impl Items {
    fn live(&mut self, key: &str, now: u64) -> Option<&mut Item> {
        let expired = matches!(self.map.get(key), Some((_, until)) if *until <= now);
        if expired {
            self.map.remove(key);
            return None;
        }
        self.map.get_mut(key).map(|(item, _)| item)
    }

    /// Room for one more key: drops expired keys when full; `Full` if that freed none.
    fn room(&mut self, key: &str, now: u64) -> Result<(), StoreError> {
        if self.map.len() < MAX_KEYS || self.map.contains_key(key) {
            return Ok(());
        }
        self.map.retain(|_, (_, until)| *until > now);
        if self.map.len() < MAX_KEYS {
            Ok(())
        } else {
            Err(StoreError::Full)
        }
    }

    fn insert(&mut self, key: &str, item: Item, ttl: Duration, now: u64) -> Result<(), StoreError> {
        self.room(key, now)?;
        let until = now.saturating_add(ttl_ms(ttl));
        self.map.insert(key.to_owned(), (item, until));
        Ok(())
    }
}

/// The keys of one process: the memory store's, and the sealed cookie's (which keeps
/// sessions in the browsers and has no server to share anything through).
#[derive(Debug, Default)]
pub struct MemoryKv {
    items: Mutex<Items>,
}

impl MemoryKv {
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Items, u64) -> T) -> T {
        let now = unix_ms();
        // A poisoned lock only means another thread panicked mid-update of a plain map.
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut items, now)
    }

    /// Removes expired keys; how many.
    pub fn sweep(&self) -> usize {
        self.with(|items, now| {
            let before = items.map.len();
            items.map.retain(|_, (_, until)| *until > now);
            before - items.map.len()
        })
    }
}

#[async_trait::async_trait]
impl KeyValue for MemoryKv {
    fn shared(&self) -> bool {
        false
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.with(|items, now| items.insert(key, Item::Value(value.to_vec()), ttl, now))
    }

    async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        self.with(|items, now| {
            if items.live(key, now).is_some() {
                return Ok(false);
            }
            items.insert(key, Item::Value(value.to_vec()), ttl, now)?;
            Ok(true)
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|items, now| match items.live(key, now) {
            Some(Item::Value(value)) => Some(value.clone()),
            _ => None,
        }))
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.with(|items, now| {
            items.live(key, now)?;
            match items.map.remove(key) {
                Some((Item::Value(value), _)) => Some(value),
                _ => None,
            }
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.with(|items, _| items.map.remove(key));
        Ok(())
    }

    async fn release(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        Ok(self.with(|items, now| {
            let holds = matches!(items.live(key, now), Some(Item::Value(v)) if v == value);
            if holds {
                items.map.remove(key);
            }
            holds
        }))
    }

    async fn add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        self.with(|items, now| {
            let mut set = match items.live(key, now) {
                Some(Item::Set(set)) => std::mem::take(set),
                _ => HashSet::new(),
            };
            set.insert(member.to_owned());
            items.insert(key, Item::Set(set), ttl, now)
        })
    }

    async fn members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.with(|items, now| match items.live(key, now) {
            Some(Item::Set(set)) => set.iter().cloned().collect(),
            _ => Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn values_are_put_taken_once_and_released_only_by_their_holder() {
        let kv = MemoryKv::new();
        assert!(!kv.shared());
        kv.put("a", b"1", MINUTE).await.unwrap();
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(!kv.put_new("a", b"2", MINUTE).await.unwrap());
        assert_eq!(kv.take("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.take("a").await.unwrap(), None, "taken once");
        assert!(kv.put_new("lock", b"me", MINUTE).await.unwrap());
        assert!(!kv.release("lock", b"you").await.unwrap());
        assert!(kv.release("lock", b"me").await.unwrap());
        assert!(kv.put_new("lock", b"you", MINUTE).await.unwrap());
    }

    #[tokio::test]
    async fn expired_keys_read_as_absent() {
        let kv = MemoryKv::new();
        kv.put("a", b"1", Duration::from_millis(1)).await.unwrap();
        kv.add("s", "m", Duration::from_millis(1)).await.unwrap();
        kv.put("unread", b"1", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(kv.get("a").await.unwrap(), None);
        assert!(kv.members("s").await.unwrap().is_empty());
        assert!(kv.put_new("a", b"2", MINUTE).await.unwrap());
        assert_eq!(kv.sweep(), 1, "the expired key nobody read");
    }

    #[tokio::test]
    async fn sets_gather_members() {
        let kv = MemoryKv::new();
        kv.add("s", "x", MINUTE).await.unwrap();
        kv.add("s", "y", MINUTE).await.unwrap();
        kv.add("s", "x", MINUTE).await.unwrap();
        let mut members = kv.members("s").await.unwrap();
        members.sort();
        assert_eq!(members, ["x", "y"]);
        kv.delete("s").await.unwrap();
        assert!(kv.members("s").await.unwrap().is_empty());
    }
}
