//! One conversation with the CA (RFC 8555) through `instant-acme`: the account
//! (created once, its credentials cached and reused), then an order for the
//! configured names, answered by the chosen challenge, finalized with a fresh key,
//! and the full chain downloaded.
//!
//! `instant-acme` retries `badNonce` answers itself (three attempts per request); any
//! other refusal comes back as the CA's problem document, which [`AcmeError`] carries
//! for the log.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::Challenges;
use super::store::{self, Names};
use crate::config::{AcmeChallenge, AcmeConfig};

/// How long the CA may take to validate and to issue, each.
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an order did not produce a certificate.
#[derive(Debug, thiserror::Error)]
pub(super) enum AcmeError {
    /// The CA answered with a problem document (RFC 7807).
    #[error("the CA refused: {0}")]
    Problem(String),
    /// The CA could not be reached, or answered something unusable.
    #[error("the CA could not be reached: {0}")]
    Unreachable(String),
    /// Our side failed (a cache file, a key).
    #[error("{0}")]
    Local(String),
}

impl AcmeError {
    /// True for `rateLimited`: wait long before asking again.
    pub(super) fn rate_limited(&self) -> bool {
        matches!(self, AcmeError::Problem(p) if p.contains("rateLimited"))
    }
}

impl From<instant_acme::Error> for AcmeError {
    fn from(error: instant_acme::Error) -> Self {
        match error {
            instant_acme::Error::Api(problem) => AcmeError::Problem(describe(&problem)),
            other => AcmeError::Unreachable(crate::error_chain::display_chain(&other)),
        }
    }
}

fn describe(problem: &instant_acme::Problem) -> String {
    let status = problem
        .status
        .map(|s| format!("HTTP {s} "))
        .unwrap_or_default();
    format!("{status}{problem}")
}

/// The ACME account for `config.directory`: from the cache, else created (and cached).
pub(super) async fn account(config: &AcmeConfig, names: &Names) -> Result<Account, AcmeError> {
    let builder = match &config.ca {
        Some(ca) => Account::builder_with_root(ca)?,
        None => Account::builder()?,
    };
    let cached = store::read(&names.account_file)
        .await
        .map_err(|e| local(&names.account_file, e))?;
    if let Some(text) = cached {
        match serde_json::from_str::<AccountCredentials>(&text) {
            Ok(credentials) => return Ok(builder.from_credentials(credentials).await?),
            Err(e) => tracing::warn!(
                file = %names.account_file.display(),
                error = %e,
                "acme: the cached account is unreadable; creating a new account"
            ),
        }
    }
    let contact = (!config.email.is_empty()).then(|| format!("mailto:{}", config.email));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder.create(&new, config.directory.clone(), None).await?;
    let text = serde_json::to_string(&credentials)
        .map_err(|e| AcmeError::Local(format!("cannot encode the account: {e}")))?;
    store::write(&names.account_file, &text)
        .await
        .map_err(|e| local(&names.account_file, e))?;
    tracing::info!(directory = %config.directory, "acme: account created");
    Ok(account)
}

fn local(path: &std::path::Path, error: std::io::Error) -> AcmeError {
    AcmeError::Local(format!("{}: {error}", path.display()))
}

/// Orders a certificate for `config.domains`; the bundle PEM (chain, then key).
pub(super) async fn order(
    account: &Account,
    config: &AcmeConfig,
    challenges: &Challenges,
) -> Result<String, AcmeError> {
    let mut published = (Vec::new(), Vec::new());
    let result = order_inner(account, config, challenges, &mut published).await;
    challenges.remove(&published.0, &published.1);
    result
}

async fn order_inner(
    account: &Account,
    config: &AcmeConfig,
    challenges: &Challenges,
    published: &mut (Vec<String>, Vec<String>),
) -> Result<String, AcmeError> {
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let kind = match config.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Problem(format!(
                    "authorization is {other:?}, not pending"
                )))
            }
        }
        let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::Problem(format!("the CA offers no {kind:?} challenge for this name"))
        })?;
        let name = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        match config.challenge {
            AcmeChallenge::TlsAlpn01 => {
                challenges
                    .add_tls_alpn(&name, key_authorization.digest().as_ref())
                    .map_err(AcmeError::Local)?;
                published.0.push(name);
            }
            AcmeChallenge::Http01 => {
                challenges.add_http(&challenge.token, key_authorization.as_str());
                published.1.push(challenge.token.clone());
            }
        }
        challenge.set_ready().await?;
    }
    let policy = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(POLL_TIMEOUT);
    let status = order.poll_ready(&policy).await?;
    if status != OrderStatus::Ready {
        let why = order
            .refresh()
            .await
            .ok()
            .and_then(|state| state.error.as_ref().map(describe))
            .unwrap_or_else(|| "validation failed".to_owned());
        return Err(AcmeError::Problem(format!("order is {status:?}: {why}")));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&policy).await?;
    Ok(format!("{}\n{}", chain_pem.trim_end(), key_pem))
}
