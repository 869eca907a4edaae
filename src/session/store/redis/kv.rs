//! The [`KeyValue`] side of the Redis store: one key per value or set under
//! `{prefix}k:`, with a Redis TTL, so every instance that shares the Redis sees it.
//!
//! Every command goes through the store's connection (bounded by
//! `session.redis.timeout`, sent once more when its link broke; see `conn`). A
//! `take` whose first send ran but whose answer was lost reads as absent on the
//! second: the value is redeemed by nobody (a login in progress then starts again),
//! never twice.

use std::time::Duration;

use super::RedisStore;
use crate::session::store::kv::{ttl_ms, KeyValue};
use crate::session::StoreError;

/// `KEYS[1]`: reads and deletes the value in one step (`GETDEL` needs Redis 6.2).
pub(super) const TAKE: &str = r"
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
end
return value";

/// `KEYS[1]`, `ARGV[1]` the holder's value: deletes the key only if it holds that.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

#[async_trait::async_trait]
impl KeyValue for RedisStore {
    fn shared(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.keys.kv(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl));
        self.conn.query::<()>(&set).await
    }

    async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(self.keys.kv(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .arg("NX");
        let answer: Option<String> = self.conn.query(&set).await?;
        Ok(answer.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query(redis::cmd("GET").arg(self.keys.kv(key)))
            .await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut invocation = self.scripts.take.prepare_invoke();
        invocation.key(self.keys.kv(key));
        self.conn.invoke(&invocation).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.conn
            .query::<i64>(redis::cmd("DEL").arg(self.keys.kv(key)))
            .await
            .map(|_| ())
    }

    async fn release(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation.key(self.keys.kv(key)).arg(value);
        Ok(self.conn.invoke::<i64>(&invocation).await? > 0)
    }

    async fn add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut invocation = self.scripts.index.prepare_invoke();
        invocation
            .key(self.keys.kv(key))
            .arg(member)
            .arg(ttl_ms(ttl));
        self.conn.invoke::<i64>(&invocation).await.map(|_| ())
    }

    async fn members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        self.conn
            .query(redis::cmd("SMEMBERS").arg(self.keys.kv(key)))
            .await
    }
}
