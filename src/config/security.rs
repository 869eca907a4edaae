//! The validated security settings: client-header hygiene, rate limits, the signed
//! identity assertion, hijack signals and HSTS.
//!
//! Their keys sit in the sections the contract names (`listen.drop_underscore_headers`,
//! `limits.per_ip`, `inject.assertion*`, `inject.anomaly`, `session.anomaly`,
//! `tls.hsts`); they are gathered here so the request path finds them in one place.

use std::num::NonZeroU32;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::Secret;

/// Every security setting of one config generation.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Drop every client header whose name contains `_` (`listen.drop_underscore_headers`,
    /// default true, like nginx's `underscores_in_headers off`).
    pub drop_underscore_headers: bool,
    /// `limits.per_ip`, `limits.per_session`, `limits.new_sessions_per_ip`.
    pub rates: RateLimitsConfig,
    /// `inject.assertion` and its key; `None` = off.
    pub assertion: Option<AssertionConfig>,
    /// `session.anomaly` (default `flag`).
    pub anomaly: AnomalyMode,
    /// `inject.anomaly` (default `X-Session-Anomaly`); `None` = not sent.
    pub anomaly_header: Option<HeaderName>,
    /// `tls.hsts`: the `Strict-Transport-Security` value added to every https response;
    /// `None` = not sent.
    pub hsts: Option<HeaderValue>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            drop_underscore_headers: true,
            rates: RateLimitsConfig::default(),
            assertion: None,
            anomaly: AnomalyMode::Flag,
            anomaly_header: Some(HeaderName::from_static("x-session-anomaly")),
            hsts: None,
        }
    }
}

/// A rate in the form `"N/s"` or `"N/m"`: `count` requests per `per`, burst = `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

/// The three rate limits; `None` = off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitsConfig {
    /// Requests per client IP.
    pub per_ip: Option<Rate>,
    /// Requests per session (session routes only).
    pub per_session: Option<Rate>,
    /// Sessions a client IP may create.
    pub new_sessions_per_ip: Option<Rate>,
}

impl RateLimitsConfig {
    /// Whether any limit is on.
    pub fn any(&self) -> bool {
        self.per_ip.is_some() || self.per_session.is_some() || self.new_sessions_per_ip.is_some()
    }
}

/// `inject.assertion`, `assertion_key`, `assertion_previous_keys`, `assertion_ttl`.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    /// The request header that carries the JWS.
    pub header: HeaderName,
    /// The Ed25519 signing key as PKCS#8 DER; `None` = generated at start (one instance).
    pub key: Option<Secret>,
    /// Raw 32-byte Ed25519 public keys still served in the JWKS (rotation).
    pub previous_public_keys: Vec<[u8; 32]>,
    /// `exp - iat` of every token. Default 60 s.
    pub ttl: Duration,
}

/// `session.anomaly`: what a changed User-Agent family or network does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyMode {
    /// Not checked.
    Off,
    /// Told to the upstream (`inject.anomaly`), logged and counted.
    Flag,
    /// The session ends (as a logout); the request goes on with a fresh anonymous one.
    End,
}
