//! Compact JWS verification on `ring`: the provider's keys (a JWKS), the algorithm
//! allow-list and the signature. Pure: no IO, no clock (the claims are checked in
//! [`claims`](super::claims)).
//!
//! Five algorithms are accepted, and only those the provider advertises: `EdDSA`
//! (Ed25519), `ES256`, `ES384`, `RS256`, `PS256`. `none` and every HMAC (`HS*`) are
//! refused before any key is looked at, so a token "signed" with the provider's public
//! key as an HMAC secret, or not signed at all, never verifies. A key is used only for
//! the algorithm family of its type (an RSA key never verifies an `ES256` token), and
//! only when its `use` and `alg` (when present) agree.

use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::TokenError;

/// Longest token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A signature algorithm cloakroom verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    EdDsa,
    Es256,
    Es384,
    Rs256,
    Ps256,
}

impl Alg {
    /// The algorithm named `name`, if it is one of the five.
    pub(crate) fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "EdDSA" => Alg::EdDsa,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "RS256" => Alg::Rs256,
            "PS256" => Alg::Ps256,
            _ => return None,
        })
    }

    /// The digest `at_hash` is made with (the left half of the hash of the access
    /// token, with the hash of the signing algorithm; SHA-512 for Ed25519).
    pub(crate) fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Alg::EdDsa => &ring::digest::SHA512,
            Alg::Es384 => &ring::digest::SHA384,
            Alg::Es256 | Alg::Rs256 | Alg::Ps256 => &ring::digest::SHA256,
        }
    }
}

/// One verifying key of the provider.
#[derive(Debug, Clone)]
pub(crate) struct Jwk {
    pub(crate) kid: Option<String>,
    /// The `alg` member, when the provider pinned one.
    alg: Option<Alg>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point (`04 ‖ x ‖ y`) and whether it is P-384 (else P-256).
    Ec {
        point: Vec<u8>,
        p384: bool,
    },
    Ed25519(Vec<u8>),
}

impl Jwk {
    /// Whether this key may verify `alg`.
    fn fits(&self, alg: Alg) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (PublicKey::Rsa { .. }, Alg::Rs256 | Alg::Ps256)
                | (PublicKey::Ec { p384: false, .. }, Alg::Es256)
                | (PublicKey::Ec { p384: true, .. }, Alg::Es384)
                | (PublicKey::Ed25519(_), Alg::EdDsa)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = match alg {
                    Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA256,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            PublicKey::Ec { point, p384 } => {
                let params = if *p384 {
                    &signature::ECDSA_P384_SHA384_FIXED
                } else {
                    &signature::ECDSA_P256_SHA256_FIXED
                };
                UnparsedPublicKey::new(params, point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

fn b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The signing keys of a JWKS document. Keys of other types (`oct` above all), for
/// encryption, or malformed, are skipped: they can never verify anything.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::new();
    for key in keys {
        let text = |name: &str| key.get(name).and_then(Value::as_str);
        if text("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match text("alg") {
            Some(name) => match Alg::parse(name) {
                Some(alg) => Some(alg),
                None => continue,
            },
            None => None,
        };
        let bytes = |name: &str| text(name).and_then(b64);
        let parsed = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => bytes("n")
                .zip(bytes("e"))
                .map(|(n, e)| PublicKey::Rsa { n, e }),
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let size = if crv == "P-384" { 48 } else { 32 };
                bytes("x").zip(bytes("y")).and_then(|(x, y)| {
                    (x.len() == size && y.len() == size).then(|| {
                        let mut point = Vec::with_capacity(1 + 2 * size);
                        point.push(4);
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        PublicKey::Ec {
                            point,
                            p384: size == 48,
                        }
                    })
                })
            }
            (Some("OKP"), Some("Ed25519")) => bytes("x").map(PublicKey::Ed25519),
            _ => None,
        };
        if let Some(parsed) = parsed {
            out.push(Jwk {
                kid: text("kid").map(str::to_owned),
                alg,
                key: parsed,
            });
        }
    }
    Ok(out)
}

/// A token whose signature verified: its algorithm, header and claims.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) alg: Alg,
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
}

/// Verifies the compact JWS `token` with one of `keys`, for one of `allowed`.
/// [`TokenError::UnknownKey`] means no key has its `kid` (the caller may refresh the
/// keys once and retry).
pub(crate) fn verify(token: &str, keys: &[Jwk], allowed: &[Alg]) -> Result<Verified, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = json_object(head)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let alg = Alg::parse(alg_name)
        .filter(|alg| allowed.contains(alg))
        .ok_or_else(|| TokenError::Algorithm(alg_name.chars().take(16).collect()))?;
    if header.contains_key("crit") {
        // No extension is understood, so none may be critical (RFC 7515 §4.1.11).
        return Err(TokenError::Malformed);
    }
    let signature = b64(sig).ok_or(TokenError::Malformed)?;
    let message = token
        .get(..head.len() + 1 + body.len())
        .ok_or(TokenError::Malformed)?
        .as_bytes();
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Jwk> = keys
        .iter()
        .filter(|k| k.fits(alg))
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .collect();
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    if !candidates
        .iter()
        .any(|k| k.verify(alg, message, &signature))
    {
        return Err(TokenError::Signature);
    }
    let claims = json_object(body)?;
    Ok(Verified {
        alg,
        header,
        claims,
    })
}

fn json_object(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = b64(part).ok_or(TokenError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

    pub(crate) fn enc(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An Ed25519 test key: its JWKS entry and a signer.
    pub(crate) struct TestKey {
        pair: Ed25519KeyPair,
        pub(crate) kid: String,
    }

    impl TestKey {
        pub(crate) fn new(kid: &str) -> TestKey {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            TestKey {
                pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
                kid: kid.into(),
            }
        }

        pub(crate) fn jwks(&self) -> Vec<Jwk> {
            let doc = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519",
                "kid": self.kid, "x": enc(self.pair.public_key().as_ref())}]});
            parse_jwks(doc.to_string().as_bytes()).unwrap()
        }

        pub(crate) fn sign(&self, header: Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                enc(header.to_string().as_bytes()),
                enc(claims.to_string().as_bytes())
            );
            let sig = self.pair.sign(input.as_bytes());
            format!("{input}.{}", enc(sig.as_ref()))
        }

        pub(crate) fn token(&self, claims: &Value) -> String {
            self.sign(serde_json::json!({"alg": "EdDSA", "kid": self.kid}), claims)
        }
    }

    const ALL: [Alg; 5] = [Alg::EdDsa, Alg::Es256, Alg::Es384, Alg::Rs256, Alg::Ps256];

    #[test]
    fn good_signature_verifies() {
        let key = TestKey::new("k1");
        let token = key.token(&serde_json::json!({"sub": "a"}));
        let v = verify(&token, &key.jwks(), &ALL).unwrap();
        assert_eq!(v.alg, Alg::EdDsa);
        assert_eq!(v.claims["sub"], "a");
    }

    #[test]
    fn tampered_payload_fails() {
        let key = TestKey::new("k1");
        let token = key.token(&serde_json::json!({"sub": "a"}));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = enc(br#"{"sub":"admin"}"#);
        parts[1] = &forged;
        let forged = parts.join(".");
        assert!(matches!(
            verify(&forged, &key.jwks(), &ALL),
            Err(TokenError::Signature)
        ));
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let key = TestKey::new("k1");
        let claims = enc(br#"{"sub":"a"}"#);
        let none = format!("{}.{claims}.", enc(br#"{"alg":"none"}"#));
        assert!(matches!(
            verify(&none, &key.jwks(), &ALL),
            Err(TokenError::Algorithm(_))
        ));
        // HS256 keyed with the public key's bytes: the classic confusion.
        let input = format!("{}.{claims}", enc(br#"{"alg":"HS256","kid":"k1"}"#));
        let public = match &key.jwks()[0].key {
            PublicKey::Ed25519(x) => x.clone(),
            _ => unreachable!(),
        };
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
            input.as_bytes(),
        );
        let hmac = format!("{input}.{}", enc(mac.as_ref()));
        assert!(matches!(
            verify(&hmac, &key.jwks(), &ALL),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn algorithm_outside_the_advertised_list_is_refused() {
        let key = TestKey::new("k1");
        let token = key.token(&serde_json::json!({}));
        assert!(matches!(
            verify(&token, &key.jwks(), &[Alg::Rs256]),
            Err(TokenError::Algorithm(_))
        ));
    }

    #[test]
    fn unknown_kid_and_wrong_key_type() {
        let key = TestKey::new("k1");
        let other = TestKey::new("k2");
        let token = key.token(&serde_json::json!({}));
        assert!(matches!(
            verify(&token, &other.jwks(), &ALL),
            Err(TokenError::UnknownKey)
        ));
        // The right kid on a key of another owner: the signature decides.
        let mut keys = other.jwks();
        keys[0].kid = Some("k1".into());
        assert!(matches!(
            verify(&token, &keys, &ALL),
            Err(TokenError::Signature)
        ));
        // An ES256 header against an Ed25519 key: no key fits.
        let es = key.sign(
            serde_json::json!({"alg": "ES256", "kid": "k1"}),
            &serde_json::json!({}),
        );
        assert!(matches!(
            verify(&es, &key.jwks(), &ALL),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn ecdsa_verifies() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let doc = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e",
            "x": enc(&point[1..33]), "y": enc(&point[33..])}, {"kty": "oct", "k": "c2VjcmV0"}]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1, "the oct key is skipped");
        let input = format!(
            "{}.{}",
            enc(br#"{"alg":"ES256","kid":"e"}"#),
            enc(br#"{"sub":"x"}"#)
        );
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", enc(sig.as_ref()));
        assert!(verify(&token, &keys, &ALL).is_ok());
    }

    #[test]
    fn malformed_tokens() {
        let keys = TestKey::new("k").jwks();
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(verify(bad, &keys, &ALL).is_err(), "{bad:.20}");
        }
    }
}
