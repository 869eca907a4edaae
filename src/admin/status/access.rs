//! Who may use the status page, and which requests may change state.
//!
//! - Without `admin_token` the page is open (the listener is on loopback; config
//!   validation requires a token otherwise), but only under a loopback or IP-literal
//!   `Host`: a page of another site whose name was made to resolve to 127.0.0.1 (DNS
//!   rebinding) gets nothing.
//! - With `admin_token`, the page asks for it once. The cookie it then sets is not the
//!   token: it holds an expiry and an HMAC of it keyed by the token, so it ends by
//!   itself, and changing the token ends every cookie. It is `HttpOnly`,
//!   `SameSite=Strict`, host-only with `Path=/`. An `Authorization: Bearer` header works
//!   as well (scripts).
//! - Every state-changing request (end sessions, log out) carries a CSRF token bound to
//!   the cookie (an HMAC with a per-process key), and its `Origin` (or, without one,
//!   `Sec-Fetch-Site`) must be this same origin.
//!
//! Token and cookie comparisons are constant-time (`ring::hmac::verify`). Neither the
//! token nor the cookie value is ever logged or written into a page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::{self, HeaderMap};
use ring::hmac;

use crate::config::Secret;

/// The page's cookie.
pub(crate) const COOKIE: &str = "cloakroom_admin";
/// How long a cookie from the token form lasts.
pub(crate) const COOKIE_LIFE_S: u64 = 12 * 3600;

/// The per-process key that CSRF tokens are made with.
#[derive(Debug)]
pub(crate) struct CsrfKey(hmac::Key);

impl CsrfKey {
    /// A key from the OS random generator (a fixed one if that failed: the CSRF token
    /// is then still bound to the cookie, and `Origin` is still checked).
    pub(crate) fn random() -> CsrfKey {
        let bytes = crate::random::random_bytes::<32>().unwrap_or([0x5a; 32]);
        CsrfKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    /// The CSRF token of a client holding `cookie` (`""` on an open page).
    pub(crate) fn token(&self, cookie: &str) -> String {
        let tag = hmac::sign(&self.0, format!("csrf\0{cookie}").as_bytes());
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `presented` is the CSRF token of `cookie`.
    pub(crate) fn verify(&self, cookie: &str, presented: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(presented) else {
            return false;
        };
        hmac::verify(&self.0, format!("csrf\0{cookie}").as_bytes(), &tag).is_ok()
    }
}

fn cookie_key(token: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &token.0)
}

/// A cookie value for `token`, valid until `expires_ms`: `v1.EXPIRY.TAG`.
pub(crate) fn issue_cookie(token: &Secret, expires_ms: u64) -> String {
    let payload = format!("v1.{expires_ms}");
    let tag = hmac::sign(&cookie_key(token), payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Whether `value` is a cookie issued for `token` that has not expired at `now_ms`.
pub(crate) fn cookie_valid(token: &Secret, value: &str, now_ms: u64) -> bool {
    let Some((payload, tag)) = value.rsplit_once('.') else {
        return false;
    };
    let Some(expires) = payload
        .strip_prefix("v1.")
        .and_then(|e| e.parse::<u64>().ok())
    else {
        return false;
    };
    let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
        return false;
    };
    expires > now_ms && hmac::verify(&cookie_key(token), payload.as_bytes(), &tag).is_ok()
}

/// Whether `presented` is the token (constant time: both sides go through an HMAC).
pub(crate) fn token_matches(token: &Secret, presented: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"cloakroom admin token check");
    let expected = hmac::sign(&key, &token.0);
    !presented.is_empty() && hmac::verify(&key, presented, expected.as_ref()).is_ok()
}

/// The value of our cookie in the request, if any.
pub(crate) fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether a request may see the page: no token configured, a valid cookie, or the
/// right `Bearer` token.
pub(crate) fn admitted(token: Option<&Secret>, headers: &HeaderMap, now_ms: u64) -> bool {
    let Some(token) = token else {
        return true;
    };
    if cookie_of(headers).is_some_and(|c| cookie_valid(token, c, now_ms)) {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| token_matches(token, presented))
}

/// Whether the `Host` may be served an open page: loopback names and IP literals only
/// (a rebound DNS name is neither).
pub(crate) fn host_allowed(token: Option<&Secret>, headers: &HeaderMap) -> bool {
    if token.is_some() {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Whether an unsafe request comes from this origin: its `Origin` is `http://{Host}`;
/// without `Origin`, its `Sec-Fetch-Site` (if sent) is `same-origin`.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (headers.get(header::ORIGIN), host) {
        (Some(origin), Some(host)) => origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
        (None, _) => headers
            .get("sec-fetch-site")
            .is_none_or(|site| site.as_bytes() == b"same-origin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_bound_to_the_token_and_expire() {
        let token = Secret(b"the-admin-token".to_vec());
        let other = Secret(b"another-token".to_vec());
        let cookie = issue_cookie(&token, 2_000);
        assert!(!cookie.contains("the-admin-token"));
        assert!(cookie_valid(&token, &cookie, 1_999));
        assert!(!cookie_valid(&token, &cookie, 2_000), "expired");
        assert!(!cookie_valid(&other, &cookie, 1_000), "another token");
        let forged = cookie.replace("v1.2000", "v1.9999");
        assert!(
            !cookie_valid(&token, &forged, 1_000),
            "a longer life is forged"
        );
        assert!(!cookie_valid(&token, "v1.5.AAAA", 1));
        assert!(!cookie_valid(&token, "", 1));
    }

    #[test]
    fn admission_by_cookie_or_bearer() {
        let token = Secret(b"tok".to_vec());
        let cookie = format!("a=b; {COOKIE}={}", issue_cookie(&token, 10_000));
        assert!(admitted(None, &HeaderMap::new(), 0));
        assert!(admitted(Some(&token), &headers(&[("cookie", &cookie)]), 5));
        assert!(admitted(
            Some(&token),
            &headers(&[("authorization", "Bearer tok")]),
            5
        ));
        assert!(!admitted(
            Some(&token),
            &headers(&[("authorization", "Bearer to")]),
            5
        ));
        assert!(!admitted(Some(&token), &HeaderMap::new(), 5));
        assert!(token_matches(&token, b"tok") && !token_matches(&token, b""));
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_cookie() {
        let key = CsrfKey::random();
        let t = key.token("cookie-a");
        assert!(key.verify("cookie-a", &t));
        assert!(!key.verify("cookie-b", &t));
        assert!(!key.verify("cookie-a", "nonsense"));
        assert!(!CsrfKey::random().verify("cookie-a", &t), "another process");
    }

    #[test]
    fn origin_and_host_checks() {
        let host = ("host", "127.0.0.1:9901");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:9901")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(same_origin(&headers(&[host])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(host_allowed(None, &headers(&[host])));
        assert!(host_allowed(None, &headers(&[("host", "localhost:1")])));
        assert!(host_allowed(None, &headers(&[("host", "[::1]:9901")])));
        assert!(!host_allowed(
            None,
            &headers(&[("host", "rebound.example:9901")])
        ));
        let token = Secret(b"t".to_vec());
        assert!(host_allowed(
            Some(&token),
            &headers(&[("host", "admin.internal")])
        ));
    }
}
