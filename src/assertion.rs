//! Signed identity assertions: a compact JWS (RFC 7515, `alg: EdDSA`, Ed25519) of the
//! session's identity for the upstream (`inject.assertion`), and the JWKS that verifies
//! it (`GET /.cloakroom/jwks.json`).
//!
//! Claims: `iss` (`cloakroom`), `sub` (the user; absent when anonymous), `roles` (an
//! array), `sid` (the public id), `aud` (the upstream's name), `iat`, `exp`
//! (`iat + assertion_ttl`). `kid` is the key's RFC 7638 thumbprint.
//!
//! Signing costs tens of microseconds, so a token is signed once per session state and
//! reused: each connection keeps its last token ([`AssertionCache`]) and re-signs only
//! when the session, its identity, the upstream or the config generation changed, or
//! when half the token's lifetime has passed (a token always reaches the app with at
//! least `ttl / 2` left). Pure apart from the signing key: no IO, `now` is a parameter.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::config::AssertionConfig;
use crate::session::{Identity, PublicId, Session};

/// The `iss` claim.
const ISSUER: &str = "cloakroom";

/// Why the assertion signer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// The key is not a usable Ed25519 PKCS#8 key (validation checks it first).
    #[error("inject.assertion_key is not an Ed25519 PKCS#8 key")]
    Key,
    /// The OS random generator failed while generating a per-instance key.
    #[error("could not generate an Ed25519 key")]
    Generate,
}

/// Generates a per-instance Ed25519 key (PKCS#8 DER), for when `assertion_key` is empty.
pub fn generate_key() -> Result<Vec<u8>, AssertionError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| AssertionError::Generate)
}

/// The signer of one config generation.
pub struct Assertions {
    /// The request header the token travels in.
    pub(crate) header: HeaderName,
    key: Ed25519KeyPair,
    /// base64url of the protected header (`alg`, `typ`, `kid`), with the trailing `.`.
    protected: String,
    /// The JWKS document, built once.
    jwks: Bytes,
    ttl_s: u64,
    /// Random per signer: a cache filled under another signer is never used.
    epoch: u64,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("header", &self.header)
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

impl Assertions {
    /// A signer for `config`; `generated` (PKCS#8) is used when no key is configured.
    pub fn new(config: &AssertionConfig, generated: &[u8]) -> Result<Assertions, AssertionError> {
        let der = config.key.as_ref().map_or(generated, |k| &k.0[..]);
        let key =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| AssertionError::Key)?;
        let public: &[u8] = key.public_key().as_ref();
        let kid = thumbprint(public);
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#);
        let mut protected = URL_SAFE_NO_PAD.encode(header);
        protected.push('.');
        let mut keys = vec![jwk(public)];
        keys.extend(
            config
                .previous_public_keys
                .iter()
                .filter(|k| k[..] != *public)
                .map(|k| jwk(k)),
        );
        let jwks = Bytes::from(format!(r#"{{"keys":[{}]}}"#, keys.join(",")));
        let epoch = u64::from_le_bytes(crate::random::random_bytes().unwrap_or([7; 8]));
        Ok(Assertions {
            header: config.header.clone(),
            key,
            protected,
            jwks,
            ttl_s: config.ttl.as_secs().max(1),
            epoch,
        })
    }

    /// The JWKS (`{"keys":[...]}`) with the current key first, then previous ones.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// Signs a fresh token for `session` at `now_s` (unix seconds), for the upstream
    /// named `audience`.
    pub fn sign(&self, session: &Session, audience: &str, now_s: u64) -> Option<HeaderValue> {
        let claims = claims(session, audience, now_s, now_s.saturating_add(self.ttl_s));
        let mut token = String::with_capacity(self.protected.len() + claims.len() * 2 + 90);
        token.push_str(&self.protected);
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        HeaderValue::from_str(&token).ok()
    }

    /// The token for `session` and upstream `upstream` (index) / `audience` (name):
    /// the connection's cached one when still fresh and for the same state, else a new
    /// one (then cached).
    pub fn token(
        &self,
        cache: &AssertionCache,
        session: &Session,
        upstream: usize,
        audience: &str,
        now_s: u64,
    ) -> Option<HeaderValue> {
        let mut slot = crate::lock(&cache.0);
        if let Some(cached) = slot.as_ref() {
            if cached.epoch == self.epoch
                && cached.public_id == session.public_id
                && cached.upstream == upstream
                && cached.identity == session.identity
                && now_s < cached.refresh_at
                && now_s >= cached.issued_at
            {
                return Some(cached.value.clone());
            }
        }
        let value = self.sign(session, audience, now_s)?;
        *slot = Some(Cached {
            epoch: self.epoch,
            public_id: session.public_id,
            upstream,
            identity: session.identity.clone(),
            issued_at: now_s,
            refresh_at: now_s.saturating_add(self.ttl_s / 2),
            value: value.clone(),
        });
        Some(value)
    }
}

/// A connection's last signed token and what it was signed for.
#[derive(Debug, Default)]
pub struct AssertionCache(std::sync::Mutex<Option<Cached>>);

#[derive(Debug)]
struct Cached {
    epoch: u64,
    public_id: PublicId,
    upstream: usize,
    identity: Option<Arc<Identity>>,
    issued_at: u64,
    refresh_at: u64,
    value: HeaderValue,
}

/// The claims JSON.
fn claims(session: &Session, audience: &str, iat: u64, exp: u64) -> String {
    let mut out = String::with_capacity(160);
    out.push_str(r#"{"iss":""#);
    out.push_str(ISSUER);
    out.push('"');
    if let Some(user) = session.user() {
        out.push_str(r#","sub":"#);
        json_string(user, &mut out);
    }
    out.push_str(r#","roles":["#);
    let roles = session
        .roles()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty());
    for (i, role) in roles.enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(role, &mut out);
    }
    out.push_str(r#"],"sid":""#);
    out.push_str(&session.public_id.encode());
    out.push_str(r#"","aud":"#);
    json_string(audience, &mut out);
    out.push_str(r#","iat":"#);
    out.push_str(&iat.to_string());
    out.push_str(r#","exp":"#);
    out.push_str(&exp.to_string());
    out.push('}');
    out
}

/// Appends `text` as a JSON string.
fn json_string(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 7638 thumbprint of an Ed25519 public key (RFC 8037 OKP members in order).
fn thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// One JWK of the JWKS.
fn jwk(public: &[u8]) -> String {
    format!(
        r#"{{"kty":"OKP","crv":"Ed25519","x":"{}","kid":"{}","alg":"EdDSA","use":"sig"}}"#,
        URL_SAFE_NO_PAD.encode(public),
        thumbprint(public)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signer(previous: Vec<[u8; 32]>) -> Assertions {
        let config = AssertionConfig {
            header: HeaderName::from_static("x-session-assertion"),
            key: None,
            previous_public_keys: previous,
            ttl: Duration::from_secs(60),
        };
        Assertions::new(&config, &generate_key().unwrap()).unwrap()
    }

    fn part(token: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap()
    }

    #[test]
    fn token_verifies_with_the_public_key_and_carries_the_claims() {
        let a = signer(Vec::new());
        let mut session = Session::new(PublicId([3; 16]), 0);
        session.identity = Some(Arc::new(Identity {
            user: Some("ann \"the\" admin".into()),
            roles: Some("admin, ops".into()),
        }));
        let token = a.sign(&session, "app", 1000).unwrap();
        let token = token.to_str().unwrap();
        let header = String::from_utf8(part(token, 0)).unwrap();
        assert!(header.contains(r#""alg":"EdDSA""#), "{header}");
        let claims = String::from_utf8(part(token, 1)).unwrap();
        assert_eq!(
            claims,
            format!(
                r#"{{"iss":"cloakroom","sub":"ann \"the\" admin","roles":["admin","ops"],"sid":"{}","aud":"app","iat":1000,"exp":1060}}"#,
                session.public_id.encode()
            )
        );
        let (input, _) = token.rsplit_once('.').unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            a.key.public_key().as_ref(),
        );
        public.verify(input.as_bytes(), &part(token, 2)).unwrap();
        let mut tampered = part(token, 2);
        tampered[0] ^= 1;
        assert!(public.verify(input.as_bytes(), &tampered).is_err());
    }

    #[test]
    fn anonymous_sessions_have_no_sub_and_empty_roles() {
        let a = signer(Vec::new());
        let token = a
            .sign(&Session::new(PublicId([1; 16]), 0), "app", 5)
            .unwrap();
        let claims = String::from_utf8(part(token.to_str().unwrap(), 1)).unwrap();
        assert!(
            !claims.contains("sub") && claims.contains(r#""roles":[]"#),
            "{claims}"
        );
    }

    #[test]
    fn cache_reuses_a_token_until_half_its_life_or_a_state_change() {
        let a = signer(Vec::new());
        let cache = AssertionCache::default();
        let mut session = Session::new(PublicId([1; 16]), 0);
        let first = a.token(&cache, &session, 0, "app", 100).unwrap();
        assert_eq!(a.token(&cache, &session, 0, "app", 129).unwrap(), first);
        assert_ne!(a.token(&cache, &session, 0, "app", 130).unwrap(), first);
        let second = a.token(&cache, &session, 0, "app", 130).unwrap();
        assert_ne!(a.token(&cache, &session, 1, "other", 130).unwrap(), second);
        let third = a.token(&cache, &session, 1, "other", 130).unwrap();
        session.identity = Some(Arc::new(Identity {
            user: Some("ann".into()),
            roles: None,
        }));
        assert_ne!(a.token(&cache, &session, 1, "other", 130).unwrap(), third);
    }

    #[test]
    fn jwks_lists_the_current_key_then_previous_ones_with_thumbprint_kids() {
        let a = signer(vec![[9; 32]]);
        let jwks = String::from_utf8(a.jwks().to_vec()).unwrap();
        assert_eq!(jwks.matches(r#""kty":"OKP""#).count(), 2, "{jwks}");
        assert!(jwks.contains(&thumbprint(a.key.public_key().as_ref())));
        // RFC 8037 appendix A.3's thumbprint of its example key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
