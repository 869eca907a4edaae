//! The claims of a verified ID token or logout token, checked against what this login
//! expects: `iss` exactly, `aud` holding our client id (and `azp` when there are
//! several audiences, or whenever it is present), `exp` and `iat` within [`LEEWAY_S`],
//! the login's `nonce`, and `at_hash` when present. A logout token (OIDC Back-Channel
//! Logout 1.0 §2.6) has its own rules: the `events` member, a `jti`, no `nonce`, and a
//! `sid` or a `sub`. Pure: `now` is a parameter.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::jws::{Alg, Verified};
use super::TokenError;

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub(crate) const LEEWAY_S: u64 = 60;

/// The event a logout token carries.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What the tokens of one provider must say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) client_id: &'a str,
    /// Unix seconds.
    pub(crate) now: u64,
}

/// The identity an ID token carries, once every check passed.
#[derive(Debug, Clone)]
pub(crate) struct IdClaims {
    pub(crate) sub: String,
    pub(crate) sid: Option<String>,
    pub(crate) claims: Map<String, Value>,
}

/// What a logout token names, once every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogoutClaims {
    pub(crate) sid: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) jti: String,
    /// Unix seconds until which the token could be replayed (its `exp`, or `iat` plus
    /// a margin when it has none).
    pub(crate) replayable_until: u64,
}

fn text<'m>(claims: &'m Map<String, Value>, name: &str) -> Option<&'m str> {
    claims.get(name).and_then(Value::as_str)
}

fn seconds(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::Claim(name)),
    }
}

/// `iss`, `aud`/`azp`, `exp` (required when `exp_required`), `iat`.
fn common(
    claims: &Map<String, Value>,
    expect: Expect<'_>,
    exp_required: bool,
) -> Result<u64, TokenError> {
    if text(claims, "iss") != Some(expect.issuer) {
        return Err(TokenError::Issuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&expect.client_id) {
        return Err(TokenError::Audience);
    }
    let azp = text(claims, "azp");
    if (audiences.len() > 1 || azp.is_some()) && azp != Some(expect.client_id) {
        return Err(TokenError::Azp);
    }
    let exp = seconds(claims, "exp")?;
    match exp {
        Some(exp) if expect.now > exp.saturating_add(LEEWAY_S) => return Err(TokenError::Expired),
        None if exp_required => return Err(TokenError::Claim("exp")),
        _ => {}
    }
    let iat = seconds(claims, "iat")?.ok_or(TokenError::Claim("iat"))?;
    if iat > expect.now.saturating_add(LEEWAY_S) {
        return Err(TokenError::IssuedInFuture);
    }
    Ok(exp.unwrap_or(iat.saturating_add(600)))
}

/// Checks an ID token's claims for the login that expected `nonce` and received
/// `access_token` with it.
pub(crate) fn id_token(
    verified: Verified,
    expect: Expect<'_>,
    nonce: &str,
    access_token: Option<&str>,
) -> Result<IdClaims, TokenError> {
    let claims = verified.claims;
    common(&claims, expect, true)?;
    if text(&claims, "nonce") != Some(nonce) {
        return Err(TokenError::Nonce);
    }
    if let (Some(at_hash), Some(token)) = (text(&claims, "at_hash"), access_token) {
        if at_hash != token_hash(verified.alg, token) {
            return Err(TokenError::AtHash);
        }
    }
    let sub = text(&claims, "sub")
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::Claim("sub"))?
        .to_owned();
    let sid = text(&claims, "sid").map(str::to_owned);
    Ok(IdClaims { sub, sid, claims })
}

/// Checks a logout token's claims (the replay guard on `jti` is the caller's).
pub(crate) fn logout_token(
    verified: &Verified,
    expect: Expect<'_>,
) -> Result<LogoutClaims, TokenError> {
    let claims = &verified.claims;
    if verified
        .header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.eq_ignore_ascii_case("logout+jwt") && !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(TokenError::Claim("typ"));
    }
    let until = common(claims, expect, false)?;
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(TokenError::Claim("events"));
    }
    if claims.contains_key("nonce") {
        return Err(TokenError::Claim("nonce"));
    }
    let jti = text(claims, "jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(TokenError::Claim("jti"))?
        .to_owned();
    let sid = text(claims, "sid")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let sub = text(claims, "sub")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if sid.is_none() && sub.is_none() {
        return Err(TokenError::Claim("sid"));
    }
    Ok(LogoutClaims {
        sid,
        sub,
        jti,
        replayable_until: until.saturating_add(LEEWAY_S),
    })
}

/// `at_hash`: base64url of the left half of the access token's hash.
pub(crate) fn token_hash(alg: Alg, token: &str) -> String {
    let digest = ring::digest::digest(alg.digest(), token.as_bytes());
    let half = digest
        .as_ref()
        .get(..digest.as_ref().len() / 2)
        .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(half)
}

#[cfg(test)]
mod tests {
    use super::super::jws::tests::TestKey;
    use super::super::jws::verify;
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://idp.test";
    const NOW: u64 = 1_800_000_000;

    fn expect() -> Expect<'static> {
        Expect {
            issuer: ISS,
            client_id: "cr",
            now: NOW,
        }
    }

    fn good() -> Value {
        json!({"iss": ISS, "aud": "cr", "sub": "alice", "exp": NOW + 300, "iat": NOW,
               "nonce": "n1", "sid": "s1", "at_hash": token_hash(Alg::EdDsa, "at")})
    }

    fn check(claims: Value) -> Result<IdClaims, TokenError> {
        let key = TestKey::new("k");
        let verified = verify(&key.token(&claims), &key.jwks(), &[Alg::EdDsa])?;
        id_token(verified, expect(), "n1", Some("at"))
    }

    fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
        let mut v = good();
        if let Value::Object(m) = &mut v {
            change(m);
        }
        v
    }

    #[test]
    fn good_id_token_passes() {
        let c = check(good()).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_deref()), ("alice", Some("s1")));
        // Leeway both ways.
        check(with(|m| {
            m.insert("exp".into(), json!(NOW - 59));
            m.insert("iat".into(), json!(NOW + 59));
        }))
        .unwrap();
    }

    #[test]
    fn every_id_token_check_refuses() {
        type Case = (Value, fn(&TokenError) -> bool);
        let cases: Vec<Case> = vec![
            (
                with(|m| drop(m.insert("iss".into(), json!("https://evil.test")))),
                |e| matches!(e, TokenError::Issuer),
            ),
            (
                with(|m| drop(m.insert("iss".into(), json!("https://idp.test/")))),
                |e| matches!(e, TokenError::Issuer),
            ),
            (
                with(|m| drop(m.insert("aud".into(), json!("other")))),
                |e| matches!(e, TokenError::Audience),
            ),
            (with(|m| drop(m.remove("aud"))), |e| {
                matches!(e, TokenError::Audience)
            }),
            (
                with(|m| drop(m.insert("aud".into(), json!(["cr", "other"])))),
                |e| matches!(e, TokenError::Azp),
            ),
            (
                with(|m| drop(m.insert("azp".into(), json!("other")))),
                |e| matches!(e, TokenError::Azp),
            ),
            (
                with(|m| drop(m.insert("exp".into(), json!(NOW - 61)))),
                |e| matches!(e, TokenError::Expired),
            ),
            (with(|m| drop(m.remove("exp"))), |e| {
                matches!(e, TokenError::Claim("exp"))
            }),
            (with(|m| drop(m.insert("exp".into(), json!("soon")))), |e| {
                matches!(e, TokenError::Claim("exp"))
            }),
            (
                with(|m| drop(m.insert("iat".into(), json!(NOW + 61)))),
                |e| matches!(e, TokenError::IssuedInFuture),
            ),
            (with(|m| drop(m.remove("iat"))), |e| {
                matches!(e, TokenError::Claim("iat"))
            }),
            (with(|m| drop(m.insert("nonce".into(), json!("n2")))), |e| {
                matches!(e, TokenError::Nonce)
            }),
            (with(|m| drop(m.remove("nonce"))), |e| {
                matches!(e, TokenError::Nonce)
            }),
            (
                with(|m| drop(m.insert("at_hash".into(), json!("AAAA")))),
                |e| matches!(e, TokenError::AtHash),
            ),
            (with(|m| drop(m.remove("sub"))), |e| {
                matches!(e, TokenError::Claim("sub"))
            }),
        ];
        for (claims, expected) in cases {
            let error = check(claims.clone()).unwrap_err();
            assert!(expected(&error), "{claims} gave {error:?}");
        }
        // Several audiences with azp = us pass.
        check(with(|m| {
            m.insert("aud".into(), json!(["other", "cr"]));
            m.insert("azp".into(), json!("cr"));
        }))
        .unwrap();
    }

    fn logout(claims: Value, header: Value) -> Result<LogoutClaims, TokenError> {
        let key = TestKey::new("k");
        let verified = verify(&key.sign(header, &claims), &key.jwks(), &[Alg::EdDsa])?;
        logout_token(&verified, expect())
    }

    fn good_logout() -> Value {
        json!({"iss": ISS, "aud": "cr", "iat": NOW, "exp": NOW + 120, "jti": "j1", "sid": "s1",
               "events": {BACKCHANNEL_EVENT: {}}})
    }

    #[test]
    fn logout_token_rules() {
        let header = json!({"alg": "EdDSA", "kid": "k", "typ": "logout+jwt"});
        let ok = logout(good_logout(), header.clone()).unwrap();
        assert_eq!((ok.sid.as_deref(), ok.jti.as_str()), (Some("s1"), "j1"));
        assert_eq!(ok.replayable_until, NOW + 180);
        let change = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut v = good_logout();
            if let Value::Object(m) = &mut v {
                f(m);
            }
            v
        };
        let bad = [
            change(&|m| drop(m.remove("events"))),
            change(&|m| drop(m.insert("events".into(), json!({"other": {}})))),
            change(&|m| drop(m.remove("jti"))),
            change(&|m| drop(m.insert("nonce".into(), json!("n")))),
            change(&|m| {
                m.remove("sid");
            }),
            change(&|m| drop(m.insert("iss".into(), json!("https://evil.test")))),
            change(&|m| drop(m.insert("aud".into(), json!("x")))),
            change(&|m| drop(m.insert("exp".into(), json!(NOW - 100)))),
        ];
        for claims in bad {
            assert!(logout(claims.clone(), header.clone()).is_err(), "{claims}");
        }
        let sub_only = change(&|m| {
            m.remove("sid");
            m.insert("sub".into(), json!("alice"));
        });
        assert_eq!(
            logout(sub_only, header).unwrap().sub.as_deref(),
            Some("alice")
        );
        let id_typ = json!({"alg": "EdDSA", "kid": "k", "typ": "at+jwt"});
        assert!(logout(good_logout(), id_typ).is_err());
    }
}
