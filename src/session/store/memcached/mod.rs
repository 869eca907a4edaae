//! The Memcached session store (`store = "memcached"`): sessions shared by every proxy
//! instance that lists the same `servers`, spread over them by consistent hashing
//! ([`ring`]).
//!
//! Layout: see [`keys`]. One item per session holds its record (`record::encode`) with a
//! TTL equal to what is left of its idle and absolute lifetimes; expiry is also checked
//! on read with `Expiry::allows`. A read-mostly session costs one `mg` per request: its
//! last use is written back at most once per `touch_interval`, by an `ms` with the CAS
//! that was read, so it never overwrites a newer value.
//!
//! What Memcached cannot do, and what this store does instead:
//! - No scripts or transactions across keys (a session, its public-id mapping and its
//!   user's index may sit on three servers). Regeneration writes the new item (`add`),
//!   then deletes the old one; a failed delete is retried on a new connection, then
//!   kept ([`leftovers`]) and retried when the server answers, and the request answers
//!   503 (the new item is deleted again): the old token never carries the new identity,
//!   and this instance treats it as gone at once.
//! - No key listing: "logout everywhere", the admin API's by-user calls (and the OIDC
//!   `sid` index) read a small index item per user, updated with `gets`/`cas` (`mg`
//!   with `c`, `ms` with `C`). Memcached may evict it under memory pressure; then the
//!   sessions it named are no longer found by user (they still end at their own idle
//!   or absolute timeout). `count` is not available (documented in the README).
//! - Evictions: a session item evicted under memory pressure is an unknown token, so
//!   its browser starts a fresh anonymous session (never an error).
//!
//! Failure: every call is bounded by `session.memcached.timeout`; a failure is a
//! `StoreError` (503 on the request path), never an empty answer. A server that does
//! not answer costs only the sessions it holds: new sessions draw tokens that land on
//! a server that answers. Links reconnect by themselves ([`conn`]). A call whose link
//! broke is sent once more on a new connection, which is safe for every command here:
//! `mg` reads; `ms` with a CAS writes nothing the second time (`EX`); an `add` whose
//! answer was lost finds its key taken and the caller draws another token (the first
//! item holds a token no client has and expires at its TTL); `ms` replace writes the
//! same value again; `md` of an item already gone answers `NF`.

mod conn;
mod keys;
mod kv;
mod leftovers;
mod ring;
mod wire;

use bytes::Bytes;
use futures_util::future::{join, join3, join_all};

use super::{SessionIndex, SessionInfo, SessionStore, StoreError};
use crate::config::MemcachedConfig;
use crate::random::random_bytes;
use crate::session::{record, Expiry, PublicId, Session, Token};
use conn::Servers;
use keys::Keys;
use wire::{Mode, Reply};

/// How often a CAS update of a user's index is tried before giving up.
const CAS_ROUNDS: usize = 8;

/// The Memcached store.
#[derive(Debug)]
pub struct MemcachedStore {
    servers: Servers,
    keys: Keys,
}

/// Milliseconds a session has left at `now` (its item's TTL, rounded up by `exptime`).
fn ttl_ms(session: &Session, expiry: Expiry, now: u64) -> u64 {
    expiry.remaining(session.created, session.last_seen, now)
}

/// Unix ms when `session`'s absolute lifetime ends.
fn absolute_end(session: &Session, expiry: Expiry) -> u64 {
    session.created.saturating_add(expiry.absolute_ms)
}

/// A stored value as a session, if it is one (a foreign or old value is no session).
fn decode(bytes: &[u8]) -> Option<Session> {
    record::decode(bytes).ok()
}

/// The answer to an `mg`: the value and its CAS, or `None` for a miss.
fn value(op: &'static str, reply: Reply) -> Result<Option<(Bytes, u64)>, StoreError> {
    match reply {
        Reply::Value { data, cas, .. } => Ok(Some((data, cas))),
        Reply::Miss => Ok(None),
        other => Err(unexpected(op, &other)),
    }
}

fn unexpected(op: &'static str, reply: &Reply) -> StoreError {
    StoreError::backend(op, format!("unexpected memcached reply {reply:?}"))
}

/// The item TTL for `ms` milliseconds, from the real clock (Memcached compares with
/// its own).
fn exptime(ms: u64) -> i64 {
    wire::exptime(ms, crate::clock::unix_ms())
}

/// When an item whose own expiry is not read here goes by itself, at the latest: no
/// lifetime is longer than 400 days (`config::validate`'s cap). What a failed delete
/// keeps retrying until ([`leftovers`]).
fn expiry_unknown() -> u64 {
    const LONGEST_MS: u64 = 400 * 24 * 3600 * 1000;
    crate::clock::unix_ms().saturating_add(LONGEST_MS)
}

impl MemcachedStore {
    /// Sets up the store for `config` without connecting: the proxy starts while
    /// Memcached is down and serves session routes once it answers.
    pub fn open(config: &MemcachedConfig) -> MemcachedStore {
        MemcachedStore {
            servers: Servers::new(config),
            keys: Keys::new(&config.prefix),
        }
    }

    /// Opens the store at start-up and checks that a server answers. Memcached being
    /// down is not fatal (a warning): the proxy starts, `/readyz` says not ready, and
    /// session routes serve once a server answers.
    pub async fn connect(config: &MemcachedConfig) -> MemcachedStore {
        let store = MemcachedStore::open(config);
        match tokio::time::timeout(START_PROBE, store.ping()).await {
            Ok(Ok(())) => tracing::info!(
                servers = config.servers.len(),
                "memcached session store answers"
            ),
            Ok(Err(error)) => tracing::warn!(
                %error,
                "memcached does not answer yet; session routes answer 503 until it does"
            ),
            Err(_) => tracing::warn!(
                "memcached does not answer yet; session routes answer 503 until it does"
            ),
        }
        store
    }

    /// Stores `session` under a fresh token (never overwriting: `add`), maps its public
    /// id and indexes it under its user. A token that would land on a server known to
    /// be down, or whose server fails, is drawn again (with several servers), so new
    /// sessions go where a server answers.
    async fn store_new(
        &self,
        op: &'static str,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError> {
        let value = record::encode(session);
        let ttl = exptime(ttl_ms(session, expiry, session.last_seen));
        let several = self.servers.len() > 1;
        let mut failed = None;
        for _ in 0..8 {
            let token = Token(random_bytes().map_err(|e| StoreError::backend(op, e))?);
            let (key, reference) = self.keys.session(&token);
            let server = self.servers.server_of(&key);
            if several && self.servers.is_down(server) && !self.servers.all_down() {
                continue;
            }
            let add = wire::set(&key, &value, ttl, Mode::Add, None);
            let (written, indexed, ()) = join3(
                self.servers.call_on(op, server, add),
                self.index(session, &reference, expiry),
                self.map_public(session, &reference, expiry),
            )
            .await;
            match written {
                Ok(Reply::Done) => {
                    indexed?;
                    return Ok(token);
                }
                // Taken (a collision of 144 bits does not happen; this keeps `add`
                // honest) or the server failed: draw again.
                Ok(Reply::NotStored) => {}
                Ok(other) => return Err(unexpected(op, &other)),
                Err(error) if several => failed = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(failed.unwrap_or_else(|| StoreError::backend(op, "could not draw an unused token")))
    }

    /// Points the session's public id at `reference`, until its absolute lifetime ends.
    /// Best effort: the mapping serves only the admin API's `DELETE /sessions/{id}`,
    /// and a server down must not stop sessions that live elsewhere.
    async fn map_public(&self, session: &Session, reference: &str, expiry: Expiry) {
        let key = self.keys.public(&session.public_id);
        let server = self.servers.server_of(&key);
        if self.servers.is_down(server) {
            // Not worth a timeout on a session's way in.
            return;
        }
        let left = absolute_end(session, expiry).saturating_sub(session.last_seen);
        let set = wire::set(&key, reference.as_bytes(), exptime(left), Mode::Set, None);
        if let Err(error) = self.servers.call_on("map a public id", server, set).await {
            tracing::debug!(%error, "could not map a session's public id");
        }
    }

    /// Adds `reference` to the index of the session's user, if it has one (`gets`,
    /// then `cas`, or `add` when there is no index yet; again when another instance
    /// changed it meanwhile). The index lives `absolute_timeout` from its last change.
    async fn index(
        &self,
        session: &Session,
        reference: &str,
        expiry: Expiry,
    ) -> Result<(), StoreError> {
        let Some(user) = session.user() else {
            return Ok(());
        };
        let key = self.keys.user(user);
        let ttl = exptime(expiry.absolute_ms);
        for _ in 0..CAS_ROUNDS {
            let found = value(
                "index",
                self.servers.call("index", &key, wire::get(&key)).await?,
            )?;
            let write = match &found {
                Some((data, cas)) => match keys::with_ref(data, reference) {
                    Some(members) => wire::set(&key, &members, ttl, Mode::Set, Some(*cas)),
                    None => return Ok(()),
                },
                None => wire::set(&key, reference.as_bytes(), ttl, Mode::Add, None),
            };
            match self.servers.call("index", &key, write).await? {
                Reply::Done => return Ok(()),
                // Changed, removed or created meanwhile: read again.
                Reply::Exists | Reply::NotFound | Reply::NotStored => {}
                other => return Err(unexpected("index", &other)),
            }
        }
        Err(StoreError::backend(
            "index",
            "a user's session index kept changing under CAS",
        ))
    }

    /// Drops `gone` from `user`'s index (best effort: stale members are checked on use).
    async fn unindex(&self, user: &str, gone: &[&str]) {
        if gone.is_empty() {
            return;
        }
        let key = self.keys.user(user);
        for _ in 0..CAS_ROUNDS {
            let (data, cas, ttl) = match self.servers.call("unindex", &key, wire::get(&key)).await {
                Ok(Reply::Value { data, cas, ttl }) => (data, cas, ttl),
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "could not trim a user's session index");
                    return;
                }
            };
            let kept = keys::without_refs(&data, gone);
            let write = if kept.is_empty() {
                wire::delete(&key, Some(cas))
            } else if kept.len() == data.len() {
                return;
            } else {
                // The index keeps the time it had left.
                let seconds = ttl.filter(|&t| t > 0).map_or(0, |t| t.unsigned_abs());
                wire::set(
                    &key,
                    &kept,
                    exptime(seconds.saturating_mul(1000)),
                    Mode::Set,
                    Some(cas),
                )
            };
            match self.servers.call("unindex", &key, write).await {
                Ok(Reply::Exists) => {}
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "could not trim a user's session index");
                    return;
                }
            }
        }
    }

    /// The index members of `user` with their sessions (`None`: gone, unreadable or
    /// now another user's).
    async fn sessions_of(&self, user: &str) -> Result<Vec<(String, Option<Session>)>, StoreError> {
        let key = self.keys.user(user);
        let Some((data, _)) = value(
            "list",
            self.servers.call("list", &key, wire::get(&key)).await?,
        )?
        else {
            return Ok(Vec::new());
        };
        let members: Vec<String> = keys::refs(&data).into_iter().map(str::to_owned).collect();
        let reads = members.iter().map(|reference| async move {
            let key = self.keys.session_by_ref(reference);
            let reply = self.servers.call("list", &key, wire::get(&key)).await?;
            Ok::<_, StoreError>(
                value("list", reply)?
                    .and_then(|(data, _)| decode(&data))
                    .filter(|s| s.user() == Some(user)),
            )
        });
        let sessions = join_all(reads).await;
        members
            .into_iter()
            .zip(sessions)
            .map(|(reference, session)| Ok((reference, session?)))
            .collect()
    }

    /// Deletes the item at `key`; a failure is retried later ([`leftovers`]) and
    /// returned. `until`: unix ms when the item expires by itself.
    async fn delete(&self, op: &'static str, key: String, until: u64) -> Result<bool, StoreError> {
        match self.servers.call(op, &key, wire::delete(&key, None)).await {
            Ok(Reply::Done) => Ok(true),
            Ok(Reply::NotFound) => Ok(false),
            Ok(other) => Err(unexpected(op, &other)),
            Err(error) => {
                tracing::warn!(%error, op, "a memcached delete failed; retried when the server answers again");
                self.servers.defer_delete(key, until);
                Err(error)
            }
        }
    }
}

#[async_trait::async_trait]
impl SessionStore for MemcachedStore {
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError> {
        let key = self.keys.session_key(token);
        if self.servers.deferred(&key) {
            return Ok(None);
        }
        let reply = self.servers.call("load", &key, wire::get(&key)).await?;
        let Some((data, cas)) = value("load", reply)? else {
            return Ok(None);
        };
        let Some(mut session) = decode(&data) else {
            return Ok(None);
        };
        if !expiry.allows(session.created, session.last_seen, now) {
            return Ok(None);
        }
        if expiry.touch_due(session.last_seen, now) && now > session.last_seen {
            session.last_seen = now;
            let ttl = exptime(ttl_ms(&session, expiry, now));
            let touch = wire::set(&key, &record::encode(&session), ttl, Mode::Set, Some(cas));
            // The session was read; a failed touch (or one that lost to a newer write,
            // `EX`) only means its use is recorded by a later request.
            if let Err(error) = self.servers.call("touch", &key, touch).await {
                tracing::debug!(%error, "could not record a session's use");
            }
        }
        Ok(Some(session))
    }

    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError> {
        self.store_new("create", session, expiry).await
    }

    async fn save(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<(), StoreError> {
        let (key, reference) = self.keys.session(token);
        let ttl = exptime(ttl_ms(session, expiry, session.last_seen));
        let replace = wire::set(&key, &record::encode(session), ttl, Mode::Replace, None);
        let (written, indexed) = join(
            self.servers.call("save", &key, replace),
            self.index(session, &reference, expiry),
        )
        .await;
        match written? {
            // Replaced, or gone meanwhile (a save never brings a session back).
            Reply::Done | Reply::NotStored => {}
            other => return Err(unexpected("save", &other)),
        }
        indexed
    }

    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError> {
        let token = self.store_new("regenerate", session, expiry).await?;
        let old_key = self.keys.session_key(old);
        let until = absolute_end(session, expiry).max(crate::clock::unix_ms() + expiry.idle_ms);
        if let Err(error) = self.delete("regenerate", old_key, until).await {
            // The old item may still hold the session as it was before this request
            // (never the new identity). Answer 503 rather than hand out a token while an
            // older one lives; the new item goes again.
            let (new_key, _) = self.keys.session(&token);
            let _ = self
                .servers
                .call("regenerate", &new_key, wire::delete(&new_key, None))
                .await;
            return Err(error);
        }
        Ok(token)
    }

    async fn destroy(&self, token: &Token) -> Result<(), StoreError> {
        // The user's index and the public-id mapping keep a stale member, dropped on
        // use: one round trip for a logout.
        let key = self.keys.session_key(token);
        let until = expiry_unknown();
        self.delete("destroy", key, until).await.map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.servers.ping().await
    }

    fn known_down(&self) -> bool {
        self.servers.all_down()
    }
}

#[async_trait::async_trait]
impl SessionIndex for MemcachedStore {
    async fn destroy_user(&self, user: &str) -> Result<usize, StoreError> {
        let members = self.sessions_of(user).await?;
        let until = expiry_unknown();
        let ends = members
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|(reference, _)| {
                self.delete("destroy_user", self.keys.session_by_ref(reference), until)
            });
        let mut removed = 0;
        let mut failed = None;
        for ended in join_all(ends).await {
            match ended {
                Ok(existed) => removed += usize::from(existed),
                Err(error) => failed = Some(error),
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        let refs: Vec<&str> = members.iter().map(|(r, _)| r.as_str()).collect();
        self.unindex(user, &refs).await;
        Ok(removed)
    }

    async fn destroy_public(&self, id: &PublicId) -> Result<bool, StoreError> {
        let key = self.keys.public(id);
        let Some((reference, _)) = value(
            "destroy",
            self.servers.call("destroy", &key, wire::get(&key)).await?,
        )?
        else {
            return Ok(false);
        };
        let Ok(reference) = std::str::from_utf8(&reference) else {
            return Ok(false);
        };
        let session_key = self.keys.session_by_ref(reference);
        let reply = self
            .servers
            .call("destroy", &session_key, wire::get(&session_key))
            .await?;
        let Some(session) = value("destroy", reply)?
            .and_then(|(data, _)| decode(&data))
            .filter(|s| s.public_id == *id)
        else {
            return Ok(false);
        };
        let until = expiry_unknown();
        let existed = self.delete("destroy", session_key, until).await?;
        if let Some(user) = session.user() {
            self.unindex(user, &[reference]).await;
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
        Err(StoreError::backend(
            "count",
            "memcached cannot list or count its items; the session count is not available \
             with store = \"memcached\"",
        ))
    }
}

/// How long `ping` may take at start before the proxy says Memcached is not there yet.
const START_PROBE: std::time::Duration = std::time::Duration::from_secs(2);
