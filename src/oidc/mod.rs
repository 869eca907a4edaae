//! The OpenID Connect relying party behind `login = "oidc"` routes: the provider's
//! metadata and keys ([`discovery`]), its HTTP client ([`http`]), ID and logout token
//! verification on `ring` ([`jws`], [`claims`]), the login itself ([`flow`]: PKCE
//! S256, `state`, `nonce`, pending logins in the session store's key-value side) and
//! back-channel logout ([`backchannel`]). The proxy's side (which requests start a
//! login, the callback's fresh session, 401/403) is in `proxy::endpoints` and
//! `proxy::pipeline`.
//!
//! One [`Oidc`] per `[oidc]` table; a reload that leaves the table as it was keeps the
//! running one (and its cache).

pub(crate) mod backchannel;
pub(crate) mod claims;
pub(crate) mod discovery;
pub(crate) mod flow;
pub(crate) mod http;
pub(crate) mod jws;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::config::OidcConfig;
use crate::session::StoreError;
use discovery::{discover, fetch_keys, with_keys, Provider, KEY_REFRESH_MIN};
use jws::Verified;

/// The callback path (the redirect URI is `https://{Host}` + this).
pub const CALLBACK_PATH: &str = "/.cloakroom/oidc/callback";
/// The back-channel logout path.
pub const BACKCHANNEL_PATH: &str = "/.cloakroom/oidc/backchannel";

/// Deadline of one call to the provider.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// Why a token was refused (never carries the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no provider key fits the token")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("wrong issuer")]
    Issuer,
    #[error("audience is not this client")]
    Audience,
    #[error("authorized party is not this client")]
    Azp,
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    IssuedInFuture,
    #[error("nonce does not match the login")]
    Nonce,
    #[error("at_hash does not match the access token")]
    AtHash,
    #[error("claim {0} missing or invalid")]
    Claim(&'static str),
}

/// Why a login step failed; the proxy maps each to its status.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider is unreachable, slow or answered nonsense: 502/503.
    #[error("identity provider: {0}")]
    Provider(String),
    /// A token failed a check: the login fails (400).
    #[error("token refused: {0}")]
    Token(#[from] TokenError),
    /// `state` unknown, used, expired or not bound to this browser: 400.
    #[error("unknown, used or expired login state")]
    BadState,
    /// The provider answered the login with an error (`access_denied`, …): 403.
    #[error("the provider refused the login: {0}")]
    Denied(String),
    /// The OS random generator failed: 500.
    #[error("the OS random generator failed")]
    Random,
    /// The session store failed: 503.
    #[error("session store: {0}")]
    Store(#[from] StoreError),
}

/// The relying party of one `[oidc]` table.
pub struct Oidc {
    pub(crate) config: OidcConfig,
    client: http::Client,
    cache: ArcSwapOption<Provider>,
    /// One refresh at a time; the others wait for its result.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.config.issuer)
            .field("discovered", &self.cache.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// The relying party for `config` (reads `ca`; no network IO).
    pub fn new(config: &OidcConfig) -> Result<Oidc, String> {
        Ok(Oidc {
            client: http::Client::new(config.ca.as_deref(), CALL_TIMEOUT)?,
            config: config.clone(),
            cache: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// The provider's metadata and keys: cached, fetched when missing or a day old
    /// (a failed refresh of stale metadata keeps the stale copy).
    pub(crate) async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        if let Some(cached) = self.cache.load_full().filter(|p| !p.stale()) {
            return Ok(cached);
        }
        let _one = self.refresh.lock().await;
        if let Some(cached) = self.cache.load_full().filter(|p| !p.stale()) {
            return Ok(cached);
        }
        match discover(&self.client, &self.config.issuer).await {
            Ok(provider) => {
                let provider = Arc::new(provider);
                self.cache.store(Some(provider.clone()));
                Ok(provider)
            }
            Err(error) => match self.cache.load_full() {
                Some(stale) => {
                    tracing::warn!(%error, "OIDC discovery refresh failed; keeping the cached metadata");
                    Ok(stale)
                }
                None => Err(error),
            },
        }
    }

    /// Verifies the signature of `token` with the provider's keys (refetched once,
    /// rate-limited, when no key has its `kid`).
    pub(crate) async fn verify(&self, token: &str) -> Result<(Arc<Provider>, Verified), OidcError> {
        let provider = self.provider().await?;
        match jws::verify(token, &provider.keys, &provider.algs) {
            Err(TokenError::UnknownKey) => {}
            other => return Ok((provider, other?)),
        }
        let provider = {
            let _one = self.refresh.lock().await;
            let current = self.cache.load_full().unwrap_or(provider);
            if current.keys_fetched.elapsed() < KEY_REFRESH_MIN {
                current
            } else {
                let keys = fetch_keys(&self.client, &current.meta.jwks_uri).await?;
                let fresh = with_keys(&current, keys);
                self.cache.store(Some(fresh.clone()));
                fresh
            }
        };
        let verified = jws::verify(token, &provider.keys, &provider.algs)?;
        Ok((provider, verified))
    }

    /// Fetches the provider's metadata at start, retrying with back-off (1 s doubling
    /// to a minute) until it succeeds or the proxy stops. Never fatal: until it
    /// succeeds, login routes answer 503 and logged-in sessions are served.
    pub(crate) async fn warm_up(self: Arc<Self>, stop: Arc<crate::shutdown::Signal>) {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.provider().await {
                Ok(_) => {
                    tracing::info!(issuer = %self.config.issuer, "OIDC provider discovered");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?wait, "OIDC discovery failed")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.wait() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    }
}
