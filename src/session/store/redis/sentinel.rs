//! Redis Sentinel (`session.redis.sentinels` + `sentinel_master`): which server is the
//! master is asked of the sentinels (the `redis` crate's `SentinelClient`, which also
//! checks that the server it names calls itself master), and asked again when a
//! command finds its link broken or the server read-only (a demoted master).
//!
//! Each answer that names another server bumps a generation; every thread's link
//! remembers the generation it was made for, so a failover replaces all links, each on
//! its thread's next command. While the old master is down and not yet replaced, the
//! sentinels still name it: commands fail (session routes answer 503, never an
//! anonymous session) until they name the promoted replica, then recover by themselves.
//!
//! Bounds: one question at a time (the others wait for its answer), at most one every
//! [`REASK_GAP`], each bounded by the store timeout; so an outage costs the sentinels a
//! few questions per second, not one per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{IntoConnectionInfo as _, RedisError, TlsCertificates, TlsMode};

use crate::config::SentinelConfig;

/// The shortest time between two questions to the sentinels.
const REASK_GAP: Duration = Duration::from_millis(100);

/// The master last named.
struct Named {
    generation: u64,
    client: Option<redis::Client>,
    /// `host:port` (no credentials).
    address: String,
    asked: Option<Instant>,
}

/// Where the master is, as the sentinels say.
pub(super) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    named: Mutex<Named>,
    /// The deadline of one question (the sentinels, then the named server's `ROLE`).
    deadline: Duration,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("generation", &self.generation())
            .finish()
    }
}

/// An error of the client's kind for "no answer in time" (a timeout, for the caller).
fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the sentinels did not answer in time",
    ))
}

impl Sentinels {
    /// Sets up the sentinel client (no connection yet). `ca`: PEM authorities for
    /// `rediss://` (`None`: the system's).
    pub(super) fn new(
        config: &SentinelConfig,
        ca: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<Sentinels, RedisError> {
        let mut addrs = Vec::with_capacity(config.urls.len());
        let mut settings = None;
        for url in &config.urls {
            let info = url.as_str().into_connection_info()?;
            settings.get_or_insert_with(|| info.redis_settings().clone());
            addrs.push(info.addr().clone());
        }
        let tls = config.urls.iter().any(|u| u.starts_with("rediss://"));
        let mut builder =
            SentinelClientBuilder::new(addrs, &config.master, SentinelServerType::Master)?;
        if let Some(settings) = settings {
            builder = builder.set_client_to_redis_db(settings.db());
            if let Some(user) = settings.username() {
                builder = builder
                    .set_client_to_redis_username(user)
                    .set_client_to_sentinel_username(user);
            }
            if let Some(password) = settings.password() {
                builder = builder
                    .set_client_to_redis_password(password)
                    .set_client_to_sentinel_password(password);
            }
        }
        if tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if ca.is_some() {
                let certs = || TlsCertificates {
                    client_tls: None,
                    root_cert: ca.clone(),
                };
                builder = builder
                    .set_client_to_redis_certificates(certs())
                    .set_client_to_sentinel_certificates(certs());
            }
        }
        Ok(Sentinels {
            client: tokio::sync::Mutex::new(builder.build()?),
            named: Mutex::new(Named {
                generation: 0,
                client: None,
                address: String::new(),
                asked: None,
            }),
            deadline,
        })
    }

    /// The generation of the master last named (links made for another are stale).
    pub(super) fn generation(&self) -> u64 {
        self.named.lock().map(|n| n.generation).unwrap_or(0)
    }

    /// The master last named, asking the sentinels when none is known yet.
    pub(super) async fn master(&self) -> Result<(u64, redis::Client), RedisError> {
        if let Ok(named) = self.named.lock() {
            if let Some(client) = &named.client {
                return Ok((named.generation, client.clone()));
            }
        }
        self.ask().await
    }

    /// Asks the sentinels which server is the master now; returns it with its
    /// generation. A question answered less than [`REASK_GAP`] ago is not asked again.
    pub(super) async fn ask(&self) -> Result<(u64, redis::Client), RedisError> {
        let fresh = |named: &Named| {
            named
                .asked
                .filter(|at| at.elapsed() < REASK_GAP)
                .and(named.client.clone())
                .map(|client| (named.generation, client))
        };
        let question = async {
            let mut sentinel = self.client.lock().await;
            // Another caller may have asked while this one waited for the lock.
            if let Some(answer) = self.named.lock().ok().as_deref().and_then(fresh) {
                return Ok(answer);
            }
            let client = sentinel.async_get_client().await?;
            let address = client.get_connection_info().addr().to_string();
            let mut named = self
                .named
                .lock()
                .map_err(|_| RedisError::from((redis::ErrorKind::Client, "poisoned lock")))?;
            if named.client.is_none() || named.address != address {
                if named.client.is_some() {
                    tracing::warn!(master = %address, "redis sentinels name a new master");
                } else {
                    tracing::info!(master = %address, "redis sentinels name the master");
                }
                named.generation += 1;
                named.address = address;
            }
            named.client = Some(client.clone());
            named.asked = Some(Instant::now());
            Ok((named.generation, client))
        };
        match tokio::time::timeout(self.deadline, question).await {
            Ok(answer) => answer,
            Err(_) => Err(timed_out()),
        }
    }
}
