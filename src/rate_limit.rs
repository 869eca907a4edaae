//! Rate limits: requests per client IP (`limits.per_ip`), per session
//! (`limits.per_session`) and sessions created per client IP
//! (`limits.new_sessions_per_ip`), each a keyed GCRA limiter (`governor`) whose burst is
//! the configured count. Over a limit the request gets 429 with `Retry-After` and is not
//! forwarded.
//!
//! The client IP is the peer address; only when the peer is one of
//! `listen.trusted_proxies` is the nearest untrusted `X-Forwarded-For` entry used. IPv6
//! clients are keyed by their /64 (one host owns a whole /64, so rotating addresses
//! within it gains nothing).
//!
//! Memory is bounded: a key exists only for a client that completed a TLS handshake;
//! a background task (tied to shutdown) removes every key whose limiter is back to full
//! every [`SWEEP_EVERY`], and past [`MAX_KEYS`] after a sweep a limiter is emptied
//! (logged) rather than allowed to grow.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderMap, HeaderName};

use crate::config::{Rate, RateLimitsConfig};
use crate::session::PublicId;
use crate::shutdown::Signal;

/// Read here, below the proxy layer that writes it (`proxy::headers`).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How often idle keys are removed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Most keys one limiter keeps after a sweep (about 40 bytes each).
pub const MAX_KEYS: usize = 1 << 20;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    PerIp,
    PerSession,
    NewSessionsPerIp,
}

impl Limit {
    /// The `limits.*` key, for logs.
    pub fn key(self) -> &'static str {
        match self {
            Limit::PerIp => "limits.per_ip",
            Limit::PerSession => "limits.per_session",
            Limit::NewSessionsPerIp => "limits.new_sessions_per_ip",
        }
    }
}

/// A refusal: which limit, and how long until a request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Duration,
}

/// One keyed limiter, replaceable whole when it outgrows [`MAX_KEYS`].
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    quota: Quota,
    limiter: ArcSwap<DefaultKeyedRateLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate) -> Keyed<K> {
        let quota = quota(rate);
        Keyed {
            quota,
            limiter: ArcSwap::from_pointee(DefaultKeyedRateLimiter::keyed(quota)),
        }
    }
}

/// The limiters of a config (kept across reloads while the rates stay the same).
pub struct RateLimits {
    rates: RateLimitsConfig,
    per_ip: Option<Keyed<IpAddr>>,
    per_session: Option<Keyed<PublicId>>,
    new_sessions: Option<Keyed<IpAddr>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

fn quota(rate: Rate) -> Quota {
    if rate.per == Duration::from_secs(60) {
        Quota::per_minute(rate.count)
    } else {
        Quota::per_second(rate.count)
    }
}

impl RateLimits {
    /// Limiters for `rates`.
    pub fn new(rates: RateLimitsConfig) -> RateLimits {
        RateLimits {
            rates,
            per_ip: rates.per_ip.map(Keyed::new),
            per_session: rates.per_session.map(Keyed::new),
            new_sessions: rates.new_sessions_per_ip.map(Keyed::new),
            clock: DefaultClock::default(),
        }
    }

    /// The rates these limiters enforce.
    pub fn rates(&self) -> RateLimitsConfig {
        self.rates
    }

    /// Counts one request from `ip` against `limits.per_ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check(self.per_ip.as_ref(), &key_of(ip), Limit::PerIp)
    }

    /// Counts one request of an existing session against `limits.per_session`.
    pub fn check_session(&self, id: &PublicId) -> Result<(), Refusal> {
        self.check(self.per_session.as_ref(), id, Limit::PerSession)
    }

    /// Counts one new session from `ip` against `limits.new_sessions_per_ip`.
    pub fn check_new_session(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check(
            self.new_sessions.as_ref(),
            &key_of(ip),
            Limit::NewSessionsPerIp,
        )
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: Option<&Keyed<K>>,
        key: &K,
        limit: Limit,
    ) -> Result<(), Refusal> {
        let Some(keyed) = limiter else {
            return Ok(());
        };
        keyed
            .limiter
            .load()
            .check_key(key)
            .map_err(|not_until| Refusal {
                limit,
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Removes idle keys; empties a limiter still over [`MAX_KEYS`]. Returns the keys
    /// kept.
    pub fn sweep(&self) -> usize {
        fn one<K: std::hash::Hash + Eq + Clone>(keyed: Option<&Keyed<K>>, limit: Limit) -> usize {
            let Some(keyed) = keyed else { return 0 };
            let limiter = keyed.limiter.load();
            limiter.retain_recent();
            limiter.shrink_to_fit();
            let len = limiter.len();
            if len > MAX_KEYS {
                tracing::warn!(
                    limit = limit.key(),
                    keys = len,
                    "rate limiter over its key bound after a sweep; starting it afresh"
                );
                keyed
                    .limiter
                    .store(Arc::new(DefaultKeyedRateLimiter::keyed(keyed.quota)));
                return 0;
            }
            len
        }
        one(self.per_ip.as_ref(), Limit::PerIp)
            + one(self.per_session.as_ref(), Limit::PerSession)
            + one(self.new_sessions.as_ref(), Limit::NewSessionsPerIp)
    }
}

/// IPv4 as is; IPv6 by its /64 (IPv4-mapped IPv6 as the IPv4 address).
fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut bytes = v6.octets();
                bytes[8..].fill(0);
                IpAddr::V6(bytes.into())
            }
        },
    }
}

/// The client's IP: the peer, unless the peer is a trusted proxy; then the nearest
/// `X-Forwarded-For` entry (walking from the right) that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let values: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(','))
        .map(str::trim)
        .map_while(|entry| entry.parse::<IpAddr>().ok())
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// Sweeps the current runtime's limiters every [`SWEEP_EVERY`] until shutdown.
/// `current` gives the running generation's limiters (they change on a reload).
pub(crate) async fn sweep(current: impl Fn() -> Arc<RateLimits>, stop: Arc<Signal>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let limits = current();
        if limits.rates().any() {
            let kept = limits.sweep();
            tracing::trace!(kept, "rate limiter keys swept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn rate(n: u32) -> Option<Rate> {
        Some(Rate {
            count: NonZeroU32::new(n).unwrap(),
            per: Duration::from_secs(60),
        })
    }

    #[test]
    fn a_burst_over_the_count_is_refused_with_a_retry_after() {
        let limits = RateLimits::new(RateLimitsConfig {
            per_ip: rate(3),
            ..RateLimitsConfig::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check_ip(ip).is_ok());
        }
        let refusal = limits.check_ip(ip).unwrap_err();
        assert_eq!(refusal.limit, Limit::PerIp);
        assert!(refusal.retry_after > Duration::from_secs(15), "{refusal:?}");
        assert!(limits.check_ip("192.0.2.2".parse().unwrap()).is_ok());
        assert!(limits.check_session(&PublicId([1; 16])).is_ok(), "off");
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let limits = RateLimits::new(RateLimitsConfig {
            per_ip: rate(1),
            ..RateLimitsConfig::default()
        });
        assert!(limits.check_ip("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(limits
            .check_ip("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_err());
        assert!(limits.check_ip("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn sweeping_removes_idle_keys() {
        let limits = RateLimits::new(RateLimitsConfig {
            per_ip: Some(Rate {
                count: NonZeroU32::new(1000).unwrap(),
                per: Duration::from_secs(1),
            }),
            ..RateLimitsConfig::default()
        });
        for i in 0..100u8 {
            assert!(limits.check_ip(IpAddr::from([10, 0, 0, i])).is_ok());
        }
        // 1000/s refills one request in a millisecond: idle keys go at a sweep soon.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while limits.sweep() > 0 {
            assert!(std::time::Instant::now() < deadline, "keys never swept");
            std::thread::yield_now();
        }
    }

    #[test]
    fn client_ip_believes_forwarded_for_only_from_trusted_proxies() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        headers.append("x-forwarded-for", "10.0.0.3".parse().unwrap());
        assert_eq!(client_ip(peer, &headers, &[]), peer);
        let trusted = ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &trusted), peer);
    }
}
