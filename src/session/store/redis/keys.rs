//! The Redis key layout of the session store, and the tokens it draws. Pure: no IO.
//!
//! With `prefix = "cloakroom:"`:
//! - `cloakroom:s:{abcd}H` → the session record (`record::encode`), TTL = the time until
//!   it expires. `H` is base64url of 18 bytes of SHA-256 of the token: Redis never holds
//!   a token, so a copy of the data set (a dump, a replica) opens no session.
//! - `cloakroom:p:{abcd}P` → `{abcd}H`, the public id `P` → session mapping the admin API
//!   uses, with the session's TTL.
//! - `cloakroom:u:USER` → a set of `{abcd}H` (the by-user index; members may be stale and
//!   are checked on use; the set expires `absolute_timeout` after its last addition).
//!
//! `abcd` is the hash tag: the hex of the first two bytes of the session's public id.
//! The store draws tokens whose first two bytes are those same bytes, so a session's
//! record and its public-id mapping, before and after a regeneration, sit in one Redis
//! Cluster hash slot and change together in one script. That leaves 240 random bits in
//! a token that nothing outside the cookie knows (the contract asks for 128).

use base64::Engine as _;

use crate::random::random_bytes;
use crate::session::{PublicId, StoreError, Token};

/// Bytes of SHA-256 kept in a session key (144 bits: no two live tokens collide).
const HASH_BYTES: usize = 18;

/// Builds the store's keys under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

/// The hash tag of a token or public id: `{` hex of the first two bytes `}`.
fn tag(first: [u8; 2], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('{');
    for byte in first {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out.push('}');
}

/// Appends `{abcd}H` for `token` to `out`.
fn write_ref(token: &Token, out: &mut String) {
    let digest = ring::digest::digest(&ring::digest::SHA256, &token.0);
    let hash = digest.as_ref().get(..HASH_BYTES).unwrap_or_default();
    tag([token.0[0], token.0[1]], out);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(hash, out);
}

/// Length of a ref: `{abcd}` and 24 base64 characters.
const REF_LEN: usize = 6 + 24;

/// `{abcd}H` for `token`: what the public-id mapping and the user index hold.
pub(super) fn session_ref(token: &Token) -> String {
    let mut out = String::with_capacity(REF_LEN);
    write_ref(token, &mut out);
    out
}

/// A fresh token for the session with `public_id`: its first two bytes are the public
/// id's (the hash tag), the other 30 from the OS CSPRNG.
pub(super) fn draw_token(public_id: &PublicId) -> Result<Token, StoreError> {
    let mut token = random_bytes::<32>().map_err(|e| StoreError::backend("draw a token", e))?;
    token[0] = public_id.0[0];
    token[1] = public_id.0[1];
    Ok(Token(token))
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The record key of the session whose ref (see [`session_ref`]) is `reference`.
    pub(super) fn session_by_ref(&self, reference: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + reference.len());
        key.push_str(&self.prefix);
        key.push_str("s:");
        key.push_str(reference);
        key
    }

    /// The record key of `token`'s session (one allocation: the per-request lookup).
    pub(super) fn session_key(&self, token: &Token) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + REF_LEN);
        key.push_str(&self.prefix);
        key.push_str("s:");
        write_ref(token, &mut key);
        key
    }

    /// The record key of `token`'s session, and its ref.
    pub(super) fn session(&self, token: &Token) -> (String, String) {
        let reference = session_ref(token);
        (self.session_by_ref(&reference), reference)
    }

    /// The public-id mapping key.
    pub(super) fn public(&self, id: &PublicId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + 6 + 22);
        key.push_str(&self.prefix);
        key.push_str("p:");
        tag([id.0[0], id.0[1]], &mut key);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(id.0, &mut key);
        key
    }

    /// The by-user index key.
    pub(super) fn user(&self, user: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 2 + user.len());
        key.push_str(&self.prefix);
        key.push_str("u:");
        key.push_str(user);
        key
    }

    /// The key of a [`KeyValue`](crate::session::store::KeyValue) entry (`k:` and the
    /// feature's own key).
    pub(super) fn kv(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 2 + key.len());
        out.push_str(&self.prefix);
        out.push_str("k:");
        out.push_str(key);
        out
    }

    /// A `SCAN MATCH` pattern for every session record (glob characters in the prefix
    /// escaped).
    pub(super) fn session_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 4);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("s:*");
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_and_its_public_id_share_a_hash_tag() {
        let public = PublicId([0xab, 0x01, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        let token = draw_token(&public).unwrap();
        let keys = Keys::new("cr:");
        let (session, reference) = keys.session(&token);
        assert!(session.starts_with("cr:s:{ab01}"), "{session}");
        assert_eq!(session, format!("cr:s:{reference}"));
        assert_eq!(keys.session_key(&token), session);
        assert!(keys.public(&public).starts_with("cr:p:{ab01}"));
        // A regeneration draws another token with the same tag.
        let again = draw_token(&public).unwrap();
        assert_ne!(again, token);
        assert_eq!(&keys.session(&again).0[..11], &session[..11]);
    }

    #[test]
    fn keys_never_hold_the_token() {
        let token = Token([7; 32]);
        let reference = session_ref(&token);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.0);
        assert!(!reference.contains(&raw[4..]));
        assert_eq!(reference.len(), 6 + 24);
        assert_eq!(reference, session_ref(&Token([7; 32])));
    }

    #[test]
    fn scan_pattern_escapes_glob_characters() {
        assert_eq!(Keys::new("app*[1]:").session_pattern(), "app\\*\\[1\\]:s:*");
    }
}
