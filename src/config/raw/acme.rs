//! The serde mirror of `[tls.acme]` (part of `raw.rs`, split out by concern; no logic).

use serde::Deserialize;

/// `[tls.acme]`: certificates from an ACME CA instead of `tls.cert`/`tls.key` files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawAcme {
    #[serde(default = "default_directory")]
    pub(in crate::config) directory: String,
    #[serde(default)]
    pub(in crate::config) email: String,
    /// Absent: every exact route host.
    #[serde(default)]
    pub(in crate::config) domains: Option<Vec<String>>,
    #[serde(default = "default_challenge")]
    pub(in crate::config) challenge: String,
    #[serde(default = "default_cache")]
    pub(in crate::config) cache: String,
    #[serde(default)]
    pub(in crate::config) ca: String,
    #[serde(default = "default_renew_before")]
    pub(in crate::config) renew_before: String,
}

fn default_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".to_owned()
}

fn default_challenge() -> String {
    "tls-alpn-01".to_owned()
}

fn default_cache() -> String {
    "acme".to_owned()
}

fn default_renew_before() -> String {
    "30d".to_owned()
}
