//! Pure checks of single values: durations, cookie and header names, host names and
//! upstream addresses. Each returns the typed value or a message that says how to fix it.
//! Only `resolve` does IO (the system resolver).

use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use http::HeaderName;

use super::super::HostPattern;

/// The longest duration any key takes: 400 days, the cap browsers put on a cookie's
/// life. Past it a value is a mistake, and a bound this far below `u64` milliseconds
/// keeps every `Instant + duration` and millisecond conversion clear of overflow.
const MAX_DURATION: Duration = Duration::from_secs(400 * 24 * 3600);

pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => Err(format!("\"{value}\" is zero; give a positive duration like \"2s\"")),
        Ok(d) if d > MAX_DURATION => Err(format!(
            "\"{value}\" is longer than 400 days, the longest duration allowed; give a shorter one like \"30d\""
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "\"{value}\" is not a duration ({e}); write it like \"250ms\", \"2s\", \"30m\" or \"12h\""
        )),
    }
}

/// RFC 6265 `cookie-name` = RFC 2616 `token`.
pub(super) fn cookie_name(name: &str) -> Result<String, String> {
    const SEPARATORS: &str = "()<>@,;:\\\"/[]?={} \t";
    if name.is_empty() {
        return Err("the cookie name is empty; use e.g. \"__Host-cloakroom\"".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || SEPARATORS.contains(*c))
    {
        return Err(format!(
            "\"{name}\" is not a valid cookie name: {bad:?} is not allowed (RFC 6265 token: \
             letters, digits and !#$%&'*+-.^_`|~); use e.g. \"__Host-cloakroom\""
        ));
    }
    Ok(name.to_owned())
}

/// Headers that HTTP or the proxy itself manages: never usable for identity or control.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "authorization",
    "proxy-authorization",
    "proxy-authenticate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "location",
];

pub(super) fn header_name(value: &str, example: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(value.trim().as_bytes()).map_err(|_| {
        format!(
            "\"{value}\" is not a valid header name; use letters, digits and - like \"{example}\""
        )
    })?;
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "\"{value}\" is a header that HTTP or the proxy manages itself; use another name like \"{example}\""
        ));
    }
    Ok(name)
}

/// Checks a host name (lower-cased, no port); labels of letters, digits, `-` and `_`.
pub(super) fn hostname(host: &str) -> Result<String, String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if host.contains(':') {
        return Err(format!("\"{host}\" has a port; give the host name only"));
    }
    let labels_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if labels_ok {
        Ok(host)
    } else {
        Err(format!(
            "\"{host}\" is not a host name; write it like \"app.example.com\" or \"*.example.com\""
        ))
    }
}

pub(super) fn host_pattern(host: &str) -> Result<HostPattern, String> {
    let trimmed = host.trim();
    if let Some(inner) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if inner.parse::<Ipv6Addr>().is_ok() {
            return Ok(HostPattern::Exact(trimmed.to_ascii_lowercase()));
        }
    }
    if trimmed == "*" {
        return Err("\"*\" matches every host; leave host out instead".to_owned());
    }
    match trimmed.strip_prefix("*.") {
        Some(rest) => hostname(rest).map(|h| HostPattern::Suffix(format!(".{h}"))),
        None => hostname(trimmed).map(HostPattern::Exact),
    }
}

pub(super) fn sni_hostname(host: &str) -> Result<String, String> {
    match host.trim().strip_prefix("*.") {
        Some(rest) => hostname(rest).map(|h| format!("*.{h}")),
        None => hostname(host),
    }
}

/// `host:port` to its first socket address, via the system resolver.
pub(super) fn resolve(written: &str) -> Result<SocketAddr, String> {
    let example = "like \"127.0.0.1:9001\" or \"app.internal:9001\"";
    if written.contains("://") {
        return Err(format!(
            "\"{written}\" has a scheme; write host:port {example}"
        ));
    }
    if let Ok(addr) = written.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!(
                "\"{written}\" has port 0; use the server's real port"
            ))
        } else {
            Ok(addr)
        };
    }
    let Some((host, port)) = written.rsplit_once(':') else {
        return Err(format!(
            "\"{written}\" has no port; write host:port {example}"
        ));
    };
    if host.is_empty() || host.contains(':') {
        return Err(format!(
            "\"{written}\" is not host:port; write it {example} (IPv6 in brackets: \"[::1]:9001\")"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(format!(
                "\"{port}\" is not a port (1-65535) in \"{written}\""
            ))
        }
    };
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("\"{host}\" resolves to no address")),
        Err(e) => Err(format!("cannot resolve \"{host}\": {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(parse_duration("soon").unwrap_err().contains("\"2s\""));
        assert_eq!(parse_duration("400d"), Ok(MAX_DURATION));
        for absurd in ["401d", "400000000000y", "2y", "9600h1s"] {
            assert!(
                parse_duration(absurd).unwrap_err().contains("400 days"),
                "{absurd}"
            );
        }
    }

    #[test]
    fn cookie_names_are_tokens() {
        assert!(cookie_name("__Host-cloakroom").is_ok());
        assert!(cookie_name("a!#$%&'*+-.^_`|~z").is_ok());
        for bad in ["", "a b", "a=b", "a;b", "é", "a\tb", "a\"b"] {
            assert!(cookie_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names() {
        assert_eq!(
            header_name("X-Session-User", "x").map(|h| h.to_string()),
            Ok("x-session-user".into())
        );
        assert!(header_name("bad name", "x").is_err());
        assert!(header_name("Cookie", "x")
            .unwrap_err()
            .contains("manages itself"));
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            host_pattern("App.Example.COM."),
            Ok(HostPattern::Exact("app.example.com".into()))
        );
        assert_eq!(
            host_pattern("*.example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            host_pattern("[::1]"),
            Ok(HostPattern::Exact("[::1]".into()))
        );
        assert!(host_pattern("a.com:443").unwrap_err().contains("port"));
        assert!(host_pattern("*").is_err());
        assert!(host_pattern("a..com").is_err());
        assert!(host_pattern("a/b").is_err());
        assert_eq!(sni_hostname("*.A.com").as_deref(), Ok("*.a.com"));
    }

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            resolve("127.0.0.1:9001"),
            Ok("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(resolve("[::1]:9001"), Ok("[::1]:9001".parse().unwrap()));
        assert!(resolve("localhost:9001").is_ok_and(|a| a.ip().is_loopback()));
        assert!(resolve("127.0.0.1").unwrap_err().contains("no port"));
        assert!(resolve("http://a:1").unwrap_err().contains("scheme"));
        assert!(resolve("a:0").unwrap_err().contains("not a port"));
        assert!(resolve("127.0.0.1:0").unwrap_err().contains("port 0"));
        assert!(resolve("::1:80").is_err());
        assert!(resolve("no-such-host.invalid:80")
            .unwrap_err()
            .contains("cannot resolve"));
    }
}
