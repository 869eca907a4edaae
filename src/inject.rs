//! Identity headers for the upstream: strip every client-sent identity header, then add
//! the session's. Pure: no IO.
//!
//! Trust boundary: an upstream trusts `X-Session-*` because nothing a client sends under
//! those names (or under any configured `[inject]`/`[control]` name) ever reaches it.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ControlConfig, InjectConfig};
use crate::session::Session;

/// The reserved prefix: every request header starting with it is the proxy's alone.
const RESERVED_PREFIX: &str = "x-session-";

/// Tells the upstream that the session was moved to another server (affinity).
pub static REPINNED: HeaderName = HeaderName::from_static("x-session-repinned");

/// The header names of one config generation.
#[derive(Debug, Clone)]
pub struct InjectRules {
    id: Option<HeaderName>,
    user: Option<HeaderName>,
    roles: Option<HeaderName>,
    data: Option<HeaderName>,
    /// Configured names outside the reserved prefix, removed from every request.
    strip: Vec<HeaderName>,
}

impl InjectRules {
    /// Rules for the configured names.
    pub fn new(inject: &InjectConfig, control: &ControlConfig) -> InjectRules {
        let strip = [
            &inject.id,
            &inject.user,
            &inject.roles,
            &inject.data,
            &inject.assertion,
        ]
        .into_iter()
        .flatten()
        .chain([
            &control.set_user,
            &control.set_roles,
            &control.set_data,
            &control.logout,
        ])
        .filter(|name| !name.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
        InjectRules {
            id: inject.id.clone(),
            user: inject.user.clone(),
            roles: inject.roles.clone(),
            data: inject.data.clone(),
            strip,
        }
    }
}

/// Removes every client-sent identity header: configured names and the reserved prefix.
pub fn strip(headers: &mut HeaderMap, rules: &InjectRules) {
    for name in &rules.strip {
        headers.remove(name);
    }
    // Allocate only when a client actually sent reserved headers.
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(&name);
    }
}

/// Adds the session's identity (after [`strip`]). Empty values are not sent.
pub fn inject(headers: &mut HeaderMap, rules: &InjectRules, session: &Session) {
    if let Some(name) = &rules.id {
        if let Ok(value) = HeaderValue::from_str(&session.public_id.encode()) {
            headers.insert(name.clone(), value);
        }
    }
    let pairs = [
        (&rules.user, session.user()),
        (&rules.roles, session.roles()),
    ];
    for (name, value) in pairs {
        if let (Some(name), Some(value)) = (name, value.filter(|v| !v.is_empty())) {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), value);
            }
        }
    }
    if let (Some(name), Some(data)) = (&rules.data, session.data.as_ref()) {
        if !data.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&form_encode(data)) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// `application/x-www-form-urlencoded` of the pairs.
pub fn form_encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(key, &mut out);
        out.push('=');
        encode_component(value, &mut out);
    }
    out
}

/// Appends `text` form-encoded (`application/x-www-form-urlencoded`: space as `+`).
pub(crate) fn encode_component(text: &str, out: &mut String) {
    for byte in text.bytes() {
        if byte == b' ' {
            out.push('+');
        } else {
            percent_encode_byte(
                byte,
                |b| b.is_ascii_alphanumeric() || b"-._*".contains(&b),
                out,
            );
        }
    }
}

/// Appends `byte` as itself when `keep` says so, else as `%XX`.
pub(crate) fn percent_encode_byte(byte: u8, keep: impl Fn(u8) -> bool, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if keep(byte) {
        out.push(char::from(byte));
    } else {
        out.push('%');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

/// Percent-decodes `text` (no `+` rule: a control header is not a form). `None` when
/// the result is not UTF-8 or an escape is malformed.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Identity, PublicId};
    use std::sync::Arc;

    fn rules() -> InjectRules {
        InjectRules::new(
            &InjectConfig {
                id: Some(HeaderName::from_static("x-session-id")),
                user: Some(HeaderName::from_static("x-session-user")),
                roles: Some(HeaderName::from_static("x-session-roles")),
                data: Some(HeaderName::from_static("x-session-data")),
                assertion: Some(HeaderName::from_static("x-identity")),
            },
            &ControlConfig {
                set_user: HeaderName::from_static("x-session-set-user"),
                set_roles: HeaderName::from_static("x-session-set-roles"),
                set_data: HeaderName::from_static("x-session-set-data"),
                logout: HeaderName::from_static("x-app-logout"),
            },
        )
    }

    #[test]
    fn strips_reserved_prefix_and_configured_names() {
        let mut h = HeaderMap::new();
        for name in [
            "x-session-user",
            "X-Session-Whatever",
            "x-identity",
            "x-app-logout",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("x-other", HeaderValue::from_static("ok"));
        strip(&mut h, &rules());
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn injects_identity_and_skips_empty_values() {
        let mut s = Session::new(PublicId([9; 16]), 0);
        let mut h = HeaderMap::new();
        inject(&mut h, &rules(), &s);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-session-id"], PublicId([9; 16]).encode().as_str());
        s.identity = Some(Arc::new(Identity {
            user: Some("ann".into()),
            roles: Some("".into()),
        }));
        s.data = Some(Arc::new(vec![("k y".into(), "a&b=ü".into())]));
        inject(&mut h, &rules(), &s);
        assert_eq!(h["x-session-user"], "ann");
        assert!(!h.contains_key("x-session-roles"));
        assert_eq!(h["x-session-data"], "k+y=a%26b%3D%C3%BC");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
