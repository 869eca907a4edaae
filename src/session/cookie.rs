//! The session cookie: sealing a token into a cookie value, opening it again, finding it
//! among the `Cookie` headers, and writing `Set-Cookie`. Pure: no IO.
//!
//! Value: base64url(`0x01` version ‖ 32-byte token ‖ HMAC-SHA256 tag), the tag over a
//! domain-separation label, the cookie name and the token under `session.secret`. A
//! forged, truncated or re-labelled value fails here, before any store lookup, and
//! means "no session", never an error.
//!
//! Rotation: values are made under `session.secret` and accepted under it or any of
//! `session.previous_secrets` (tried in order, the current one first, so only a cookie
//! from before the rotation costs a second MAC).

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;

use super::Token;
use crate::config::{SameSite, SessionConfig};

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const RAW_LEN: usize = 1 + 32 + TAG_LEN;
/// base64url length of `RAW_LEN` bytes without padding.
const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);
const LABEL: &[u8] = b"cloakroom/session-cookie/v1\0";

/// Seals and opens session cookies of one configuration.
#[derive(Debug)]
pub struct CookieCodec {
    /// Random per codec: a [`CookieCache`] filled under another codec (another config
    /// generation, maybe another secret) is never trusted.
    epoch: u64,
    name: String,
    /// `[current, previous…]`: seal with the first, open with any.
    keys: Vec<hmac::Key>,
    /// `; HttpOnly; SameSite=Lax; Secure; Path=/[; Max-Age=N]`, written once.
    attributes: String,
    /// The attributes with `Max-Age=0`, for expiring the cookie.
    expire_attributes: String,
}

impl CookieCodec {
    /// A codec for `config` that seals with `secrets[0]` and opens with any of
    /// `secrets` (the current secret, then the previous ones).
    pub fn new(config: &SessionConfig, secrets: &[&[u8]]) -> CookieCodec {
        let max_age = config
            .persistent
            .then(|| i64::try_from(config.absolute_timeout.as_secs()).unwrap_or(i64::MAX));
        let attributes = cookie_attributes(config, max_age);
        let epoch = u64::from_le_bytes(crate::random::random_bytes::<8>().unwrap_or_default());
        CookieCodec {
            epoch,
            name: config.cookie.clone(),
            keys: secrets
                .iter()
                .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret))
                .collect(),
            attributes,
            expire_attributes: cookie_attributes(config, Some(0)),
        }
    }

    /// The cookie name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cookie value carrying `token`.
    pub fn seal(&self, token: &Token) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..33].copy_from_slice(&token.0);
        // A codec always has its current key; without one the value carries a zero
        // tag, which no key verifies.
        if let Some(key) = self.keys.first() {
            raw[33..].copy_from_slice(hmac::sign(key, &signed_message(&self.name, token)).as_ref());
        }
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The token in `value`, if the value is authentic.
    pub fn open(&self, value: &str) -> Option<Token> {
        if value.len() != ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(value.as_bytes(), &mut raw)
            .ok()?;
        if n != RAW_LEN || raw[0] != VERSION {
            return None;
        }
        let token = Token(raw[1..33].try_into().ok()?);
        let message = signed_message(&self.name, &token);
        // `hmac::verify` compares the tag in constant time.
        self.keys
            .iter()
            .any(|key| hmac::verify(key, &message, &raw[33..]).is_ok())
            .then_some(token)
    }

    /// True when a `name=value` pair of a `Cookie` header is ours.
    pub fn is_ours(&self, pair: &str) -> bool {
        pair.len() > self.name.len()
            && pair.as_bytes().get(self.name.len()) == Some(&b'=')
            && pair.starts_with(self.name.as_str())
    }

    /// The token of the first authentic cookie of ours among all `Cookie` headers
    /// (HTTP/2 may send one header per cookie; browsers may send duplicates).
    pub fn find(&self, headers: &HeaderMap) -> Option<Token> {
        self.values(headers).find_map(|value| self.open(value))
    }

    /// The values of every cookie of ours, in order, across all `Cookie` headers.
    /// Hand-written rather than `cookie::Cookie::split_parse`: finding and verifying our
    /// cookie among five costs 0.93 µs this way and 1.72 µs through the crate
    /// (benches/cookie_header.rs).
    pub(crate) fn values<'h>(
        &'h self,
        headers: &'h HeaderMap,
    ) -> impl Iterator<Item = &'h str> + 'h {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|text| text.split(';'))
            .map(str::trim)
            .filter(|pair| self.is_ours(pair))
            .filter_map(|pair| Some(pair.get(self.name.len() + 1..)?.trim_matches('"')))
    }

    /// Like [`CookieCodec::find`], but remembers the last authentic value in `cache`:
    /// a keep-alive connection sends the same cookie on every request, and a
    /// byte-identical value verified under this codec need not be verified again.
    pub fn find_cached(&self, headers: &HeaderMap, cache: &CookieCache) -> Option<Token> {
        self.values(headers).find_map(|value| {
            if let Some(token) = cache.get(self.epoch, value) {
                return Some(token);
            }
            let token = self.open(value)?;
            cache.put(self.epoch, value, token);
            Some(token)
        })
    }

    /// `Set-Cookie` for `token`.
    pub fn set_cookie(&self, token: &Token) -> Option<HeaderValue> {
        self.set_cookie_value(&self.seal(token))
    }

    /// `Set-Cookie` for an already sealed `value`: the value joined to attributes the
    /// `cookie` crate wrote once (117 ns, against 475 ns to build it with the crate per
    /// request; benches/cookie_header.rs).
    pub fn set_cookie_value(&self, value: &str) -> Option<HeaderValue> {
        let mut text =
            String::with_capacity(self.name.len() + 1 + value.len() + self.attributes.len());
        text.push_str(&self.name);
        text.push('=');
        text.push_str(value);
        text.push_str(&self.attributes);
        // The String's buffer becomes the header's (no second copy).
        let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()?;
        // A secret, unique per session: HTTP/2 must never put it in the HPACK table.
        header.set_sensitive(true);
        Some(header)
    }

    /// `Set-Cookie` that makes the browser drop the cookie.
    pub fn expire_cookie(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("{}={}", self.name, self.expire_attributes)).ok()
    }
}

/// `; HttpOnly; SameSite=…; Secure; Path=/[; Max-Age=N]`, written by the `cookie`
/// crate (which knows the attribute grammar) once per config generation. Never a
/// `Domain`: the `__Host-` prefix forbids one.
fn cookie_attributes(config: &SessionConfig, max_age: Option<i64>) -> String {
    let same_site = match config.same_site {
        SameSite::Strict => cookie::SameSite::Strict,
        SameSite::Lax => cookie::SameSite::Lax,
        SameSite::None => cookie::SameSite::None,
    };
    let mut built = cookie::Cookie::build(("n", ""))
        .path("/")
        .secure(config.secure)
        .http_only(true)
        .same_site(same_site);
    if let Some(seconds) = max_age {
        built = built.max_age(cookie::time::Duration::seconds(seconds));
    }
    // `n=; HttpOnly; …` → `; HttpOnly; …`
    built.build().to_string().split_off(2)
}

/// The last cookie value a connection presented that verified, and its token.
#[derive(Debug, Default)]
pub struct CookieCache(std::sync::Mutex<Option<Verified>>);

#[derive(Debug)]
struct Verified {
    epoch: u64,
    value: [u8; ENCODED_LEN],
    token: Token,
}

impl CookieCache {
    fn get(&self, epoch: u64, value: &str) -> Option<Token> {
        let slot = self.0.lock().ok()?;
        let verified = slot.as_ref()?;
        (verified.epoch == epoch && verified.value[..] == *value.as_bytes())
            .then_some(verified.token)
    }

    fn put(&self, epoch: u64, value: &str, token: Token) {
        let Ok(bytes) = <[u8; ENCODED_LEN]>::try_from(value.as_bytes()) else {
            return;
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Verified {
                epoch,
                value: bytes,
                token,
            });
        }
    }
}

/// The bytes the tag covers (for `hmac::verify`, which takes one slice).
fn signed_message(name: &str, token: &Token) -> Vec<u8> {
    let mut message = Vec::with_capacity(LABEL.len() + name.len() + 1 + 32);
    message.extend_from_slice(LABEL);
    message.extend_from_slice(name.as_bytes());
    message.push(0);
    message.extend_from_slice(&token.0);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(persistent: bool, same_site: SameSite) -> SessionConfig {
        SessionConfig {
            cookie: "__Host-cr".into(),
            same_site,
            secure: true,
            persistent,
            idle_timeout: Duration::from_secs(60),
            absolute_timeout: Duration::from_secs(3600),
            store: crate::config::StoreKind::Memory,
            secret: None,
            max_sessions: 10,
            previous_secrets: Vec::new(),
            persist: None,
            persist_interval: Duration::from_secs(30),
            touch_interval: Duration::from_secs(6),
        }
    }

    fn codec() -> CookieCodec {
        CookieCodec::new(&config(false, SameSite::Lax), &[&[7u8; 32]])
    }

    #[test]
    fn seal_open_round_trip() {
        let c = codec();
        let token = Token([42u8; 32]);
        let value = c.seal(&token);
        assert_eq!(value.len(), ENCODED_LEN);
        assert_eq!(c.open(&value), Some(token));
    }

    #[test]
    fn tampered_truncated_or_foreign_values_fail() {
        let c = codec();
        let value = c.seal(&Token([1u8; 32]));
        let mut bytes = value.clone().into_bytes();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(c.open(std::str::from_utf8(&bytes).unwrap()), None);
        assert_eq!(c.open(&value[..value.len() - 1]), None);
        assert_eq!(c.open(""), None);
        assert_eq!(c.open("garbage"), None);
        assert_eq!(c.open(&"A".repeat(ENCODED_LEN)), None);
        // Another secret, or the same secret under another cookie name, does not open it.
        let other_key = CookieCodec::new(&config(false, SameSite::Lax), &[&[8u8; 32]]);
        assert_eq!(other_key.open(&value), None);
        let mut renamed = config(false, SameSite::Lax);
        renamed.cookie = "__Host-other".into();
        assert_eq!(CookieCodec::new(&renamed, &[&[7u8; 32]]).open(&value), None);
    }

    #[test]
    fn previous_secrets_open_but_never_seal() {
        let old = CookieCodec::new(&config(false, SameSite::Lax), &[&[1u8; 32]]);
        let value = old.seal(&Token([9u8; 32]));
        let rotated = CookieCodec::new(&config(false, SameSite::Lax), &[&[2u8; 32], &[1u8; 32]]);
        assert_eq!(rotated.open(&value), Some(Token([9u8; 32])));
        let fresh = rotated.seal(&Token([9u8; 32]));
        assert_ne!(fresh, value, "new values use the current secret");
        assert_eq!(old.open(&fresh), None);
        let retired = CookieCodec::new(&config(false, SameSite::Lax), &[&[2u8; 32]]);
        assert_eq!(retired.open(&value), None, "a dropped secret opens nothing");
    }

    #[test]
    fn find_takes_first_valid_of_ours_across_headers() {
        let c = codec();
        let good = c.seal(&Token([3u8; 32]));
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-cr=junk"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_str(&format!("__Host-crx=1; __Host-cr={good}; b=2")).unwrap(),
        );
        assert_eq!(c.find(&headers), Some(Token([3u8; 32])));
        let mut none = HeaderMap::new();
        none.append(
            header::COOKIE,
            HeaderValue::from_static(";;; =; __Host-cr; x"),
        );
        assert_eq!(c.find(&none), None);
    }

    #[test]
    fn cache_skips_reverification_only_for_the_same_value_and_codec() {
        let c = codec();
        let cache = CookieCache::default();
        let good = c.seal(&Token([5u8; 32]));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("__Host-cr={good}")).unwrap(),
        );
        assert_eq!(c.find_cached(&headers, &cache), Some(Token([5u8; 32])));
        assert_eq!(c.find_cached(&headers, &cache), Some(Token([5u8; 32])));
        // A different value is verified on its own merits.
        let mut bad = good.clone().into_bytes();
        bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
        headers.insert(
            header::COOKIE,
            HeaderValue::from_bytes(&[b"__Host-cr=".as_slice(), &bad].concat()).unwrap(),
        );
        assert_eq!(c.find_cached(&headers, &cache), None);
        // Another codec (a reload with another secret) does not trust the cache.
        let other = CookieCodec::new(&config(false, SameSite::Lax), &[&[9u8; 32]]);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("__Host-cr={good}")).unwrap(),
        );
        assert_eq!(other.find_cached(&headers, &cache), None);
    }

    #[test]
    fn set_cookie_attributes() {
        let c = codec();
        let v = c.set_cookie(&Token([0u8; 32])).unwrap();
        assert!(v.is_sensitive(), "never indexed by HPACK");
        let v = v.to_str().unwrap();
        assert!(v.starts_with("__Host-cr="));
        assert!(
            v.ends_with("; HttpOnly; SameSite=Lax; Secure; Path=/"),
            "{v}"
        );
        assert!(!v.contains("Domain"));
        let p = CookieCodec::new(&config(true, SameSite::Strict), &[&[7u8; 32]]);
        let v = p.set_cookie(&Token([0u8; 32])).unwrap();
        assert!(v.to_str().unwrap().ends_with("; Path=/; Max-Age=3600"));
        assert!(v.to_str().unwrap().contains("; SameSite=Strict;"));
        let e = p.expire_cookie().unwrap();
        assert_eq!(
            e.to_str().unwrap(),
            "__Host-cr=; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age=0"
        );
    }
}
