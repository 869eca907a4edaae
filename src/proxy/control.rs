//! The upstream's control headers (`control.set_user`, `set_roles`, `set_data`,
//! `logout`): taken out of every upstream response in `upstream_response_filter`,
//! bounded and parsed here, applied to the session by `session::commit`. Our own
//! cookie's `Set-Cookie` from an upstream is dropped with them.

use http::header::{self, HeaderMap, HeaderValue};

use crate::config::ControlConfig;
use crate::inject::percent_decode;

/// Bounds on what an upstream may store through control headers.
pub(super) const MAX_USER_BYTES: usize = 256;
pub(super) const MAX_ROLES_BYTES: usize = 1024;
const MAX_DATA_KEY_BYTES: usize = 64;
const MAX_DATA_VALUE_BYTES: usize = 1024;
const MAX_DATA_ENTRIES: usize = 32;

/// The control headers an upstream sent, taken out of its response.
#[derive(Debug, Default)]
pub(crate) struct Control {
    pub(super) set_user: Option<HeaderValue>,
    pub(super) set_roles: Option<HeaderValue>,
    pub(super) set_data: Vec<HeaderValue>,
    pub(super) logout: bool,
    /// `logout: everywhere`: also end every other session of the user.
    pub(super) logout_everywhere: bool,
}

impl Control {
    /// A login by cloakroom itself (OIDC): the same user and roles an upstream's
    /// `set_user`/`set_roles` would bind (an empty roles value clears old roles).
    pub(crate) fn login(user: &str, roles: Option<&str>) -> Control {
        Control {
            set_user: HeaderValue::from_str(user).ok(),
            set_roles: HeaderValue::from_str(roles.unwrap_or_default()).ok(),
            ..Control::default()
        }
    }
}

/// Removes every control header and every `Set-Cookie` for our cookie from an upstream
/// response, whatever the route; returns what they asked for.
pub(crate) fn take_control(
    headers: &mut HeaderMap,
    names: &ControlConfig,
    cookie_name: &str,
) -> Control {
    let mut control = Control::default();
    // One pass to see whether anything is there (nearly never): no hashed lookups.
    let (mut any_control, mut any_cookie) = (false, false);
    for key in headers.keys() {
        any_cookie |= key == header::SET_COOKIE;
        any_control |= *key == names.set_user
            || *key == names.set_roles
            || *key == names.set_data
            || *key == names.logout;
    }
    if any_control {
        control.set_user = headers.remove(&names.set_user);
        control.set_roles = headers.remove(&names.set_roles);
        if headers.contains_key(&names.set_data) {
            control.set_data = headers.get_all(&names.set_data).iter().cloned().collect();
            headers.remove(&names.set_data);
        }
        let logout = headers.remove(&names.logout);
        control.logout = logout.is_some();
        control.logout_everywhere =
            logout.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"everywhere"));
    }
    if any_cookie {
        let ours = |v: &HeaderValue| {
            v.as_bytes().starts_with(cookie_name.as_bytes())
                && v.as_bytes().get(cookie_name.len()) == Some(&b'=')
        };
        if headers.get_all(header::SET_COOKIE).iter().any(ours) {
            let kept: Vec<HeaderValue> = headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter(|v| !ours(v))
                .cloned()
                .collect();
            headers.remove(header::SET_COOKIE);
            for value in kept {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }
    control
}

/// A control value as a string within `limit` bytes; empty means "clear".
pub(super) fn bounded(value: &HeaderValue, limit: usize, what: &'static str) -> Option<Box<str>> {
    let text = value.to_str().ok().map(str::trim)?;
    if text.len() > limit {
        tracing::warn!(what, limit, "control header value too long; ignored");
        return None;
    }
    (!text.is_empty()).then(|| text.into())
}

/// Applies one `key=value` (percent-encoded parts; `key=` deletes) to `data`.
pub(super) fn apply_data(data: &mut Vec<(String, String)>, value: &HeaderValue) {
    let Some((key, val)) = value.to_str().ok().and_then(|v| v.trim().split_once('=')) else {
        tracing::warn!("set_data control header without '='; ignored");
        return;
    };
    let (Some(key), Some(val)) = (percent_decode(key), percent_decode(val)) else {
        tracing::warn!("set_data control header is not valid percent-encoded UTF-8; ignored");
        return;
    };
    if key.is_empty() || key.len() > MAX_DATA_KEY_BYTES || val.len() > MAX_DATA_VALUE_BYTES {
        tracing::warn!(
            key_limit = MAX_DATA_KEY_BYTES,
            value_limit = MAX_DATA_VALUE_BYTES,
            "set_data key or value out of bounds; ignored"
        );
        return;
    }
    let existing = data.iter().position(|(k, _)| *k == key);
    match (existing, val.is_empty()) {
        (Some(i), true) => {
            data.remove(i);
        }
        (Some(i), false) => {
            if let Some(slot) = data.get_mut(i) {
                slot.1 = val;
            }
        }
        (None, true) => {}
        (None, false) if data.len() >= MAX_DATA_ENTRIES => {
            tracing::warn!(limit = MAX_DATA_ENTRIES, "session data full; entry ignored");
        }
        (None, false) => data.push((key, val)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_updates() {
        let mut data = Vec::new();
        apply_data(&mut data, &HeaderValue::from_static("cart=3"));
        apply_data(&mut data, &HeaderValue::from_static("theme=dark%20blue"));
        apply_data(&mut data, &HeaderValue::from_static("cart=4"));
        assert_eq!(
            data,
            vec![
                ("cart".into(), "4".into()),
                ("theme".into(), "dark blue".into())
            ]
        );
        apply_data(&mut data, &HeaderValue::from_static("cart="));
        apply_data(&mut data, &HeaderValue::from_static("junk"));
        assert_eq!(data, vec![("theme".into(), "dark blue".into())]);
        let long = format!("k={}", "v".repeat(MAX_DATA_VALUE_BYTES + 1));
        apply_data(&mut data, &HeaderValue::from_str(&long).unwrap());
        assert_eq!(data.len(), 1);
    }

    #[test]
    fn control_headers_are_taken_and_our_set_cookie_dropped() {
        let names = ControlConfig {
            set_user: "x-session-set-user".parse().unwrap(),
            set_roles: "x-session-set-roles".parse().unwrap(),
            set_data: "x-session-set-data".parse().unwrap(),
            logout: "x-session-logout".parse().unwrap(),
        };
        let mut h = HeaderMap::new();
        h.insert("x-session-set-user", HeaderValue::from_static("ann"));
        h.append("x-session-set-data", HeaderValue::from_static("a=1"));
        h.append("x-session-set-data", HeaderValue::from_static("b=2"));
        h.insert("x-session-logout", HeaderValue::from_static(""));
        h.append(
            "set-cookie",
            HeaderValue::from_static("__Host-cr=evil; Path=/"),
        );
        h.append("set-cookie", HeaderValue::from_static("app=1"));
        let c = take_control(&mut h, &names, "__Host-cr");
        assert!(c.logout && c.set_user.is_some() && c.set_data.len() == 2);
        assert_eq!(h.len(), 1);
        assert_eq!(h["set-cookie"], "app=1");
    }
}
