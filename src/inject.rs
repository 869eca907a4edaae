//! Identity headers for the upstream: strip every client-sent identity header, then add
//! the session's. Pure: no IO.
//!
//! Trust boundary: an upstream trusts `X-Session-*` because nothing a client sends under
//! those names (or under any configured `[inject]`/`[control]` name) ever reaches it.
//! Names are compared case-insensitively with `_` read as `-`: CGI, FastCGI (PHP-FPM),
//! WSGI and Rack servers turn both `X-Session-User` and `X_Session_User` into
//! `HTTP_X_SESSION_USER`, so an underscore variant is the same header to the app.
//! With `listen.drop_underscore_headers` (the default) every client header with a `_`
//! in its name is dropped, as nginx does by default.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ControlConfig, InjectConfig, SecurityConfig};
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
    /// `listen.drop_underscore_headers`.
    drop_underscore: bool,
    /// `inject.anomaly`.
    pub(crate) anomaly: Option<HeaderName>,
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
            drop_underscore: true,
            anomaly: None,
        }
    }

    /// Adds the security settings: underscore dropping and the `inject.anomaly` name.
    pub fn with_security(mut self, security: &SecurityConfig) -> InjectRules {
        self.drop_underscore = security.drop_underscore_headers;
        if let Some(name) = &security.anomaly_header {
            if !dashed_prefix(name.as_str().as_bytes(), RESERVED_PREFIX.as_bytes()) {
                self.strip.push(name.clone());
            }
        }
        self.anomaly = security.anomaly_header.clone();
        self
    }

    /// Whether a client-sent header of this name must not reach the upstream.
    fn refuses(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        (self.drop_underscore && name.contains(&b'_'))
            || dashed_prefix(name, RESERVED_PREFIX.as_bytes())
            || self
                .strip
                .iter()
                .any(|ours| dashed_eq(name, ours.as_str().as_bytes()))
    }
}

/// `a == b` with `_` read as `-` (both lower-case, as `HeaderName`s are).
fn dashed_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && dashed_prefix(a, b)
}

/// `name` starts with `prefix`, `_` read as `-` (both lower-case).
fn dashed_prefix(name: &[u8], prefix: &[u8]) -> bool {
    let dash = |b: u8| if b == b'_' { b'-' } else { b };
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(&a, &b)| dash(a) == dash(b))
}

/// Removes every client-sent identity header: configured names and the reserved prefix,
/// in any `_`/`-` spelling, and with `drop_underscore_headers` every name with a `_`.
pub fn strip(headers: &mut HeaderMap, rules: &InjectRules) {
    // One pass without allocating; nearly every request carries none of them.
    if !headers.keys().any(|name| rules.refuses(name)) {
        return;
    }
    let refused: Vec<HeaderName> = headers
        .keys()
        .filter(|name| rules.refuses(name))
        .cloned()
        .collect();
    for name in refused {
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

/// `application/x-www-form-urlencoded` of the pairs, by the `form_urlencoded` crate (the
/// WHATWG serializer): a space becomes `+`, ASCII alphanumerics and `*-._` stay, every
/// other byte becomes `%XX` (upper-case hex).
pub fn form_encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Appends `text` form-encoded (`application/x-www-form-urlencoded`: space as `+`).
pub(crate) fn encode_component(text: &str, out: &mut String) {
    out.extend(form_urlencoded::byte_serialize(text.as_bytes()));
}

/// Appends `byte` as itself when `keep` says so, else as `%XX` (upper-case hex).
pub(crate) fn percent_encode_byte(byte: u8, keep: impl Fn(u8) -> bool, out: &mut String) {
    if keep(byte) {
        out.push(char::from(byte));
    } else {
        out.push_str(percent_encoding::percent_encode_byte(byte));
    }
}

/// Percent-decodes `text` (no `+` rule: a control header is not a form). `None` when
/// the result is not UTF-8 or an escape is malformed.
pub fn percent_decode(text: &str) -> Option<String> {
    decode_strict(text.as_bytes())
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a
/// byte. `None` when the result is not UTF-8 or an escape is malformed.
pub fn form_decode(component: &[u8]) -> Option<String> {
    // `+` first, so that an encoded plus (`%2B`) stays a plus.
    let spaced: Vec<u8> = component
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    decode_strict(&spaced)
}

/// Decodes an `application/x-www-form-urlencoded` body into pairs (`a` alone is `a=`,
/// empty pairs are skipped); `None` on a bad escape or non-UTF-8.
pub fn form_decode_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair.get(..eq)?, pair.get(eq + 1..)?),
                None => (pair, &b""[..]),
            };
            Some((form_decode(key)?, form_decode(value)?))
        })
        .collect()
}

/// The `percent-encoding` crate's decoder, which passes a malformed escape through as
/// text, behind a check that refuses one: a `%` not followed by two hex digits.
fn decode_strict(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        match rest.get(at + 1..at + 3) {
            Some([hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                rest = rest.get(at + 3..).unwrap_or_default();
            }
            _ => return None,
        }
    }
    String::from_utf8(percent_encoding::percent_decode(bytes).collect()).ok()
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

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in names {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("mallory"),
            );
        }
        h
    }

    #[test]
    fn underscore_variants_of_identity_names_are_stripped_even_when_underscores_are_allowed() {
        let security = SecurityConfig {
            drop_underscore_headers: false,
            ..SecurityConfig::default()
        };
        let rules = rules().with_security(&security);
        let mut h = headers(&[
            "x_session_user",
            "X_Session_Roles",
            "x-session_id",
            "x_session-anything",
            "x_identity",
            "x-app_logout",
            "x_other",
            "x-session",
        ]);
        strip(&mut h, &rules);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["x-session", "x_other"]);
    }

    #[test]
    fn drop_underscore_headers_drops_every_name_with_an_underscore() {
        let rules = rules().with_security(&SecurityConfig::default());
        let mut h = headers(&["x_other", "accept_language", "accept-language", "x-ok"]);
        strip(&mut h, &rules);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["accept-language", "x-ok"]);
    }

    #[test]
    fn a_custom_anomaly_name_is_stripped_in_any_spelling() {
        let security = SecurityConfig {
            drop_underscore_headers: false,
            anomaly_header: Some(HeaderName::from_static("x-hijack")),
            ..SecurityConfig::default()
        };
        let rules = rules().with_security(&security);
        let mut h = headers(&["x_hijack", "x-hijack", "x-hijacked"]);
        strip(&mut h, &rules);
        let mut kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["x-hijacked"]);
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
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("ok%"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
        assert_eq!(percent_decode("%2b%2B%e2%82%ac").as_deref(), Some("++€"));
        assert_eq!(percent_decode("").as_deref(), Some(""));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    }

    #[test]
    fn form_decoding_reads_plus_as_space_but_not_an_encoded_plus() {
        assert_eq!(form_decode(b"J%C3%B6rg+M%2B").as_deref(), Some("Jörg M+"));
        assert_eq!(form_decode(b"a%2"), None);
        assert_eq!(form_decode(b"\xff"), None);
        assert_eq!(form_decode(b"").as_deref(), Some(""));
    }

    #[test]
    fn form_decode_handles_plus_percent_and_missing_values() {
        let form = form_decode_pairs(b"user=J%C3%B6rg+M&roles=a%2Cb&&flag&empty=").unwrap();
        assert_eq!(
            form,
            vec![
                ("user".into(), "Jörg M".into()),
                ("roles".into(), "a,b".into()),
                ("flag".into(), String::new()),
                ("empty".into(), String::new()),
            ]
        );
        assert_eq!(
            form_decode_pairs(b"a=b=c").unwrap(),
            vec![("a".into(), "b=c".into())]
        );
        assert_eq!(form_decode_pairs(b"").unwrap(), vec![]);
    }

    #[test]
    fn form_decode_rejects_bad_escapes_and_non_utf8() {
        assert_eq!(form_decode_pairs(b"a=%"), None);
        assert_eq!(form_decode_pairs(b"a=%4"), None);
        assert_eq!(form_decode_pairs(b"a=%zz"), None);
        assert_eq!(form_decode_pairs(b"a=%FF"), None);
        assert_eq!(form_decode_pairs(b"a=\xff"), None);
    }

    /// The hand-written encoder the crates replaced: the `X-Session-Data` header is a
    /// contract, so the bytes must not change.
    fn encode_by_hand(text: &str) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            if byte == b' ' {
                out.push('+');
            } else if byte.is_ascii_alphanumeric() || b"-._*".contains(&byte) {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    #[test]
    fn form_encoding_matches_the_contract_byte_for_byte() {
        let every_ascii: String = (0u8..=127).map(char::from).collect();
        let texts = [
            "",
            "k y",
            "a&b=ü",
            "*-._~",
            "+%/?#[]@!$'()",
            "日本語 \u{1F600}",
            every_ascii.as_str(),
        ];
        for key in texts {
            for value in texts {
                let pairs = [(key.to_owned(), value.to_owned()), ("n".into(), key.into())];
                let expected = format!(
                    "{}={}&n={}",
                    encode_by_hand(key),
                    encode_by_hand(value),
                    encode_by_hand(key)
                );
                assert_eq!(form_encode(&pairs), expected);
            }
            let mut one = String::new();
            encode_component(key, &mut one);
            assert_eq!(one, encode_by_hand(key));
        }
        assert_eq!(form_encode(&[]), "");
        assert_eq!(
            form_encode(&[("k y".into(), "a&b=ü".into())]),
            "k+y=a%26b%3D%C3%BC"
        );
    }

    #[test]
    fn form_encoding_round_trips_through_form_decoding() {
        let text = "a b&c=d/é%+~*";
        let mut encoded = String::new();
        encode_component(text, &mut encoded);
        assert_eq!(form_decode(encoded.as_bytes()).as_deref(), Some(text));
    }

    #[test]
    fn percent_encode_byte_keeps_what_it_is_told() {
        let mut out = String::new();
        for byte in [b'a', b'/', b' ', 0xC3, b'%'] {
            percent_encode_byte(byte, |b| b.is_ascii_alphanumeric() || b == b'/', &mut out);
        }
        assert_eq!(out, "a/%20%C3%25");
    }
}
