//! The demo app's forms: `POST /login` and `POST /data` answer with the proxy's control
//! headers (`X-Session-Set-User`, `X-Session-Set-Roles`, `X-Session-Set-Data`). Bad
//! input gets a 400 page, never a panic.

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::page::{bad_request, error_page, see_other};
use super::page::{Body, Server};
use crate::inject::form_decode_pairs;

/// Largest form body the demo reads.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest user name accepted by `POST /login`.
const MAX_USER_CHARS: usize = 64;
/// Longest roles list (after normalising) accepted by `POST /login`.
const MAX_ROLES_BYTES: usize = 512;
/// Longest session data key and value accepted by `POST /data`.
const MAX_DATA_KEY_CHARS: usize = 64;
const MAX_DATA_VALUE_BYTES: usize = 1024;

// Default names from the contract's `[control]` table.
const SET_USER: HeaderName = HeaderName::from_static("x-session-set-user");
const SET_ROLES: HeaderName = HeaderName::from_static("x-session-set-roles");
const SET_DATA: HeaderName = HeaderName::from_static("x-session-set-data");

/// What `urlencode` keeps: the RFC 3986 unreserved characters.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Reads a form-urlencoded body of at most [`MAX_FORM_BYTES`] and decodes it; on failure the
/// error page to answer with.
pub(super) async fn read_form(
    req: Request<Incoming>,
    server: &Server,
) -> Result<Vec<(String, String)>, Response<Body>> {
    let Ok(collected) = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    else {
        return Err(error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            server,
            "The form body could not be read or is larger than 64 KiB.",
        ));
    };
    form_decode_pairs(&collected.to_bytes())
        .ok_or_else(|| bad_request(server, "The form body is not valid form-urlencoded UTF-8."))
}

/// `POST /login`: bind the user and roles through the proxy's control headers.
pub(super) fn login(server: &Server, form: &[(String, String)]) -> Response<Body> {
    let user = form_field(form, "user").unwrap_or("").trim();
    if !valid_user(user) {
        return bad_request(
            server,
            "The user name must be 1 to 64 visible ASCII characters.",
        );
    }
    let Some(roles) = normalize_roles(form_field(form, "roles").unwrap_or("")) else {
        return bad_request(
            server,
            "Roles must be a comma-separated list of visible ASCII words (at most 512 bytes).",
        );
    };
    let (Ok(user), Ok(roles)) = (HeaderValue::from_str(user), HeaderValue::from_str(&roles)) else {
        return bad_request(server, "The user or roles are not valid.");
    };
    let mut resp = see_other(server);
    resp.headers_mut().insert(SET_USER, user);
    if !roles.is_empty() {
        resp.headers_mut().insert(SET_ROLES, roles);
    }
    resp
}

/// `POST /data`: set (or, with an empty value, delete) one session data entry.
pub(super) fn set_data(server: &Server, form: &[(String, String)]) -> Response<Body> {
    let key = form_field(form, "key").unwrap_or("").trim();
    let value = form_field(form, "value").unwrap_or("");
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > MAX_DATA_KEY_CHARS || value.len() > MAX_DATA_VALUE_BYTES {
        return bad_request(
            server,
            "The key must be 1 to 64 characters and the value at most 1024 bytes.",
        );
    }
    let pair = format!("{}={}", urlencode(key), urlencode(value));
    let Ok(pair) = HeaderValue::from_str(&pair) else {
        return bad_request(server, "The key or value is not valid.");
    };
    let mut resp = see_other(server);
    resp.headers_mut().insert(SET_DATA, pair);
    resp
}

/// A user name is 1..=64 characters of visible ASCII or inner spaces (it becomes a header value).
fn valid_user(user: &str) -> bool {
    let len = user.chars().count();
    (1..=MAX_USER_CHARS).contains(&len)
        && user.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && user.trim() == user
}

/// Trims each comma-separated role and drops empty ones; `None` if a role is not a visible
/// ASCII word or the list is too long.
fn normalize_roles(raw: &str) -> Option<String> {
    let roles: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    let ok = roles
        .iter()
        .all(|r| r.chars().all(|c| c.is_ascii_graphic() && c != ','));
    let joined = roles.join(",");
    (ok && joined.len() <= MAX_ROLES_BYTES).then_some(joined)
}

/// The first value of a form field.
fn form_field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `%20` for a space, which
/// both form and plain percent decoders read back correctly).
fn urlencode(input: &str) -> String {
    utf8_percent_encode(input, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::form_decode;

    #[test]
    fn urlencode_round_trips_through_form_decode() {
        let raw = "a b&c=d/é%+";
        let encoded = urlencode(raw);
        assert_eq!(encoded, "a%20b%26c%3Dd%2F%C3%A9%25%2B");
        assert_eq!(form_decode(encoded.as_bytes()).as_deref(), Some(raw));
    }

    #[test]
    fn user_and_roles_validation() {
        assert!(valid_user("alice"));
        assert!(valid_user("Alice Smith"));
        assert!(!valid_user(""));
        assert!(!valid_user(&"a".repeat(65)));
        assert!(!valid_user("tab\there"));
        assert!(!valid_user("jörg"));
        assert_eq!(
            normalize_roles(" admin , ,dev,").as_deref(),
            Some("admin,dev")
        );
        assert_eq!(normalize_roles("").as_deref(), Some(""));
        assert_eq!(normalize_roles("two words"), None);
    }
}
