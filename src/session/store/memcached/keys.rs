//! The Memcached key layout of the session store, and the by-user index's value. Pure:
//! no IO.
//!
//! With `prefix = "cloakroom:"`:
//! - `cloakroom:s:H` → the session record (`record::encode`), expiring when the session
//!   does. `H` (the session's *ref*) is base64url of 18 bytes of SHA-256 of the token:
//!   Memcached never holds a token, so a copy of its memory opens no session.
//! - `cloakroom:p:P` → `H`, the public id `P` → session mapping the admin API uses,
//!   expiring when the session's absolute lifetime ends (never touched; may outlive the
//!   session, checked on use).
//! - `cloakroom:u:U` → the by-user index: the refs of the user's sessions, 24 bytes
//!   each, updated with CAS. `U` is base64url of 18 bytes of SHA-256 of the user name
//!   (a name may hold spaces, which a key may not). Members may be stale (checked on
//!   use), and the item may be evicted (see the parent module).
//! - `cloakroom:k:K` → a value or set of the `KeyValue` side, `K` a hash of its name
//!   (names are chosen by features and may be long).
//!
//! Every key is at most the prefix (≤ 200 bytes, checked by the config) plus 26.

use base64::Engine as _;

use crate::session::{PublicId, Token};

/// Bytes of SHA-256 kept in a ref (144 bits: no two live tokens collide).
const HASH_BYTES: usize = 18;

/// Length of a ref: 24 base64url characters.
pub(super) const REF_LEN: usize = 24;

/// Most refs one user's index keeps; adding one more drops the oldest (see the README:
/// a user with more live sessions than this is not logged out everywhere from them).
pub(super) const MAX_INDEX: usize = 512;

/// Appends base64url of the first [`HASH_BYTES`] of SHA-256 of `parts` to `out`.
fn hash_into(parts: &[&[u8]], out: &mut String) {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    let digest = context.finish();
    let hash = digest.as_ref().get(..HASH_BYTES).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(hash, out);
}

/// Builds the store's keys under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, kind: &str, capacity: usize) -> String {
        let mut key = String::with_capacity(self.prefix.len() + kind.len() + capacity);
        key.push_str(&self.prefix);
        key.push_str(kind);
        key
    }

    /// The record key of the session whose ref is `reference`.
    pub(super) fn session_by_ref(&self, reference: &str) -> String {
        let mut key = self.key("s:", REF_LEN);
        key.push_str(reference);
        key
    }

    /// The record key of `token`'s session, and its ref.
    pub(super) fn session(&self, token: &Token) -> (String, String) {
        let mut reference = String::with_capacity(REF_LEN);
        hash_into(&[&token.0], &mut reference);
        (self.session_by_ref(&reference), reference)
    }

    /// The record key of `token`'s session (the per-request lookup).
    pub(super) fn session_key(&self, token: &Token) -> String {
        let mut key = self.key("s:", REF_LEN);
        hash_into(&[&token.0], &mut key);
        key
    }

    /// The public-id mapping key.
    pub(super) fn public(&self, id: &PublicId) -> String {
        let mut key = self.key("p:", 22);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(id.0, &mut key);
        key
    }

    /// The by-user index key.
    pub(super) fn user(&self, user: &str) -> String {
        let mut key = self.key("u:", REF_LEN);
        hash_into(&[b"user\0", user.as_bytes()], &mut key);
        key
    }

    /// The key of a small value (or set) of the `KeyValue` side named `name`.
    pub(super) fn value(&self, name: &[u8]) -> String {
        let mut key = self.key("k:", REF_LEN);
        hash_into(&[b"kv\0", name], &mut key);
        key
    }
}

/// The refs held in an index value (whole refs only; anything else is ignored).
pub(super) fn refs(value: &[u8]) -> Vec<&str> {
    value
        .chunks_exact(REF_LEN)
        .filter_map(|chunk| std::str::from_utf8(chunk).ok())
        .collect()
}

/// `value` with `reference` added at the end (the oldest dropped past [`MAX_INDEX`]),
/// or `None` when it is there already.
pub(super) fn with_ref(value: &[u8], reference: &str) -> Option<Vec<u8>> {
    let mut members = refs(value);
    if members.contains(&reference) {
        return None;
    }
    members.push(reference);
    let skip = members.len().saturating_sub(MAX_INDEX);
    Some(members[skip..].concat().into_bytes())
}

/// `value` without `gone`.
pub(super) fn without_refs(value: &[u8], gone: &[&str]) -> Vec<u8> {
    refs(value)
        .into_iter()
        .filter(|r| !gone.contains(r))
        .collect::<Vec<_>>()
        .concat()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_hold_the_token_or_the_user_name() {
        let keys = Keys::new("cr:");
        let token = Token([7; 32]);
        let (key, reference) = keys.session(&token);
        assert_eq!(reference.len(), REF_LEN);
        assert_eq!(key, format!("cr:s:{reference}"));
        assert_eq!(keys.session_key(&token), key);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.0);
        assert!(!key.contains(&raw[..10]));
        let user = keys.user("ann lee@example.com");
        assert!(user.starts_with("cr:u:") && !user.contains(' ') && !user.contains("ann"));
        assert_eq!(user.len(), 5 + REF_LEN);
        assert_eq!(keys.public(&PublicId([1; 16])).len(), 5 + 22);
    }

    #[test]
    fn the_index_adds_once_drops_the_oldest_and_removes() {
        let a = "a".repeat(REF_LEN);
        let b = "b".repeat(REF_LEN);
        let one = with_ref(b"", &a).unwrap();
        assert_eq!(refs(&one), vec![a.as_str()]);
        assert_eq!(with_ref(&one, &a), None);
        let two = with_ref(&one, &b).unwrap();
        assert_eq!(refs(&two), vec![a.as_str(), b.as_str()]);
        assert_eq!(refs(&without_refs(&two, &[&a])), vec![b.as_str()]);
        let mut full = Vec::new();
        for i in 0..MAX_INDEX {
            full.extend_from_slice(format!("{i:0>24}").as_bytes());
        }
        let more = with_ref(&full, &a).unwrap();
        let members = refs(&more);
        assert_eq!(members.len(), MAX_INDEX);
        assert_eq!(members[0], format!("{:0>24}", 1));
        assert_eq!(members[MAX_INDEX - 1], a);
    }
}
