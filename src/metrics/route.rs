//! The per-route handles one runtime generation uses on the request path
//! ([`RequestMetrics`]): each route's status counters, latency histogram and refusal
//! counters, resolved once when the runtime is built; and their counts, read by the
//! status page's sampler.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{
    Metrics, RefusedLabels, RequestLabels, RouteLabel, Timing, UpstreamLabel, BUCKET_COUNT,
};
use crate::config::{Config, HostPattern, RouteConfig};

/// Statuses a route's counter table covers directly (100..=599).
const STATUS_SLOTS: usize = 500;

/// One route's pre-resolved handles, built with the runtime.
#[derive(Debug)]
pub struct RouteMetrics {
    label: Arc<str>,
    /// `cloakroom_requests_total{route, status}` by `status - 100`, filled on first use.
    statuses: Box<[OnceLock<Counter>]>,
    duration: Timing,
    /// `cloakroom_refused_total{route, reason}` handles, filled on first refusal (a
    /// refused request takes this lock; answered ones never do).
    refused: Mutex<Vec<(&'static str, Counter)>>,
}

/// Cumulative counts of one route, as the status page's sampler reads them.
#[derive(Debug, Clone, Default)]
pub struct RouteCounts {
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub classes: [u64; 5],
    /// Request latency histogram (not cumulative per bucket).
    pub buckets: [u64; BUCKET_COUNT],
    /// Refusals by reason.
    pub refused: Vec<(&'static str, u64)>,
}

impl RouteMetrics {
    fn new(metrics: &Metrics, label: Arc<str>) -> RouteMetrics {
        let duration = metrics.request_duration.get_or_create_owned(&RouteLabel {
            route: label.clone(),
        });
        RouteMetrics {
            label,
            statuses: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            duration,
            refused: Mutex::new(Vec::new()),
        }
    }

    /// Counts one refusal of this route.
    fn refused(&self, family: &Family<RefusedLabels, Counter>, reason: &'static str) {
        let mut handles = crate::lock(&self.refused);
        if let Some((_, counter)) = handles.iter().find(|(r, _)| *r == reason) {
            counter.inc();
            return;
        }
        let counter = family.get_or_create_owned(&RefusedLabels {
            route: self.label.clone(),
            reason,
        });
        counter.inc();
        handles.push((reason, counter));
    }

    /// The counts so far (status slots not used yet by this generation read 0).
    fn counts(&self) -> RouteCounts {
        let mut classes = [0u64; 5];
        for (index, slot) in self.statuses.iter().enumerate() {
            if let (Some(counter), Some(class)) = (slot.get(), classes.get_mut(index / 100)) {
                *class += counter.get();
            }
        }
        RouteCounts {
            classes,
            buckets: self.duration.buckets(),
            refused: crate::lock(&self.refused)
                .iter()
                .map(|(reason, counter)| (*reason, counter.get()))
                .collect(),
        }
    }

    /// Counts one answered request.
    fn answered(&self, family: &Family<RequestLabels, Counter>, status: u16, elapsed: Duration) {
        let slot = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.statuses.get(i));
        let labels = || RequestLabels {
            route: self.label.clone(),
            status,
        };
        match slot {
            Some(slot) => slot
                .get_or_init(|| family.get_or_create_owned(&labels()))
                .inc(),
            None => family.get_or_create(&labels()).inc(),
        };
        self.duration.observe(elapsed);
    }
}

/// The handles one runtime generation uses on the request path.
#[derive(Debug)]
pub struct RequestMetrics {
    metrics: Arc<Metrics>,
    /// Indexed like `config.routes`.
    routes: Vec<RouteMetrics>,
    /// Requests that matched no route (or failed before routing): `route=""`.
    unrouted: RouteMetrics,
    /// Indexed like `config.upstreams`.
    upstream_duration: Vec<Timing>,
    repins: Vec<Counter>,
}

impl RequestMetrics {
    /// Resolves every handle `config` needs.
    pub fn new(metrics: &Arc<Metrics>, config: &Config) -> RequestMetrics {
        let upstream = |u: &crate::config::UpstreamConfig| UpstreamLabel {
            upstream: u.name.clone(),
        };
        RequestMetrics {
            routes: config
                .routes
                .iter()
                .map(|r| RouteMetrics::new(metrics, route_label(r).into()))
                .collect(),
            unrouted: RouteMetrics::new(metrics, "".into()),
            upstream_duration: config
                .upstreams
                .iter()
                .map(|u| metrics.upstream_duration.get_or_create_owned(&upstream(u)))
                .collect(),
            repins: config
                .upstreams
                .iter()
                .map(|u| metrics.repins.get_or_create_owned(&upstream(u)))
                .collect(),
            metrics: metrics.clone(),
        }
    }

    /// The process-wide metrics.
    pub fn all(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts an answered request of route `route` (index; `None`: unrouted).
    pub fn answered(&self, route: Option<usize>, status: u16, elapsed: Duration) {
        let handles = route
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.unrouted);
        handles.answered(&self.metrics.requests, status, elapsed);
    }

    /// Counts a request of route `route` (index; `None`: unrouted) that the proxy
    /// refused itself for `reason`.
    pub fn refused(&self, route: Option<usize>, reason: &'static str) {
        let handles = route
            .and_then(|i| self.routes.get(i))
            .unwrap_or(&self.unrouted);
        handles.refused(&self.metrics.refused, reason);
    }

    /// The counts of each route, indexed like `config.routes`, then the unrouted ones.
    pub fn route_counts(&self) -> impl Iterator<Item = RouteCounts> + '_ {
        self.routes
            .iter()
            .chain(std::iter::once(&self.unrouted))
            .map(RouteMetrics::counts)
    }

    /// Records the response-head latency of upstream `upstream` (index).
    pub fn upstream_answered(&self, upstream: usize, elapsed: Duration) {
        if let Some(timing) = self.upstream_duration.get(upstream) {
            timing.observe(elapsed);
        }
    }

    /// Counts a re-pin in upstream `upstream` (index).
    pub fn repinned(&self, upstream: usize) {
        if let Some(counter) = self.repins.get(upstream) {
            counter.inc();
        }
    }
}

/// A route as metrics and logs name it: `host` + `path` (`app.example.com/api`,
/// `*.example.com/`, or just `/api` for any host).
pub fn route_label(route: &RouteConfig) -> String {
    match &route.host {
        Some(HostPattern::Exact(host)) => format!("{host}{}", route.path),
        Some(HostPattern::Suffix(suffix)) => format!("*{suffix}{}", route.path),
        None => route.path.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_status_counters_are_resolved_once_and_shared() {
        let metrics = Arc::new(Metrics::new());
        let label: Arc<str> = "/".into();
        let route = RouteMetrics::new(&metrics, label.clone());
        route.answered(&metrics.requests, 200, Duration::from_millis(1));
        route.answered(&metrics.requests, 200, Duration::from_millis(1));
        route.answered(&metrics.requests, 999, Duration::from_millis(1));
        let count = |status| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: label.clone(),
                    status,
                })
                .get()
        };
        assert_eq!((count(200), count(999)), (2, 1));
    }
}
