//! Validation of `[session.memcached]`: the servers (`host:port`, at least one, no
//! duplicates), the key prefix (Memcached keys are at most 250 bytes without spaces or
//! control characters) and the per-operation timeout.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No IO: the names are
//! resolved when the store connects (a server may come up after the proxy).

use std::time::Duration;

use super::super::raw::RawMemcached;
use super::super::MemcachedConfig;
use super::Validator;

/// Longest `prefix`: the store's own key part is at most 40 bytes, and Memcached
/// refuses keys over 250.
pub(super) const MAX_PREFIX_BYTES: usize = 200;

/// Why `server` is not a `host:port`, if it is not one.
fn server_problem(server: &str) -> Option<String> {
    let example =
        "write it as \"host:port\", like \"127.0.0.1:11211\" or \"cache-1.internal:11211\"";
    let Some((host, port)) = server.rsplit_once(':') else {
        return Some(format!("has no port; {example}"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Some(format!("\"{server}\" has no valid host; {example}"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Some(format!("\"{server}\" has no valid port; {example}")),
        Ok(_) => None,
    }
}

impl Validator<'_> {
    /// Always returns the settings so the other session rules still run; a bad value
    /// is recorded as an error, so the config as a whole is rejected.
    pub(super) fn memcached(&mut self, raw: &RawMemcached) -> MemcachedConfig {
        if raw.servers.is_empty() {
            self.error(
                "session.memcached.servers",
                "needs at least one server, like [\"127.0.0.1:11211\"]",
            );
        }
        let mut servers: Vec<String> = Vec::with_capacity(raw.servers.len());
        for (i, server) in raw.servers.iter().enumerate() {
            let server = server.trim();
            let key = format!("session.memcached.servers[{i}]");
            if let Some(problem) = server_problem(server) {
                self.error(&key, problem);
            } else if servers.iter().any(|s| s == server) {
                self.error(
                    &key,
                    format!("\"{server}\" is listed twice; name each server once"),
                );
            } else {
                servers.push(server.to_owned());
            }
        }
        if raw.prefix.len() > MAX_PREFIX_BYTES {
            self.error(
                "session.memcached.prefix",
                format!(
                    "is {} bytes; use at most {MAX_PREFIX_BYTES}",
                    raw.prefix.len()
                ),
            );
        }
        if raw
            .prefix
            .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            self.error(
                "session.memcached.prefix",
                "must not contain spaces or control characters (Memcached keys cannot), \
                 like \"cloakroom:\"",
            );
        }
        let timeout = self.duration("session.memcached.timeout", &raw.timeout);
        if timeout == Some(Duration::ZERO) {
            self.error(
                "session.memcached.timeout",
                "must be more than 0, like \"250ms\"",
            );
        }
        MemcachedConfig {
            servers,
            prefix: raw.prefix.clone(),
            timeout: timeout
                .filter(|t| !t.is_zero())
                .unwrap_or(Duration::from_millis(250)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, StoreKind};

    /// Parses a config with `[tls]` files present, one route, and `session`.
    fn parse(session: &str) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(name), "PEM").unwrap();
        }
        let text = format!(
            "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n[upstreams.app]\n\
             servers = [\"127.0.0.1:9001\"]\n\n[[routes]]\nupstream = \"app\"\n\n{session}\n"
        );
        let env = |_: &str| None;
        Config::from_str_with_env(&dir.path().join("proxy.toml"), &text, &env).map_err(|e| e.0)
    }

    const SESSION: &str = "[session]\nstore = \"memcached\"\n\
                           secret = \"0123456789abcdef0123456789abcdef-mc\"\n";

    #[test]
    fn memcached_store_gets_defaults() {
        let config = parse(SESSION).unwrap();
        let StoreKind::Memcached(mc) = &config.session.store else {
            panic!("not memcached: {:?}", config.session.store);
        };
        assert_eq!(mc.servers, vec!["127.0.0.1:11211".to_owned()]);
        assert_eq!(mc.prefix, "cloakroom:");
        assert_eq!(mc.timeout, Duration::from_millis(250));
        assert_eq!(config.session.store_timeout(), Duration::from_millis(250));
        let config = parse(&format!(
            "{SESSION}[session.memcached]\nservers = [\"10.0.0.2:11211\", \"[::1]:11212\", \
             \"cache.internal:11211\"]\nprefix = \"app:\"\ntimeout = \"100ms\"\n"
        ))
        .unwrap();
        let StoreKind::Memcached(mc) = &config.session.store else {
            panic!("not memcached");
        };
        assert_eq!(mc.servers.len(), 3);
        assert_eq!(mc.timeout, Duration::from_millis(100));
    }

    #[test]
    fn bad_memcached_settings_name_their_key_and_line() {
        let errors = parse(&format!(
            "{SESSION}[session.memcached]\nservers = [\"127.0.0.1\", \"h:1\", \"h:1\", \"x:0\"]\n\
             prefix = \"my app:\"\ntimeout = \"soon\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "session.memcached.servers[0]",
            "session.memcached.servers[2]",
            "session.memcached.servers[3]",
            "session.memcached.prefix",
            "session.memcached.timeout",
        ] {
            assert!(keys.contains(&key), "no error for {key}: {errors:?}");
        }
        let text = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("proxy.toml:"), "{text}");
        assert!(!keys.contains(&"session.memcached.servers[1]"), "{text}");
        let empty = parse(&format!("{SESSION}[session.memcached]\nservers = []\n")).unwrap_err();
        assert!(empty.iter().any(|e| e.key == "session.memcached.servers"));
        let unknown = parse(&format!("{SESSION}[session.memcached]\nurl = \"x\"\n"));
        assert!(unknown.is_err(), "unknown keys are refused");
    }

    #[test]
    fn memcached_store_needs_a_shared_secret() {
        let errors = parse("[session]\nstore = \"memcached\"\n").unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == "session.secret"),
            "{errors:?}"
        );
    }

    #[test]
    fn servers_are_host_and_port() {
        assert_eq!(server_problem("127.0.0.1:11211"), None);
        assert_eq!(server_problem("[::1]:11211"), None);
        assert_eq!(server_problem("cache:1"), None);
        assert!(server_problem("cache").is_some());
        assert!(server_problem(":11211").is_some());
        assert!(server_problem("cache:http").is_some());
        assert!(server_problem("cache:70000").is_some());
    }
}
