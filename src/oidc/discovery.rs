//! The provider's metadata (`{issuer}/.well-known/openid-configuration`) and keys
//! (`jwks_uri`), fetched on first use and cached: metadata for a day, keys until a
//! token names a `kid` they do not have (refetched then, at most once a minute, so a
//! stream of forged `kid`s cannot turn the proxy into a load generator). A failed
//! refresh keeps serving what was cached; with nothing cached, the login routes answer
//! 503 quickly (see `super::OidcError`). At start a background task warms the cache
//! with back-off ([`super::Oidc::warm_up`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::http::Client;
use super::jws::{parse_jwks, Alg, Jwk};
use super::OidcError;

/// How long metadata is trusted before it is fetched again.
pub(crate) const METADATA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Least time between two key refreshes caused by unknown `kid`s.
pub(crate) const KEY_REFRESH_MIN: Duration = Duration::from_secs(60);

/// What cloakroom reads of the discovery document.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    pub(crate) jwks_uri: String,
    #[serde(default)]
    pub(crate) userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub(crate) end_session_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
}

/// Metadata and keys as fetched together.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) meta: Metadata,
    /// The advertised algorithms cloakroom verifies (RS256 when none is advertised,
    /// as OIDC Discovery says).
    pub(crate) algs: Vec<Alg>,
    pub(crate) keys: Vec<Jwk>,
    pub(crate) fetched: Instant,
    pub(crate) keys_fetched: Instant,
}

impl Provider {
    pub(crate) fn stale(&self) -> bool {
        self.fetched.elapsed() > METADATA_TTL
    }
}

/// Fetches metadata and keys for `issuer` (whose metadata must name exactly it).
pub(crate) async fn discover(client: &Client, issuer: &str) -> Result<Provider, OidcError> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let answer = client
        .get(&url, None)
        .await
        .map_err(|e| OidcError::Provider(format!("discovery: {e}")))?;
    let meta: Metadata = serde_json::from_slice(&answer.body)
        .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))?;
    if meta.issuer != issuer {
        return Err(OidcError::Provider(format!(
            "discovery names issuer {:?}, the config says {issuer:?} (they must match exactly)",
            meta.issuer
        )));
    }
    let algs: Vec<Alg> = if meta.id_token_signing_alg_values_supported.is_empty() {
        vec![Alg::Rs256]
    } else {
        meta.id_token_signing_alg_values_supported
            .iter()
            .filter_map(|name| Alg::parse(name))
            .collect()
    };
    if algs.is_empty() {
        return Err(OidcError::Provider(
            "the provider signs ID tokens with none of EdDSA, ES256, ES384, RS256, PS256".into(),
        ));
    }
    let keys = fetch_keys(client, &meta.jwks_uri).await?;
    let now = Instant::now();
    Ok(Provider {
        meta,
        algs,
        keys,
        fetched: now,
        keys_fetched: now,
    })
}

/// Fetches the signing keys at `jwks_uri`.
pub(crate) async fn fetch_keys(client: &Client, jwks_uri: &str) -> Result<Vec<Jwk>, OidcError> {
    let answer = client
        .get(jwks_uri, None)
        .await
        .map_err(|e| OidcError::Provider(format!("keys: {e}")))?;
    parse_jwks(&answer.body).map_err(|e| OidcError::Provider(format!("keys: {e}")))
}

/// A provider with refreshed keys, the rest kept.
pub(crate) fn with_keys(old: &Provider, keys: Vec<Jwk>) -> Arc<Provider> {
    Arc::new(Provider {
        meta: old.meta.clone(),
        algs: old.algs.clone(),
        keys,
        fetched: old.fetched,
        keys_fetched: Instant::now(),
    })
}
