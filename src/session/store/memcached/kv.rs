//! The [`KeyValue`] side of the Memcached store: one item per value or set under
//! `{prefix}k:` (the key's name hashed, see [`keys`](super::keys)), with an item TTL, so
//! every instance that lists the same servers sees it.
//!
//! Memcached has no scripts, so the two compare-and-act operations use CAS: `take` is
//! `mg` (value and CAS) then `md` with that CAS (of two callers, one deletes it and gets
//! the value; the other's `md` finds it gone); `release` is the same `md` after
//! comparing the value. A set is one item holding its members, one per line, updated
//! with `mg`/`ms C` like the by-user index. Like any item these may be evicted under
//! memory pressure: a login in progress then starts again, a lock is free early.
//!
//! Memcached expires items on whole seconds (see `wire::exptime`), so each item starts
//! with its own deadline (8 bytes, unix ms) and is checked on read: a TTL of 50 ms
//! holds to the millisecond, and an item past its deadline that the server still
//! keeps reads as absent (and `put_new` replaces it).

use std::time::Duration;

use super::wire::{self, Mode, Reply};
use super::{unexpected, value, MemcachedStore, CAS_ROUNDS};
use crate::clock::unix_ms;
use crate::session::store::kv::{ttl_ms, KeyValue};
use crate::session::StoreError;

/// The item TTL for `ttl`.
fn exptime(ttl: Duration) -> i64 {
    super::exptime(ttl_ms(ttl))
}

/// `payload` behind its deadline, `ttl` from now.
fn wrap(payload: &[u8], ttl: Duration) -> Vec<u8> {
    let until = unix_ms().saturating_add(ttl_ms(ttl));
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&until.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a stored item, if it is one and still live.
fn live(data: &[u8]) -> Option<&[u8]> {
    let (until, payload) = data.split_first_chunk::<8>()?;
    (u64::from_be_bytes(*until) > unix_ms()).then_some(payload)
}

impl MemcachedStore {
    /// Reads the value under `key`, then deletes it if `wanted` holds for it and it
    /// still holds what was read (CAS); the value deleted, if one was.
    async fn delete_read(
        &self,
        op: &'static str,
        key: &str,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys.value(key.as_bytes());
        for _ in 0..CAS_ROUNDS {
            let reply = self.servers.call(op, &key, wire::get(&key)).await?;
            let Some((data, cas)) = value(op, reply)? else {
                return Ok(None);
            };
            let Some(payload) = live(&data).filter(|p| wanted(p)) else {
                return Ok(None);
            };
            match self
                .servers
                .call(op, &key, wire::delete(&key, Some(cas)))
                .await?
            {
                Reply::Done => return Ok(Some(payload.to_vec())),
                Reply::NotFound => return Ok(None),
                // Replaced meanwhile: look again.
                Reply::Exists => {}
                other => return Err(unexpected(op, &other)),
            }
        }
        Err(StoreError::backend(op, "the value kept changing under CAS"))
    }
}

#[async_trait::async_trait]
impl KeyValue for MemcachedStore {
    fn shared(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let key = self.keys.value(key.as_bytes());
        let set = wire::set(&key, &wrap(value, ttl), exptime(ttl), Mode::Set, None);
        match self.servers.call("put", &key, set).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected("put", &other)),
        }
    }

    async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let key = self.keys.value(key.as_bytes());
        for _ in 0..CAS_ROUNDS {
            let add = wire::set(&key, &wrap(value, ttl), exptime(ttl), Mode::Add, None);
            match self.servers.call("put_new", &key, add).await? {
                Reply::Done => return Ok(true),
                Reply::NotStored => {}
                other => return Err(unexpected("put_new", &other)),
            }
            // Taken: by a live value, or by one past its deadline the server still keeps.
            let reply = self.servers.call("put_new", &key, wire::get(&key)).await?;
            let Some((data, cas)) = super::value("put_new", reply)? else {
                continue;
            };
            if live(&data).is_some() {
                return Ok(false);
            }
            let replace = wire::set(&key, &wrap(value, ttl), exptime(ttl), Mode::Set, Some(cas));
            match self.servers.call("put_new", &key, replace).await? {
                Reply::Done => return Ok(true),
                Reply::Exists | Reply::NotFound => {}
                other => return Err(unexpected("put_new", &other)),
            }
        }
        Err(StoreError::backend(
            "put_new",
            "the value kept changing under CAS",
        ))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.keys.value(key.as_bytes());
        let reply = self.servers.call("get", &key, wire::get(&key)).await?;
        Ok(value("get", reply)?.and_then(|(data, _)| live(&data).map(<[u8]>::to_vec)))
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.delete_read("take", key, |_| true).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = self.keys.value(key.as_bytes());
        match self
            .servers
            .call("delete", &key, wire::delete(&key, None))
            .await?
        {
            Reply::Done | Reply::NotFound => Ok(()),
            other => Err(unexpected("delete", &other)),
        }
    }

    async fn release(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .delete_read("release", key, |held| held == value)
            .await?
            .is_some())
    }

    async fn add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        if member.contains('\n') {
            return Err(StoreError::backend(
                "add",
                "a set member may not contain a line break",
            ));
        }
        let key = self.keys.value(key.as_bytes());
        let seconds = exptime(ttl);
        for _ in 0..CAS_ROUNDS {
            let reply = self.servers.call("add", &key, wire::get(&key)).await?;
            let write = match value("add", reply)? {
                Some((data, cas)) => {
                    // A set past its deadline starts again empty.
                    let mut members = live(&data).unwrap_or_default().to_vec();
                    let present = members
                        .split(|&b| b == b'\n')
                        .any(|m| m == member.as_bytes());
                    if !present {
                        if !members.is_empty() {
                            members.push(b'\n');
                        }
                        members.extend_from_slice(member.as_bytes());
                    }
                    // Written even when present: the set lives `ttl` from this addition.
                    wire::set(&key, &wrap(&members, ttl), seconds, Mode::Set, Some(cas))
                }
                None => wire::set(
                    &key,
                    &wrap(member.as_bytes(), ttl),
                    seconds,
                    Mode::Add,
                    None,
                ),
            };
            match self.servers.call("add", &key, write).await? {
                Reply::Done => return Ok(()),
                Reply::Exists | Reply::NotFound | Reply::NotStored => {}
                other => return Err(unexpected("add", &other)),
            }
        }
        Err(StoreError::backend(
            "add",
            "the set kept changing under CAS",
        ))
    }

    async fn members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let key = self.keys.value(key.as_bytes());
        let reply = self.servers.call("members", &key, wire::get(&key)).await?;
        Ok(value("members", reply)?
            .and_then(|(data, _)| live(&data).map(<[u8]>::to_vec))
            .map(|data| {
                data.split(|&b| b == b'\n')
                    .filter(|m| !m.is_empty())
                    .filter_map(|m| std::str::from_utf8(m).ok().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
