//! Validation of `[session]` and the store choice (`[session.redis]`,
//! `[session.postgres]` and `[session.memcached]` are in their own files): the cookie's
//! name and attributes, lifetimes, the secret ring and the store choice.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No IO.

use super::super::raw::{RawSameSite, RawSession, RawStore};
use super::super::{SameSite, Secret, SessionConfig, StoreKind};
use super::checks::cookie_name;
use super::Validator;

/// Smallest `session.secret`, in bytes (256 bits).
pub(super) const MIN_SECRET_BYTES: usize = 32;

impl Validator<'_> {
    pub(super) fn session(&mut self, raw: RawSession) -> Option<SessionConfig> {
        let cookie = self.check("session.cookie", cookie_name(&raw.cookie));
        let lower = raw.cookie.to_ascii_lowercase();
        for prefix in ["__Host-", "__Secure-"] {
            if lower.starts_with(&prefix.to_ascii_lowercase()) && !raw.secure {
                self.error(
                    "session.secure",
                    format!(
                        "a \"{prefix}\" cookie is only accepted by browsers with Secure; \
                         set secure = true, or rename the cookie without the \"{prefix}\" prefix"
                    ),
                );
            }
        }
        let same_site = match raw.same_site {
            RawSameSite::Strict => SameSite::Strict,
            RawSameSite::Lax => SameSite::Lax,
            RawSameSite::None => SameSite::None,
        };
        if same_site == SameSite::None && !raw.secure {
            self.error(
                "session.same_site",
                "same_site = \"none\" needs secure = true (browsers drop SameSite=None cookies \
                 without Secure); set secure = true or use same_site = \"lax\"",
            );
        }
        let idle = self.duration("session.idle_timeout", &raw.idle_timeout);
        let absolute = self.duration("session.absolute_timeout", &raw.absolute_timeout);
        if let (Some(idle), Some(absolute)) = (idle, absolute) {
            if idle > absolute {
                self.warn(
                    "session.idle_timeout",
                    format!(
                        "idle_timeout ({}) is longer than absolute_timeout ({}); the absolute \
                         limit wins, so sessions end at absolute_timeout however active they are",
                        humantime::format_duration(idle),
                        humantime::format_duration(absolute)
                    ),
                );
            }
        }
        let raw_secret_len = raw.secret.as_ref().map(String::len);
        let secret = match raw.secret {
            Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                self.error(
                    "session.secret",
                    format!(
                        "the secret is {} bytes; use at least {MIN_SECRET_BYTES} random bytes \
                         (e.g. the output of `openssl rand -base64 48`)",
                        secret.len()
                    ),
                );
                None
            }
            Some(secret) => Some(Secret(secret.into_bytes())),
            None => None,
        };
        let previous_secrets = self.previous_secrets(&raw.previous_secrets, secret.is_some());
        let persist = (!raw.persist.trim().is_empty()).then(|| self.base.join(raw.persist.trim()));
        let persist_interval = self.duration("session.persist_interval", &raw.persist_interval);
        let touch_interval = match (&raw.touch_interval, idle) {
            (Some(text), _) => self.duration("session.touch_interval", text),
            (None, Some(idle)) => Some(idle / 10),
            (None, None) => None,
        };
        let store = match raw.store {
            RawStore::Memory => StoreKind::Memory,
            RawStore::Redis => StoreKind::Redis(self.redis(&raw.redis)),
            RawStore::Cookie => StoreKind::Cookie,
            RawStore::Postgres => StoreKind::Postgres(self.postgres(&raw.postgres)),
            RawStore::Memcached => StoreKind::Memcached(self.memcached(&raw.memcached)),
        };
        let needs_secret = match store {
            StoreKind::Redis(_) => {
                Some("store = \"redis\" needs a secret shared by every proxy instance")
            }
            StoreKind::Cookie => {
                Some("store = \"cookie\" needs a secret to seal sessions into the cookie")
            }
            StoreKind::Memory if persist.is_some() => Some(
                "persist keeps sessions across restarts only if their cookies still verify, \
                 which needs a fixed secret",
            ),
            StoreKind::Memory => None,
            StoreKind::Postgres(_) => {
                Some("store = \"postgres\" needs a secret shared by every proxy instance")
            }
            StoreKind::Memcached(_) => {
                Some("store = \"memcached\" needs a secret shared by every proxy instance")
            }
        };
        // A secret that was given but too short has been reported already.
        if let (Some(why), None, None) = (needs_secret, &secret, &raw_secret_len) {
            self.error(
                "session.secret",
                format!(
                    "{why}; set secret = \"${{CLOAKROOM_SECRET}}\" and export at least \
                     {MIN_SECRET_BYTES} random bytes in CLOAKROOM_SECRET"
                ),
            );
        }
        let max_sessions = match usize::try_from(raw.max_sessions) {
            Ok(0) => Err("must be at least 1; it bounds the memory store".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err("too large".to_owned()),
        };
        let max_sessions = self.check("session.max_sessions", max_sessions);
        Some(SessionConfig {
            cookie: cookie?,
            same_site,
            secure: raw.secure,
            persistent: raw.persistent,
            idle_timeout: idle?,
            absolute_timeout: absolute?,
            store,
            secret,
            max_sessions: max_sessions?,
            previous_secrets,
            persist,
            persist_interval: persist_interval?,
            touch_interval: touch_interval?,
        })
    }

    /// `session.previous_secrets`: each as long as a secret must be, and only next to a
    /// current `secret` (rotation replaces one fixed secret with another).
    fn previous_secrets(&mut self, raw: &[String], has_secret: bool) -> Vec<Secret> {
        if !raw.is_empty() && !has_secret {
            self.error(
                "session.previous_secrets",
                "previous_secrets needs the current secret in session.secret \
                 (new cookies are made with it; the previous ones are only accepted)",
            );
        }
        raw.iter()
            .enumerate()
            .filter_map(|(i, secret)| {
                if secret.len() < MIN_SECRET_BYTES {
                    self.error(
                        &format!("session.previous_secrets[{i}]"),
                        format!(
                            "this secret is {} bytes; every secret needs at least \
                             {MIN_SECRET_BYTES}",
                            secret.len()
                        ),
                    );
                    return None;
                }
                Some(Secret(secret.clone().into_bytes()))
            })
            .collect()
    }
}
