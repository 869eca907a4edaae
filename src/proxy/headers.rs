//! Header rewriting on both sides of the proxy: hop-by-hop removal, `X-Forwarded-*`,
//! and `Cookie` normalisation. Pure functions over `HeaderMap`s.
//!
//! Trust boundary: nothing a client sends in `X-Forwarded-*` is believed unless the
//! peer is a configured trusted proxy.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers that never cross the proxy (RFC 9110 §7.6.1), besides those
/// named in `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Static names we write.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including every header the `Connection` header names.
/// `Upgrade` survives only when `tunnel` is set (the caller then restores `Connection`).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, tunnel: bool) {
    // `Connection: keep-alive` / `close` (nearly every request) names no other header.
    let names_headers = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"));
    if names_headers {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| !(tunnel && name == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    remove_present(headers, &HOP_BY_HOP);
    if !tunnel {
        headers.remove(header::UPGRADE);
    }
}

/// Removes those of `names` that are present. One pass over the (few) headers a message
/// carries instead of a hashed lookup per name: most messages carry none of them.
pub(crate) fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    let mut present = 0u64;
    for key in headers.keys() {
        if let Some(i) = names.iter().position(|name| name == key) {
            present |= 1 << (i % 64);
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << (i % 64)) != 0 {
            headers.remove(name);
        }
    }
}

/// True when the request asks for a protocol upgrade (WebSocket and friends): an
/// `Upgrade` header and `upgrade` among the `Connection` tokens.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets `X-Forwarded-For/-Proto/-Host`. `peer` is the client address as a header
/// value (formatted once per connection). A client's own `X-Forwarded-For` is extended
/// only when `trusted` (the peer is a trusted proxy); otherwise it is replaced.
/// `X-Forwarded-Host` repeats the request's `Host`.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, peer: &HeaderValue, trusted: bool) {
    let prior = if trusted {
        let joined: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    } else {
        None
    };
    let extended = prior.and_then(|prior| {
        let peer = peer.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{prior}, {peer}")).ok()
    });
    headers.insert(
        X_FORWARDED_FOR.clone(),
        extended.unwrap_or_else(|| peer.clone()),
    );
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if !trusted {
        headers.remove(header::FORWARDED);
    }
}

/// The header value of a peer address.
pub(crate) fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Joins several `Cookie` headers (HTTP/2 sends one per cookie) into one, as HTTP/1.1
/// upstreams expect, dropping each pair for which `drop_pair` is true. Removes the
/// header when nothing is left. Returns whether the header was rewritten.
pub(crate) fn rewrite_cookies(headers: &mut HeaderMap, drop_pair: impl Fn(&str) -> bool) {
    let mut count = 0usize;
    let mut dropping = false;
    for value in headers.get_all(header::COOKIE) {
        count += 1;
        if let Ok(text) = value.to_str() {
            dropping |= text.split(';').any(|pair| drop_pair(pair.trim()));
        }
    }
    if count == 0 || (count == 1 && !dropping) {
        return;
    }
    let mut joined = String::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if drop_pair(pair) {
                continue;
            }
            if !joined.is_empty() {
                joined.push_str("; ");
            }
            joined.push_str(pair);
        }
    }
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        if !joined.is_empty() {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "x"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn tunnel_keeps_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn forwarded_for_replaced_unless_trusted() {
        let peer = peer_value("10.0.0.9".parse().unwrap());
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("host", "app.test")]);
        set_forwarded(&mut h, &peer, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.test");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        set_forwarded(&mut h, &peer, true);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }

    #[test]
    fn cookies_are_joined_and_filtered() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "ours=x; b=2")]);
        rewrite_cookies(&mut h, |p| p.starts_with("ours="));
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        let mut h = map(&[("cookie", "ours=x")]);
        rewrite_cookies(&mut h, |p| p.starts_with("ours="));
        assert!(!h.contains_key("cookie"));
        let mut h = map(&[("cookie", "a=1; b=2")]);
        rewrite_cookies(&mut h, |_| false);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}
