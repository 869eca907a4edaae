//! The Redis session store (`store = "redis"`): sessions shared by every proxy instance
//! that points at the same Redis (standalone, `rediss://` TLS, Cluster with `urls`, or
//! the master that Redis Sentinel names with `sentinels` + `sentinel_master`).
//!
//! Layout: see [`keys`]. One key per session holds its record (`record::encode`) with a
//! TTL equal to what is left of its idle and absolute lifetimes; expiry is also checked
//! on read with `Expiry::allows`, from the stored timestamps. A read-mostly session
//! costs one `GET` per request: its last use is written back at most once per
//! `touch_interval`, by a compare-and-set script that never overwrites a newer value.
//!
//! Atomicity: creation, save, regeneration (old token dead, new one live) and logout
//! are one Lua script each over the session's own keys, which share a hash slot. The
//! by-user index is a separate key (a user's sessions span slots); it may hold stale
//! members, which are checked and dropped on use.
//!
//! Failure: every command is bounded by `session.redis.timeout`; a failure is a
//! `StoreError` (503 on the request path), never an empty answer. The connection
//! reconnects by itself, and a command whose link broke (a socket that died with a
//! restarted Redis) is sent once more on the new connection ([`conn`]). That is safe
//! for every command here, because each one may run twice with the same outcome for
//! the client:
//! - `load` (`GET`, then the touch script): a read; the touch is a compare-and-set
//!   that writes nothing when the value already changed, and its failure is ignored.
//! - `create` (the write script with `NX` on a fresh random token): if the first send
//!   did run and only its answer was lost, the second finds the key taken and answers
//!   0, so the caller draws another token; the first record is held by no client and
//!   expires at its TTL.
//! - `save` (the write script with `XX`): writes the same value and TTL again.
//! - `regenerate` (the script: delete the old key, `NX` the new one): a second run
//!   deletes nothing and, like `create`, finds its token taken and draws another; the
//!   orphan holds a token no client has and expires at its TTL.
//! - `destroy` and the admin calls (`DEL`, the destroy script, `SREM`, `SADD`,
//!   `SMEMBERS`, `MGET`, `SCAN`): deleting or adding again changes nothing. A count
//!   from the admin API can miss what the lost first send removed.

mod conn;
mod keys;
mod kv;
mod sentinel;

use std::time::Duration;

use futures_util::future::join;
use redis::Script;

use super::{SessionIndex, SessionInfo, SessionStore, StoreError};
use crate::config::RedisConfig;
use crate::session::{record, Expiry, PublicId, Session, Token};
use conn::Connection;
use keys::Keys;

/// `KEYS[1]` session, `KEYS[2]` public-id mapping; `ARGV` value, ttl ms, ref, `NX`|`XX`.
const WRITE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], ARGV[4]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0";

/// `KEYS[1]` old session, `KEYS[2]` new session, `KEYS[3]` public-id mapping; `ARGV`
/// value, ttl ms, new ref. The old token is dead before the new one exists.
const REGENERATE: &str = r"
redis.call('DEL', KEYS[1])
if redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2], 'NX') then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0";

/// `KEYS[1]` session, `KEYS[2]` public-id mapping; `ARGV` the value read, the value
/// with the new last use, ttl ms. Writes only if nobody changed the session since it
/// was read.
const TOUCH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  return 1
end
return 0";

/// `KEYS[1]` session, `KEYS[2]` public-id mapping; `ARGV[1]` the session's ref. Ends
/// the session; the mapping goes too unless it already names another session.
const DESTROY: &str = r"
local n = redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return n";

/// `KEYS[1]` user index; `ARGV` ref, ttl ms.
const INDEX: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1";

/// The Lua scripts, hashed once.
#[derive(Debug)]
struct Scripts {
    write: Script,
    regenerate: Script,
    touch: Script,
    destroy: Script,
    index: Script,
    take: Script,
    release: Script,
}

/// The Redis store.
#[derive(Debug)]
pub struct RedisStore {
    conn: Connection,
    keys: Keys,
    scripts: Scripts,
}

/// Time to live of a session at `now`, never 0 (Redis refuses `PX 0`).
fn ttl(session: &Session, expiry: Expiry, now: u64) -> u64 {
    expiry
        .remaining(session.created, session.last_seen, now)
        .max(1)
}

/// A stored value as a session, if it is one (a foreign or old value is no session).
fn decode(bytes: Option<&[u8]>) -> Option<Session> {
    record::decode(bytes?).ok()
}

impl RedisStore {
    /// Connects to the Redis `config` names (lazily: the proxy starts while Redis is
    /// down and serves session routes once it answers). `ca`: PEM authorities for
    /// `rediss://`, `None` for the system's.
    pub fn open(config: &RedisConfig, ca: Option<Vec<u8>>) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            conn: Connection::open(config, ca)?,
            keys: Keys::new(&config.prefix),
            scripts: Scripts {
                write: Script::new(WRITE),
                regenerate: Script::new(REGENERATE),
                touch: Script::new(TOUCH),
                destroy: Script::new(DESTROY),
                index: Script::new(INDEX),
                take: Script::new(kv::TAKE),
                release: Script::new(kv::RELEASE),
            },
        })
    }

    /// Opens the store for `config` at start-up: reads the CA file, sets up the
    /// connection and checks that Redis answers. Redis being down is not fatal (a
    /// warning): the proxy starts, `/readyz` says not ready, and session routes serve
    /// once Redis answers.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore, StoreError> {
        let ca = match &config.ca {
            Some(path) => Some(tokio::fs::read(path).await.map_err(|e| {
                StoreError::backend(
                    "connect",
                    format!("cannot read session.redis.ca \"{}\": {e}", path.display()),
                )
            })?),
            None => None,
        };
        let store = RedisStore::open(config, ca)?;
        match tokio::time::timeout(START_PROBE, store.ping()).await {
            Ok(Ok(())) => tracing::info!("redis session store answers"),
            Ok(Err(error)) => tracing::warn!(
                %error,
                "redis does not answer yet; session routes answer 503 until it does"
            ),
            Err(_) => {
                tracing::warn!("redis does not answer yet; session routes answer 503 until it does")
            }
        }
        Ok(store)
    }

    /// Stores `session` under `token`: `NX` (a new session) or `XX` (only if it still
    /// exists); adds it to its user's index. Returns whether it was written.
    async fn write(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
        mode: &'static str,
    ) -> Result<bool, StoreError> {
        let (key, reference) = self.keys.session(token);
        let value = record::encode(session);
        let ttl = ttl(session, expiry, session.last_seen);
        let mut invocation = self.scripts.write.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.public(&session.public_id))
            .arg(&value)
            .arg(ttl)
            .arg(&reference)
            .arg(mode);
        // Both commands leave together (one round trip on a standalone server).
        let (written, indexed) = join(
            self.conn.invoke::<i64>(&invocation),
            self.index(session, &reference, expiry),
        )
        .await;
        indexed?;
        Ok(written? == 1)
    }

    /// Adds `reference` to the index of the session's user, if it has one.
    async fn index(
        &self,
        session: &Session,
        reference: &str,
        expiry: Expiry,
    ) -> Result<(), StoreError> {
        let Some(user) = session.user() else {
            return Ok(());
        };
        let mut invocation = self.scripts.index.prepare_invoke();
        invocation
            .key(self.keys.user(user))
            .arg(reference)
            .arg(expiry.absolute_ms.max(1));
        self.conn.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// Ends the session at `reference` (with public id `public_id`); returns whether it
    /// existed.
    async fn destroy_ref(&self, reference: &str, public_id: &PublicId) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.destroy.prepare_invoke();
        invocation
            .key(self.keys.session_by_ref(reference))
            .key(self.keys.public(public_id))
            .arg(reference);
        Ok(self.conn.invoke::<i64>(&invocation).await? > 0)
    }

    /// The index members of `user` with their sessions (`None`: gone or unreadable).
    async fn sessions_of(&self, user: &str) -> Result<Vec<(String, Option<Session>)>, StoreError> {
        let refs: Vec<String> = self
            .conn
            .query(redis::cmd("SMEMBERS").arg(self.keys.user(user)))
            .await?;
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for reference in &refs {
            mget.arg(self.keys.session_by_ref(reference));
        }
        let values: Vec<Option<Vec<u8>>> = self.conn.query(&mget).await?;
        Ok(refs
            .into_iter()
            .zip(values)
            .map(|(reference, value)| {
                let session = decode(value.as_deref()).filter(|s| s.user() == Some(user));
                (reference, session)
            })
            .collect())
    }

    /// Drops `refs` from `user`'s index (best effort: a failure leaves stale members,
    /// which are checked on use).
    async fn unindex(&self, user: &str, refs: &[&str]) {
        if refs.is_empty() {
            return;
        }
        let mut srem = redis::cmd("SREM");
        srem.arg(self.keys.user(user)).arg(refs);
        if let Err(error) = self.conn.query::<i64>(&srem).await {
            tracing::debug!(%error, "could not trim a user's session index");
        }
    }

    /// Session records on one node (or the standalone server), counted with `SCAN`.
    async fn count_on(&self, node: Option<(&str, u16)>) -> Result<usize, StoreError> {
        let pattern = self.keys.session_pattern();
        let mut cursor: u64 = 0;
        let mut count = 0usize;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<redis::Value>) = match node {
                Some((host, port)) => self.conn.query_on(&scan, host, port).await?,
                None => self.conn.query(&scan).await?,
            };
            count += keys.len();
            if next == 0 {
                return Ok(count);
            }
            cursor = next;
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError> {
        let key = self.keys.session_key(token);
        let value: Option<Vec<u8>> = self.conn.query(redis::cmd("GET").arg(&key)).await?;
        let Some(mut session) = decode(value.as_deref()) else {
            return Ok(None);
        };
        if !expiry.allows(session.created, session.last_seen, now) {
            return Ok(None);
        }
        if expiry.touch_due(session.last_seen, now) && now > session.last_seen {
            let read = value.unwrap_or_default();
            session.last_seen = now;
            let mut invocation = self.scripts.touch.prepare_invoke();
            invocation
                .key(&key)
                .key(self.keys.public(&session.public_id))
                .arg(&read)
                .arg(record::encode(&session))
                .arg(ttl(&session, expiry, now));
            // The session was read; a failed touch only means its use is recorded by
            // a later request.
            if let Err(error) = self.conn.invoke::<i64>(&invocation).await {
                tracing::debug!(%error, "could not record a session's use");
            }
        }
        session.last_seen = session.last_seen.max(now);
        Ok(Some(session))
    }

    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError> {
        // A collision of 240 random bits does not happen; the loop only keeps NX honest.
        for _ in 0..4 {
            let token = keys::draw_token(&session.public_id)?;
            if self.write(&token, session, expiry, "NX").await? {
                return Ok(token);
            }
        }
        Err(StoreError::backend(
            "draw a token",
            "could not draw an unused token",
        ))
    }

    async fn save(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<(), StoreError> {
        self.write(token, session, expiry, "XX").await.map(|_| ())
    }

    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError> {
        let old_key = self.keys.session_key(old);
        for _ in 0..4 {
            let token = keys::draw_token(&session.public_id)?;
            let (key, reference) = self.keys.session(&token);
            if old.0[..2] != token.0[..2] {
                // The public id changed, so the keys are in different slots: end the
                // old session first (it never sees the new identity), then create.
                self.conn
                    .query::<i64>(redis::cmd("DEL").arg(&old_key))
                    .await?;
                if self.write(&token, session, expiry, "NX").await? {
                    return Ok(token);
                }
                continue;
            }
            let mut invocation = self.scripts.regenerate.prepare_invoke();
            invocation
                .key(&old_key)
                .key(&key)
                .key(self.keys.public(&session.public_id))
                .arg(record::encode(session))
                .arg(ttl(session, expiry, session.last_seen))
                .arg(&reference);
            let (written, indexed) = join(
                self.conn.invoke::<i64>(&invocation),
                self.index(session, &reference, expiry),
            )
            .await;
            indexed?;
            if written? == 1 {
                return Ok(token);
            }
        }
        Err(StoreError::backend(
            "draw a token",
            "could not draw an unused token",
        ))
    }

    async fn destroy(&self, token: &Token) -> Result<(), StoreError> {
        let (key, reference) = self.keys.session(token);
        let value: Option<Vec<u8>> = self.conn.query(redis::cmd("GET").arg(&key)).await?;
        match decode(value.as_deref()) {
            Some(session) => {
                // The index is trimmed in the same round trip.
                let unindex = async {
                    if let Some(user) = session.user() {
                        self.unindex(user, &[&reference]).await;
                    }
                };
                join(self.destroy_ref(&reference, &session.public_id), unindex)
                    .await
                    .0?;
            }
            // Unknown, or not a record this version reads: make sure it is gone.
            None if value.is_some() => {
                self.conn.query::<i64>(redis::cmd("DEL").arg(&key)).await?;
            }
            None => {}
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = redis::cmd("PING");
        let pong = self.conn.query::<String>(&ping);
        match tokio::time::timeout(self.conn.timeout(), pong).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn known_down(&self) -> bool {
        self.conn.known_down()
    }
}

#[async_trait::async_trait]
impl SessionIndex for RedisStore {
    async fn destroy_user(&self, user: &str) -> Result<usize, StoreError> {
        let members = self.sessions_of(user).await?;
        let ends = members.iter().filter_map(|(reference, session)| {
            session
                .as_ref()
                .map(|s| self.destroy_ref(reference, &s.public_id))
        });
        let mut removed = 0;
        for ended in futures_util::future::join_all(ends).await {
            removed += usize::from(ended?);
        }
        let refs: Vec<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
        self.unindex(user, &refs).await;
        Ok(removed)
    }

    async fn destroy_public(&self, id: &PublicId) -> Result<bool, StoreError> {
        let reference: Option<String> = self
            .conn
            .query(redis::cmd("GET").arg(self.keys.public(id)))
            .await?;
        let Some(reference) = reference else {
            return Ok(false);
        };
        let value: Option<Vec<u8>> = self
            .conn
            .query(redis::cmd("GET").arg(self.keys.session_by_ref(&reference)))
            .await?;
        let Some(session) = decode(value.as_deref()).filter(|s| s.public_id == *id) else {
            return Ok(false);
        };
        let existed = self.destroy_ref(&reference, id).await?;
        if let Some(user) = session.user() {
            self.unindex(user, &[&reference]).await;
        }
        Ok(existed)
    }

    async fn list_user(
        &self,
        user: &str,
        now: u64,
        expiry: Expiry,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let members = self.sessions_of(user).await?;
        let (stale, live) = super::read_index(&members, now, expiry);
        self.unindex(user, &stale).await;
        Ok(live)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        match self.conn.primaries().await? {
            None => self.count_on(None).await,
            Some(nodes) => {
                let counts = nodes
                    .iter()
                    .map(|(host, port)| self.count_on(Some((host.as_str(), *port))));
                let mut total = 0;
                for count in futures_util::future::join_all(counts).await {
                    total += count?;
                }
                Ok(total)
            }
        }
    }
}

/// How long `ping` may take at start before the proxy says Redis is not there yet.
const START_PROBE: Duration = Duration::from_secs(2);
