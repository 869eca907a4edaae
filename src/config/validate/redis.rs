//! Validation of `[session.redis]`: the server URL (or the Cluster seed URLs, or the
//! Sentinel URLs and master name), the key prefix, the per-operation timeout and the
//! TLS authorities.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No network IO; an
//! error message never repeats a URL (it may hold a password).

use redis::IntoConnectionInfo as _;

use super::super::raw::RawRedis;
use super::super::{RedisConfig, SentinelConfig};
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
        let sentinel = self.sentinel(raw);
        if sentinel.is_some() {
            // Sentinel mode: `url` is not used (its default stays unchecked).
        } else if raw.urls.is_empty() {
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
            sentinel,
        }
    }

    /// `sentinels` + `sentinel_master`: `Some` in Sentinel mode (errors recorded).
    fn sentinel(&mut self, raw: &RawRedis) -> Option<SentinelConfig> {
        let master = raw.sentinel_master.trim();
        if raw.sentinels.is_empty() {
            if !master.is_empty() {
                self.error(
                    "session.redis.sentinel_master",
                    "is set without session.redis.sentinels; list the sentinels, like \
                     sentinels = [\"redis://10.0.0.1:26379\"]",
                );
            }
            return None;
        }
        if !raw.urls.is_empty() {
            self.error(
                "session.redis.sentinels",
                "cannot be used with session.redis.urls (a Redis Cluster); choose one",
            );
        }
        if master.is_empty() {
            self.error(
                "session.redis.sentinel_master",
                "is required with session.redis.sentinels: the name the sentinels monitor \
                 the master under, like \"mymaster\"",
            );
        } else if master.contains(char::is_whitespace) {
            self.error(
                "session.redis.sentinel_master",
                "must not contain whitespace",
            );
        }
        let mut first: Option<(bool, i64, Option<String>, Option<String>)> = None;
        for (i, url) in raw.sentinels.iter().enumerate() {
            let key = format!("session.redis.sentinels[{i}]");
            if let Some(problem) = url_problem(url, &["redis://", "rediss://"]) {
                self.error(&key, problem);
                continue;
            }
            let Ok(info) = url.as_str().into_connection_info() else {
                continue;
            };
            let settings = info.redis_settings();
            let this = (
                url.starts_with("rediss://"),
                settings.db(),
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            );
            match &first {
                None => first = Some(this),
                Some(first) if *first != this => self.error(
                    &key,
                    "differs from the sentinel URL before it in scheme, database, user or \
                     password; they are the same on every sentinel (and used for the master too)",
                ),
                Some(_) => {}
            }
        }
        Some(SentinelConfig {
            urls: raw.sentinels.clone(),
            master: master.to_owned(),
        })
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
            sentinel: Some(SentinelConfig {
                urls: vec!["redis://:marlin@10.0.0.1:26379".into()],
                master: "mymaster".into(),
            }),
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish") && !text.contains("marlin"),
            "{text}"
        );
        assert!(text.contains("rediss://<redacted>@cache:6380/0"), "{text}");
    }
}
