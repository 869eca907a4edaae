//! Certificates from an ACME CA (`[tls.acme]`), obtained and renewed in the
//! background and swapped into the [`CertResolver`] live: no restart, no dropped
//! connection (a handshake picks the certificate current at that moment).
//!
//! At start the cached bundle (if any) is served at once, even when the CA is
//! unreachable. The task then orders when there is no certificate, or when the current
//! one is within `renew_before` of its expiry (minus a jitter of up to an eighth of
//! `renew_before`, at most an hour, so replicas and restarts spread out). A failure is
//! logged with the CA's problem document and retried with exponential back-off (1 s
//! to 10 min; at least 30 min after `rateLimited`); the proxy keeps serving.
//!
//! Replicas: when the session store is shared ([`KeyValue::shared`], Redis or
//! PostgreSQL), an instance orders only while it holds a lock in the store
//! (`put_new` with a TTL, released by its holder), and puts the bundle (chain and
//! private key, PEM) in the store, where the others pick it up. With a per-process
//! store every instance orders for itself.

mod challenge;
mod order;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::Account;

pub use challenge::{Challenges, ACME_TLS_ALPN, HTTP_01_PREFIX};
use order::AcmeError;
use store::{Bundle, Names};

use super::CertResolver;
use crate::config::AcmeConfig;
use crate::metrics::Metrics;
use crate::session::store::KeyValue;
use crate::shutdown::Signal;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const RATE_LIMITED_BACKOFF: Duration = Duration::from_secs(1800);
/// How long one replica may hold the ordering lock (an order takes seconds).
const LOCK_TTL: Duration = Duration::from_secs(300);
/// How often a replica looks in the shared store for a newer certificate, and how
/// soon it looks again while another replica holds the lock.
const SHARED_POLL: Duration = Duration::from_secs(60);
const BUSY_POLL: Duration = Duration::from_secs(2);

/// The ACME side of one process.
pub(crate) struct Manager {
    config: AcmeConfig,
    names: Names,
    resolver: Arc<CertResolver>,
    kv: Arc<dyn KeyValue>,
    metrics: Arc<Metrics>,
    /// This process's lock value.
    holder: String,
    current: Option<Bundle>,
    /// When the current bundle is renewed (Unix seconds).
    renew_at: i64,
    account: Option<Account>,
    started: Instant,
}

enum Attempt {
    Installed,
    /// Another replica holds the lock.
    Busy,
}

impl Manager {
    /// Serves the cached certificate (if any) right away; [`Manager::run`] does the rest.
    pub(crate) async fn start(
        config: AcmeConfig,
        resolver: Arc<CertResolver>,
        kv: Arc<dyn KeyValue>,
        metrics: Arc<Metrics>,
    ) -> Manager {
        let names = Names::of(&config);
        let holder = crate::random::random_bytes::<16>()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
            .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
        let mut manager = Manager {
            config,
            names,
            resolver,
            kv,
            metrics,
            holder,
            current: None,
            renew_at: 0,
            account: None,
            started: Instant::now(),
        };
        match store::read(&manager.names.bundle_file).await {
            Ok(Some(pem)) => match Bundle::parse(pem) {
                Ok(bundle) => manager.install(bundle, "cache"),
                Err(error) => tracing::warn!(
                    file = %manager.names.bundle_file.display(),
                    %error,
                    "acme: the cached certificate is unusable; ordering a new one"
                ),
            },
            Ok(None) => tracing::info!(
                domains = ?manager.config.domains,
                "acme: no cached certificate; handshakes for these names fail until one is issued"
            ),
            Err(error) => tracing::warn!(
                file = %manager.names.bundle_file.display(),
                %error,
                "acme: cannot read the cached certificate"
            ),
        }
        manager
    }

    /// Orders and renews until `stop` is raised. Never returns early, never panics.
    pub(crate) async fn run(mut self, stop: Arc<Signal>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            self.pick_up_shared().await;
            let now = now_s();
            let wait = if self.current.is_none() || now >= self.renew_at {
                match self.attempt().await {
                    Ok(Attempt::Installed) => {
                        backoff = MIN_BACKOFF;
                        self.until_due()
                    }
                    Ok(Attempt::Busy) => BUSY_POLL,
                    Err(error) => {
                        self.metrics.acme_ordered(false);
                        let wait = if error.rate_limited() {
                            backoff.max(RATE_LIMITED_BACKOFF)
                        } else {
                            backoff
                        };
                        tracing::warn!(
                            domains = ?self.config.domains,
                            directory = %self.config.directory,
                            %error,
                            retry_in = ?wait,
                            serving = self.current.is_some(),
                            "acme: no certificate this time; retrying later"
                        );
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        jittered(wait)
                    }
                }
            } else {
                self.until_due()
            };
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Time until the renewal is due, capped to the shared store's poll period.
    fn until_due(&self) -> Duration {
        let due = Duration::from_secs(u64::try_from(self.renew_at - now_s()).unwrap_or(0));
        if self.kv.shared() {
            due.min(SHARED_POLL)
        } else {
            due.max(MIN_BACKOFF)
        }
    }

    /// With a shared store: a bundle newer than ours, put there by another replica.
    async fn pick_up_shared(&mut self) {
        if !self.kv.shared() {
            return;
        }
        let bytes = match self.kv.get(&self.names.bundle_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "acme: cannot read the shared certificate from the store");
                return;
            }
        };
        let Ok(pem) = String::from_utf8(bytes) else {
            return;
        };
        if self.current.as_ref().is_some_and(|c| c.pem == pem) {
            return;
        }
        match Bundle::parse(pem) {
            Ok(bundle) if self.is_newer(&bundle) => {
                self.save_file(&bundle).await;
                self.install(bundle, "shared store");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "acme: the shared certificate is unusable"),
        }
    }

    fn is_newer(&self, bundle: &Bundle) -> bool {
        self.current
            .as_ref()
            .is_none_or(|c| bundle.not_after > c.not_after)
    }

    /// One order, under the store's lock when it is shared.
    async fn attempt(&mut self) -> Result<Attempt, AcmeError> {
        let shared = self.kv.shared();
        if shared {
            let locked = self
                .kv
                .put_new(&self.names.lock_key, self.holder.as_bytes(), LOCK_TTL)
                .await
                .map_err(|e| AcmeError::Local(format!("the session store (lock): {e}")))?;
            if !locked {
                tracing::debug!("acme: another replica is ordering; waiting for its certificate");
                return Ok(Attempt::Busy);
            }
        }
        let result = self.order_and_install().await;
        if shared {
            if let Err(error) = self
                .kv
                .release(&self.names.lock_key, self.holder.as_bytes())
                .await
            {
                tracing::warn!(%error, "acme: could not release the ordering lock (it expires)");
            }
        }
        result.map(|()| Attempt::Installed)
    }

    async fn order_and_install(&mut self) -> Result<(), AcmeError> {
        if self.kv.shared() {
            // Another replica may have finished between our look and our lock.
            self.pick_up_shared().await;
            if self.current.is_some() && now_s() < self.renew_at {
                return Ok(());
            }
        }
        let account = match &self.account {
            Some(account) => account.clone(),
            None => {
                let account = order::account(&self.config, &self.names).await?;
                self.account = Some(account.clone());
                account
            }
        };
        tracing::info!(domains = ?self.config.domains, "acme: ordering a certificate");
        let challenges = self.resolver.challenges().clone();
        let pem = order::order(&account, &self.config, &challenges).await?;
        let bundle = Bundle::parse(pem)
            .map_err(|e| AcmeError::Problem(format!("the CA sent an unusable certificate: {e}")))?;
        self.metrics.acme_ordered(true);
        self.save_file(&bundle).await;
        if self.kv.shared() {
            let ttl = Duration::from_secs(
                u64::try_from(bundle.not_after - now_s())
                    .unwrap_or(0)
                    .max(60),
            );
            if let Err(error) = self
                .kv
                .put(&self.names.bundle_key, bundle.pem.as_bytes(), ttl)
                .await
            {
                tracing::warn!(%error, "acme: could not share the certificate through the store");
            }
        }
        self.install(bundle, "CA");
        Ok(())
    }

    async fn save_file(&self, bundle: &Bundle) {
        if let Err(error) = store::write(&self.names.bundle_file, &bundle.pem).await {
            tracing::warn!(
                file = %self.names.bundle_file.display(),
                %error,
                "acme: could not cache the certificate (it is served anyway)"
            );
        }
    }

    fn install(&mut self, bundle: Bundle, from: &'static str) {
        self.resolver
            .install_acme(&self.config.domains, bundle.key.clone());
        self.metrics
            .acme_expires(&self.config.domains, bundle.not_after);
        let mut renew_before =
            i64::try_from(self.config.renew_before.as_secs()).unwrap_or(i64::MAX);
        let lifetime = bundle.not_after - bundle.not_before;
        if renew_before >= lifetime {
            // A CA issuing shorter lives than renew_before would be asked again at once,
            // forever: renew when two thirds of the life are gone instead.
            tracing::warn!(
                renew_before = ?self.config.renew_before,
                lifetime_s = lifetime,
                "acme: the certificate lives less than tls.acme.renew_before; renewing after \
                 two thirds of its life"
            );
            renew_before = (lifetime / 3).max(0);
        }
        let jitter_span = (renew_before / 8).clamp(0, 3600);
        let jitter = match crate::random::random_bytes::<8>() {
            Ok(b) if jitter_span > 0 => {
                i64::try_from(u64::from_le_bytes(b) % jitter_span.unsigned_abs()).unwrap_or(0)
            }
            _ => 0,
        };
        self.renew_at = bundle
            .not_after
            .saturating_sub(renew_before)
            .saturating_sub(jitter);
        tracing::info!(
            domains = ?self.config.domains,
            from,
            not_after = bundle.not_after,
            renew_in_s = self.renew_at - now_s(),
            since_start_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "acme: certificate installed"
        );
        self.current = Some(bundle);
    }
}

fn now_s() -> i64 {
    i64::try_from(crate::clock::unix_ms() / 1000).unwrap_or(i64::MAX)
}

/// `wait` plus up to a quarter more, so failing replicas do not retry in step.
fn jittered(wait: Duration) -> Duration {
    let extra = crate::random::random_bytes::<2>()
        .map(|b| u64::from(u16::from_le_bytes(b)))
        .unwrap_or(0);
    let quarter = u64::try_from(wait.as_millis() / 4).unwrap_or(0);
    wait + Duration::from_millis(extra * quarter / 65_535)
}
