//! Validation of `[session.redis]`: the server URL (or the Cluster seed URLs), the key
//! prefix, the per-operation timeout and the TLS authorities.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No network IO; an
//! error message never repeats a URL (it may hold a password).

use redis::IntoConnectionInfo as _;

use super::super::raw::RawRedis;
use super::super::RedisConfig;
use super::Validator;

/// Schemes of a standalone server.
const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];

/// Why `url` is not a Redis URL, if it is not one.
fn url_problem(url: &str, schemes: &[&str]) -> Option<String> {
    if !schemes.iter().any(|s| url.starts_with(s)) {
        return Some(format!(
            "must start with {}, like \"redis://127.0.0.1:6379/0\"",
            schemes.join(", ")
        ));
    }
    url.into_connection_info()
        .err()
        .map(|e| format!("is not a valid Redis URL ({:?})", e.kind()))
}

impl Validator<'_> {
    /// Always returns the settings so the other session rules still run; a bad value
    /// is recorded as an error, so the config as a whole is rejected.
    pub(super) fn redis(&mut self, raw: &RawRedis) -> RedisConfig {
        if raw.urls.is_empty() {
            if let Some(problem) = url_problem(&raw.url, &SCHEMES) {
                self.error("session.redis.url", problem);
            }
        } else {
            let tls = raw
                .urls
                .iter()
                .filter(|u| u.starts_with("rediss://"))
                .count();
            for (i, url) in raw.urls.iter().enumerate() {
                if let Some(problem) = url_problem(url, &["redis://", "rediss://"]) {
                    self.error(&format!("session.redis.urls[{i}]"), problem);
                }
            }
            if tls != 0 && tls != raw.urls.len() {
                self.error(
                    "session.redis.urls",
                    "mixes redis:// and rediss://; a Cluster is reached with TLS on every \
                     node or on none",
                );
            }
        }
        if raw.prefix.contains(char::is_whitespace) {
            self.error(
                "session.redis.prefix",
                "must not contain whitespace, like \"cloakroom:\"",
            );
        }
        let ca = (!raw.ca.trim().is_empty())
            .then(|| self.readable_file("session.redis.ca", raw.ca.trim()))
            .flatten();
        RedisConfig {
            url: raw.url.clone(),
            prefix: raw.prefix.clone(),
            timeout: self
                .duration("session.redis.timeout", &raw.timeout)
                .unwrap_or(std::time::Duration::from_millis(250)),
            urls: raw.urls.clone(),
            ca,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_repeating_them() {
        assert_eq!(url_problem("redis://127.0.0.1:6379/0", &SCHEMES), None);
        assert_eq!(
            url_problem("rediss://:pw@cache.internal:6380", &SCHEMES),
            None
        );
        let problem = url_problem("http://:hunter2@x", &SCHEMES).unwrap();
        assert!(problem.starts_with("must start with redis://"), "{problem}");
        assert!(!problem.contains("hunter2"));
        let problem = url_problem("redis://:hunter2@host:notaport", &SCHEMES).unwrap();
        assert!(!problem.contains("hunter2"), "{problem}");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let config = RedisConfig {
            url: "rediss://app:hunter2@cache:6380/0".into(),
            prefix: "cr:".into(),
            timeout: std::time::Duration::from_millis(250),
            urls: vec!["redis://:swordfish@10.0.0.1:7000".into()],
            ca: None,
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish"),
            "{text}"
        );
        assert!(text.contains("rediss://<redacted>@cache:6380/0"), "{text}");
    }
}
