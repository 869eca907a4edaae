//! Our own endpoints on the https listener, answered in `request_filter` before any
//! route: `POST /.cloakroom/logout` and `GET /.cloakroom/jwks.json`.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};

use super::body::ResponseBody;
use super::error::ProxyError;
use super::session::{check_csrf, store_call};
use crate::assertion::Assertions;
use crate::inject::{percent_decode, percent_encode_byte};
use crate::metrics::StoreOp;
use crate::session::SessionBackend;
use crate::state::{AppState, Runtime};

/// The logout endpoint's path.
pub(crate) const LOGOUT_PATH: &str = "/.cloakroom/logout";
/// The identity assertion's public keys' path.
pub(crate) const JWKS_PATH: &str = "/.cloakroom/jwks.json";

/// `POST /.cloakroom/logout`: destroy the session, expire the cookie, `303` to `/` or to a
/// same-origin `next`.
pub(crate) async fn logout<B>(
    state: &AppState,
    rt: &Runtime,
    request: &Request<B>,
    set_cookie: &mut Option<HeaderValue>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if request.method() != Method::POST {
        let mut response = Response::new(ResponseBody::full("405 use POST\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    check_csrf(request)?;
    // With `[oidc] logout_at_idp`, a session that logged in there ends there too.
    let at_idp = super::oidc::logout_target(state, rt, request).await;
    // A sealed session has nothing on the server to destroy: expiring the cookie is all.
    if let SessionBackend::Server(store) = &state.backend {
        if let Some(token) = rt.cookie.find(request.headers()) {
            store_call(rt, StoreOp::Destroy, store.destroy(&token)).await?;
            state.metrics.session_ended("logout", 1);
        }
    }
    *set_cookie = rt.cookie.expire_cookie();
    let next = at_idp
        .or_else(|| next_target(request.uri()))
        .unwrap_or_else(|| "/".to_string());
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(&next) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The `next` query parameter when it is a same-origin path (`/x`, not `//evil` or
/// `/\evil`, no control characters).
fn next_target(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("next="))?;
    let decoded = percent_decode(&raw.replace('+', " "))?;
    let safe = decoded.starts_with('/')
        && !decoded.starts_with("//")
        && !decoded.starts_with("/\\")
        && !decoded.chars().any(|c| c.is_control());
    safe.then(|| uri_reference(&decoded))
}

/// Percent-encodes what may not stand in a URI reference (space, non-ASCII, `%`,
/// quotes, …), keeping its structure (`/`, `?`, `&`, `=`, `#`).
fn uri_reference(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        percent_encode_byte(
            byte,
            |b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]".contains(&b),
            &mut out,
        );
    }
    out
}

/// The answer to `GET /.cloakroom/jwks.json` (405 for other methods than GET/HEAD).
pub(crate) fn jwks(assertions: &Assertions, method: &Method) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = Response::new(ResponseBody::full("405 use GET\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(ResponseBody::Full(Some(assertions.jwks())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    // Short: a rotated key must reach verifiers soon after the reload.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_be_same_origin() {
        let t = |q: &str| next_target(&format!("/.cloakroom/logout?{q}").parse().unwrap());
        assert_eq!(t("next=/home").as_deref(), Some("/home"));
        assert_eq!(t("next=%2Fa%3Fb%3D1").as_deref(), Some("/a?b=1"));
        assert_eq!(t("next=//evil.test"), None);
        assert_eq!(t("next=/%5Cevil.test"), None);
        assert_eq!(t("next=https://evil.test"), None);
        assert_eq!(t("x=1"), None);
        assert_eq!(t("next=/a%20b").as_deref(), Some("/a%20b"));
        assert_eq!(t("next=/%C3%BC?q=1").as_deref(), Some("/%C3%BC?q=1"));
        assert_eq!(t("next=/100%25").as_deref(), Some("/100%25"));
    }
}
