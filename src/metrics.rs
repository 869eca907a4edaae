//! Every metric the proxy exports, declared here; each doc comment is the help text
//! served at `/metrics` (Prometheus / OpenMetrics text, through `prometheus-client`).
//!
//! Request-path cost: a request touches pre-resolved handles only (no label hashing, no
//! lock): its route's handles ([`route`]) are found by index in the runtime, the status
//! counter by code in a lazily filled table, and the latency histograms are plain
//! atomics ([`Timing`]). Values that are cheap to read at scrape time (sessions in the
//! store, server health, requests in flight, open connections) are read then, never
//! counted on the request path.
//!
//! Per-server counts for the status page live in [`server::ServerStats`] (in each
//! server's `BackendState`): two or three relaxed adds per attempt, no lock.
//!
//! Metrics are counted only when the admin listener is configured (nothing could read
//! them otherwise); `Runtime::metrics` is `None` then.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

mod route;
pub mod server;
pub use route::{route_label, RequestMetrics, RouteCounts};
pub use server::{CheckNote, HealthNote, ServerCounts, ServerStats};

/// `route` and `status` of `cloakroom_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<str>,
    pub status: u16,
}

/// `route` of the request latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<str>,
}

/// `upstream` of per-upstream metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

/// `upstream` and `server` of per-server gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub upstream: String,
    pub server: String,
}

/// `route` and `reason` of refused requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub route: Arc<str>,
    pub reason: &'static str,
}

/// `reason` of ended sessions.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// `op` of store metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// `result` of config reloads.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// `version` of the build-info gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Upper bounds (seconds) of the latency histograms: 0.5 ms to 30 s.
pub(crate) const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Buckets of a [`Timing`], `+Inf` included.
pub const BUCKET_COUNT: usize = BUCKETS.len() + 1;

/// A latency histogram made of atomics: one observation is two relaxed adds (its
/// bucket and the sum), no lock. `prometheus-client`'s own histogram takes a mutex.
#[derive(Debug, Clone, Default)]
pub struct Timing(Arc<TimingInner>);

#[derive(Debug, Default)]
struct TimingInner {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Timing {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        if let Some(bucket) = self.0.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations per bucket so far (not cumulative; the last is `+Inf`).
    pub fn buckets(&self) -> [u64; BUCKET_COUNT] {
        let mut out = [0u64; BUCKET_COUNT];
        for (slot, bucket) in out.iter_mut().zip(self.0.buckets.iter()) {
            *slot = bucket.load(Ordering::Relaxed);
        }
        out
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Timing {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Timing {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        #[allow(clippy::cast_precision_loss)]
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// `cloakroom_log_dropped_total`: read from the log writer at scrape time (the log is
/// process-wide, see [`crate::log`]).
#[derive(Debug)]
struct LogDropped;

impl TypedMetric for LogDropped {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for LogDropped {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&crate::log::dropped_lines(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Every metric of the process. Lives in `AppState`; survives reloads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the request head to the response head, by route.
    pub request_duration: Family<RouteLabel, Timing>,
    /// Time from sending to an upstream to its response head, by upstream.
    pub upstream_duration: Family<UpstreamLabel, Timing>,
    /// New sessions stored.
    pub sessions_created: Counter,
    /// Session ids regenerated (login, role change).
    pub sessions_regenerated: Counter,
    /// Sessions ended, by reason.
    pub sessions_ended: Family<ReasonLabel, Counter>,
    /// Live sessions in the store (read at scrape time).
    pub sessions_active: Gauge,
    /// 1 when a server takes requests, 0 when it is down (read at scrape time).
    pub upstream_up: Family<ServerLabels, Gauge>,
    /// Requests sent to a server and not answered in full (read at scrape time).
    pub upstream_in_flight: Family<ServerLabels, Gauge>,
    /// Requests refused by the proxy itself, by route and reason.
    pub refused: Family<RefusedLabels, Counter>,
    /// Open client connections: counted by the accept loops, exported at scrape time.
    pub open_connections: Arc<AtomicUsize>,
    connections_open: Gauge,
    /// Open tunnels (WebSocket and other upgrades); each also counts as a connection.
    pub tunnels_open: Gauge,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Sessions moved to another server because theirs went away, by upstream.
    pub repins: Family<UpstreamLabel, Counter>,
    /// Latency of session store operations, by operation.
    pub store_duration: Family<OpLabel, Timing>,
    /// Failed or timed-out session store operations, by operation.
    pub store_errors: Family<OpLabel, Counter>,
    /// Config reloads, by result (`ok`, `failed`).
    pub reloads: Family<ResultLabel, Counter>,
    /// Pre-resolved store handles, by operation.
    pub store: StoreMetrics,
    /// ACME orders, by result (`ok`, `failed`).
    pub acme_orders: Family<ResultLabel, Counter>,
    /// Expiry (Unix seconds) of each ACME certificate, by domain.
    pub acme_expiry: Family<DomainLabel, Gauge>,
    /// The last config reload (for the status page).
    last_reload: Mutex<Option<ReloadNote>>,
}

/// `domain` of the ACME certificate expiry gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    pub domain: String,
}

/// When the last reload ran and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadNote {
    pub at_ms: u64,
    pub ok: bool,
    /// The new generation, when it went live.
    pub generation: Option<u64>,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The session store operations that are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Load,
    Create,
    Save,
    Regenerate,
    Destroy,
    Admin,
}

impl StoreOp {
    const ALL: [StoreOp; 6] = [
        StoreOp::Load,
        StoreOp::Create,
        StoreOp::Save,
        StoreOp::Regenerate,
        StoreOp::Destroy,
        StoreOp::Admin,
    ];

    /// The `op` label.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Create => "create",
            StoreOp::Save => "save",
            StoreOp::Regenerate => "regenerate",
            StoreOp::Destroy => "destroy",
            StoreOp::Admin => "admin",
        }
    }
}

/// Latency histogram and error counter of each [`StoreOp`], resolved once.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Indexed like `StoreOp::ALL`.
    ops: Vec<(Timing, Counter)>,
}

impl StoreMetrics {
    /// Records one operation; `ok = false` also counts an error.
    pub fn record(&self, op: StoreOp, elapsed: Duration, ok: bool) {
        if let Some((timing, errors)) = self.ops.get(op as usize) {
            timing.observe(elapsed);
            if !ok {
                errors.inc();
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `cloakroom_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cloakroom");
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::default(),
            upstream_duration: Family::default(),
            sessions_created: Counter::default(),
            sessions_regenerated: Counter::default(),
            sessions_ended: Family::default(),
            sessions_active: Gauge::default(),
            upstream_up: Family::default(),
            upstream_in_flight: Family::default(),
            refused: Family::default(),
            open_connections: Arc::default(),
            connections_open: Gauge::default(),
            tunnels_open: Gauge::default(),
            tls_handshake_failures: Counter::default(),
            repins: Family::default(),
            store_duration: Family::default(),
            store_errors: Family::default(),
            reloads: Family::default(),
            store: StoreMetrics::default(),
            acme_orders: Family::default(),
            acme_expiry: Family::default(),
            last_reload: Mutex::new(None),
        };
        let store = StoreMetrics {
            ops: StoreOp::ALL
                .iter()
                .map(|op| {
                    let label = OpLabel { op: op.name() };
                    (
                        m.store_duration.get_or_create_owned(&label),
                        m.store_errors.get_or_create_owned(&label),
                    )
                })
                .collect(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests answered, by route and status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from the request head to the response head, by route",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register_with_unit(
            "upstream_duration",
            "Time from sending a request to an upstream server to its response head",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register(
            "sessions_created",
            "New sessions stored",
            m.sessions_created.clone(),
        );
        r.register(
            "sessions_regenerated",
            "Session ids regenerated (login, role change)",
            m.sessions_regenerated.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by reason (logout, admin, idle, absolute, evicted, anomaly)",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_active",
            "Live sessions in the store",
            m.sessions_active.clone(),
        );
        r.register(
            "upstream_up",
            "1 when the server takes requests, 0 when it is marked down",
            m.upstream_up.clone(),
        );
        r.register(
            "upstream_in_flight",
            "Requests sent to the server and not yet answered in full",
            m.upstream_in_flight.clone(),
        );
        r.register(
            "refused",
            "Requests refused by the proxy itself, by route and reason",
            m.refused.clone(),
        );
        r.register(
            "connections_open",
            "Open client connections",
            m.connections_open.clone(),
        );
        r.register(
            "tunnels_open",
            "Open tunnels (WebSocket and other upgrades)",
            m.tunnels_open.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "repins",
            "Sessions moved to another server because theirs was down, by upstream",
            m.repins.clone(),
        );
        r.register_with_unit(
            "store_duration",
            "Latency of session store operations, by operation",
            Unit::Seconds,
            m.store_duration.clone(),
        );
        r.register(
            "store_errors",
            "Failed or timed-out session store operations, by operation",
            m.store_errors.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by result (ok, failed)",
            m.reloads.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders, by result (ok, failed)",
            m.acme_orders.clone(),
        );
        r.register(
            "acme_certificate_expiry_timestamp_seconds",
            "When each ACME certificate expires (Unix time), by domain",
            m.acme_expiry.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Always 1; labels name the build", build);
        r.register(
            "log_dropped",
            "Log lines dropped because the queue to the log writer was full (stderr too slow)",
            LogDropped,
        );
        Metrics {
            registry,
            store,
            ..m
        }
    }

    /// Counts a session that ended for `reason`.
    pub fn session_ended(&self, reason: &'static str, count: u64) {
        if count > 0 {
            self.sessions_ended
                .get_or_create(&ReasonLabel { reason })
                .inc_by(count);
        }
    }

    /// Counts a config reload (`Ok`: the generation now live; `Err`: why it was
    /// refused) and keeps it as the last one.
    pub fn reloaded(&self, result: Result<u64, String>) {
        let ok = result.is_ok();
        let result_label = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result_label,
            })
            .inc();
        *crate::lock(&self.last_reload) = Some(ReloadNote {
            at_ms: crate::clock::unix_ms(),
            ok,
            generation: result.as_ref().ok().copied(),
            error: result.err(),
        });
    }

    /// Counts an ACME order that ended (`ok` true: a certificate was issued).
    pub fn acme_ordered(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.acme_orders
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Records when the ACME certificate of `domains` expires (Unix seconds).
    pub fn acme_expires(&self, domains: &[String], not_after: i64) {
        for domain in domains {
            self.acme_expiry
                .get_or_create(&DomainLabel {
                    domain: domain.clone(),
                })
                .set(not_after);
        }
    }

    /// The last config reload, if any ran.
    pub fn last_reload(&self) -> Option<ReloadNote> {
        crate::lock(&self.last_reload).clone()
    }

    /// The OpenMetrics text of every metric, after refreshing the scrape-time gauges
    /// from `config`'s servers (`servers`: `(upstream, server, up, in_flight)`).
    pub fn render(
        &self,
        sessions: Option<usize>,
        servers: impl Iterator<Item = (String, String, bool, usize)>,
    ) -> String {
        if let Some(sessions) = sessions {
            self.sessions_active
                .set(i64::try_from(sessions).unwrap_or(i64::MAX));
        }
        let open = self.open_connections.load(Ordering::Relaxed);
        self.connections_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        // Servers removed by a reload disappear from the output.
        self.upstream_up.clear();
        self.upstream_in_flight.clear();
        for (upstream, server, up, in_flight) in servers {
            let labels = ServerLabels { upstream, server };
            self.upstream_up.get_or_create(&labels).set(i64::from(up));
            self.upstream_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        }
        let mut text = String::with_capacity(8192);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_buckets_and_sum_render_as_a_histogram() {
        let metrics = Metrics::new();
        let t = metrics
            .store_duration
            .get_or_create_owned(&OpLabel { op: "load" });
        t.observe(Duration::from_micros(300));
        t.observe(Duration::from_millis(3));
        t.observe(Duration::from_secs(60));
        assert_eq!(t.count(), 3);
        let text = metrics.render(Some(7), std::iter::empty());
        assert!(
            text.contains("cloakroom_store_duration_seconds_count{op=\"load\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("cloakroom_store_duration_seconds_bucket{le=\"0.0005\",op=\"load\"} 1")
                || text.contains(
                    "cloakroom_store_duration_seconds_bucket{op=\"load\",le=\"0.0005\"} 1"
                ),
            "{text}"
        );
        assert!(text.contains("le=\"+Inf\""), "{text}");
        assert!(text.contains("cloakroom_sessions_active 7"), "{text}");
        assert!(text.contains("cloakroom_build_info{version="), "{text}");
        assert!(text.contains("cloakroom_log_dropped_total 0"), "{text}");
    }
}
