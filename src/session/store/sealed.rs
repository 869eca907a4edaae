//! The cookie store (`store = "cookie"`): the whole session (public id, identity,
//! data, pin, timestamps, origin fingerprints) sealed into the cookie's value, so no
//! server keeps anything and every replica with the same secret reads it. Pure: no IO.
//!
//! Value: base64url(`0x02` ‖ key id (4) ‖ salt (16) ‖ AES-256-GCM(record) ‖ tag (16)).
//! Each value is sealed under its own key, HMAC-SHA256(secret key, label ‖ salt), so
//! the (fixed) GCM nonce is never reused under one key however many cookies are made;
//! the additional data binds the value to the cookie's name. The key id picks the
//! secret among `[current, previous…]` without trial decryption.
//!
//! This is not a `SessionStore`: with it the proxy runs on `SessionBackend::Sealed`
//! (decided at start), and the request path seals and opens cookies itself.
//!
//! Honest limits (README "Several replicas"): a copy of the cookie stays valid until
//! it expires (idle or absolute), and ending one session on the server cannot reach a
//! copy; a short `idle_timeout` is the mitigation. The value must stay under what
//! browsers keep ([`MAX_VALUE_LEN`]); a session that would not fit is refused.

use base64::Engine as _;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;

use crate::random::random_bytes;
use crate::session::{record, Session};

const VERSION: u8 = 2;
const KEY_ID_LEN: usize = 4;
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + SALT_LEN;
const TAG_LEN: usize = 16;
const SEAL_LABEL: &[u8] = b"cloakroom/sealed-cookie/v2/seal\0";
const KEY_ID_LABEL: &[u8] = b"cloakroom/sealed-cookie/v2/key-id";
const AAD_LABEL: &[u8] = b"cloakroom/sealed-cookie/v2\0";

/// Longest value this store emits, in base64 characters: browsers keep at least 4096
/// bytes per cookie, name and attributes included, and drop larger ones silently.
pub const MAX_VALUE_LEN: usize = 3800;

/// One secret of the ring.
struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: hmac::Key,
}

/// Seals sessions into cookie values and opens them again.
pub struct SealedCodec {
    /// The cookie name, prefixed with a label: the additional authenticated data.
    aad: Vec<u8>,
    /// `[current, previous…]`.
    keys: Vec<SealKey>,
}

impl std::fmt::Debug for SealedCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedCodec")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// A session could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed value would be longer than browsers keep.
    #[error("the sealed session would be {0} bytes, over the {MAX_VALUE_LEN}-byte cookie bound")]
    TooLarge(usize),
    /// The OS random generator or the cipher failed.
    #[error("sealing failed (random generator or cipher)")]
    Crypto,
}

impl SealedCodec {
    /// A codec for the cookie `name` that seals with `secrets[0]` and opens with any.
    pub fn new(name: &str, secrets: &[&[u8]]) -> SealedCodec {
        let mut aad = AAD_LABEL.to_vec();
        aad.extend_from_slice(name.as_bytes());
        let keys = secrets
            .iter()
            .map(|secret| {
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(&hmac::sign(&key, KEY_ID_LABEL).as_ref()[..KEY_ID_LEN]);
                SealKey { id, key }
            })
            .collect();
        SealedCodec { aad, keys }
    }

    /// The cookie value holding `session`.
    pub fn seal(&self, session: &Session) -> Result<String, SealError> {
        self.seal_bytes(b"", record::encode(session))
    }

    /// The session in `value`, if the value is authentic (made under one of the
    /// secrets, for this cookie name). Expiry is the caller's to check.
    pub fn open(&self, value: &str) -> Option<Session> {
        self.open_with(b"", value, |plain| record::decode(plain).ok())
    }

    /// Seals `body` for `context` (bound into the additional data with the cookie name,
    /// so a value sealed for one context never opens in another): the session is
    /// context `""`; an OIDC login in progress with the cookie store another.
    pub(crate) fn seal_bytes(
        &self,
        context: &[u8],
        mut body: Vec<u8>,
    ) -> Result<String, SealError> {
        let key = self.keys.first().ok_or(SealError::Crypto)?;
        let salt = random_bytes::<SALT_LEN>().map_err(|_| SealError::Crypto)?;
        let mut raw = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&key.id);
        raw.extend_from_slice(&salt);
        let encoded_len = (HEADER_LEN + body.len() + TAG_LEN).div_ceil(3) * 4;
        if encoded_len > MAX_VALUE_LEN {
            return Err(SealError::TooLarge(encoded_len));
        }
        value_key(&key.key, &salt)
            .ok_or(SealError::Crypto)?
            .seal_in_place_append_tag(nonce(), Aad::from(&self.aad_for(context)[..]), &mut body)
            .map_err(|_| SealError::Crypto)?;
        raw.extend_from_slice(&body);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
    }

    /// The bytes sealed in `value` for `context`, if authentic.
    pub(crate) fn open_bytes(&self, context: &[u8], value: &str) -> Option<Vec<u8>> {
        self.open_with(context, value, |plain| Some(plain.to_vec()))
    }

    /// `read` applied to the bytes sealed in `value` for `context`, if authentic
    /// (decrypted in place: no copy).
    fn open_with<T>(
        &self,
        context: &[u8],
        value: &str,
        read: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Option<T> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.as_bytes())
            .ok()?;
        if raw.len() < HEADER_LEN + TAG_LEN || raw.first() != Some(&VERSION) {
            return None;
        }
        let id = raw.get(1..1 + KEY_ID_LEN)?;
        let key = self.keys.iter().find(|k| k.id == id)?;
        let salt: [u8; SALT_LEN] = raw.get(1 + KEY_ID_LEN..HEADER_LEN)?.try_into().ok()?;
        let body = raw.get_mut(HEADER_LEN..)?;
        let plain = value_key(&key.key, &salt)?
            .open_in_place(nonce(), Aad::from(&self.aad_for(context)[..]), body)
            .ok()?;
        read(plain)
    }

    /// The additional data: label, cookie name, and for a non-session value `\0`
    /// and its context.
    fn aad_for(&self, context: &[u8]) -> std::borrow::Cow<'_, [u8]> {
        if context.is_empty() {
            return std::borrow::Cow::Borrowed(&self.aad);
        }
        let mut aad = self.aad.clone();
        aad.push(0);
        aad.extend_from_slice(context);
        std::borrow::Cow::Owned(aad)
    }
}

/// The AES-256-GCM key of one value (`None` only if ring refused a 32-byte key).
fn value_key(key: &hmac::Key, salt: &[u8; SALT_LEN]) -> Option<LessSafeKey> {
    let mut context = hmac::Context::with_key(key);
    context.update(SEAL_LABEL);
    context.update(salt);
    let derived = context.sign();
    UnboundKey::new(&aead::AES_256_GCM, derived.as_ref())
        .ok()
        .map(LessSafeKey::new)
}

/// The nonce: fixed, since every value has its own key.
fn nonce() -> Nonce {
    Nonce::assume_unique_for_key([0u8; aead::NONCE_LEN])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::session::{ClientOrigin, Identity, PublicId};
    use crate::upstream::BackendId;

    fn full() -> Session {
        let mut s = Session::new(PublicId([3; 16]), 1_764_000_000_000);
        s.identity = Some(Arc::new(Identity {
            user: Some("alice".into()),
            roles: Some("admin,dev".into()),
        }));
        s.data = Some(Arc::new(vec![("cart".into(), "3".into())]));
        s.pinned = Some(BackendId(0x1234_5678_9abc_def0));
        s.origin = Some(ClientOrigin {
            agent: 7,
            network: 9,
        });
        s
    }

    #[test]
    fn seal_open_round_trip_and_size() {
        let codec = SealedCodec::new("__Host-c", &[&[1u8; 32]]);
        let value = codec.seal(&full()).unwrap();
        // A user, two roles, one data pair, a pin and origin fingerprints.
        eprintln!("sealed cookie value: {} bytes", value.len());
        assert!(value.len() < 200, "{} chars", value.len());
        assert_eq!(codec.open(&value), Some(full()));
        assert_ne!(codec.seal(&full()).unwrap(), value, "fresh salt per value");
    }

    #[test]
    fn tampered_foreign_or_other_name_fails() {
        let codec = SealedCodec::new("__Host-c", &[&[1u8; 32]]);
        let value = codec.seal(&full()).unwrap();
        for i in [0, 3, 10, 30, value.len() - 1] {
            let mut bytes = value.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert_eq!(codec.open(&tampered), None, "byte {i}");
        }
        assert_eq!(codec.open(&value[..value.len() - 2]), None);
        assert_eq!(codec.open(""), None);
        assert_eq!(codec.open("!!!"), None);
        assert_eq!(
            SealedCodec::new("__Host-c", &[&[2u8; 32]]).open(&value),
            None
        );
        assert_eq!(
            SealedCodec::new("__Host-d", &[&[1u8; 32]]).open(&value),
            None
        );
    }

    #[test]
    fn previous_secrets_open_and_the_current_one_seals() {
        let old = SealedCodec::new("c", &[&[1u8; 32]]);
        let value = old.seal(&full()).unwrap();
        let rotated = SealedCodec::new("c", &[&[2u8; 32], &[1u8; 32]]);
        assert_eq!(rotated.open(&value), Some(full()));
        let fresh = rotated.seal(&full()).unwrap();
        assert_eq!(old.open(&fresh), None, "new values use the new secret");
    }

    #[test]
    fn oversized_sessions_are_refused() {
        let codec = SealedCodec::new("c", &[&[1u8; 32]]);
        let mut s = full();
        s.data = Some(Arc::new(
            (0..40)
                .map(|i| (format!("k{i}"), "v".repeat(100)))
                .collect(),
        ));
        assert!(matches!(codec.seal(&s), Err(SealError::TooLarge(_))));
    }
}
