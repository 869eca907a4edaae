//! The sampler: once a second it reads the counters that already exist (routes,
//! servers, sessions, the store) and keeps what the page shows: the last ten minutes of
//! totals in a [`Ring`] (the sparklines), and short windows of each route's and
//! server's cumulative counts from which rates and latency quantiles are computed.
//!
//! It runs on the admin listener's task, never on the request path; memory is bounded
//! by the rings' capacities times the configured routes and servers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ring::Ring;
use crate::config::StoreKind;
use crate::metrics::{
    CheckNote, OpLabel, ReasonLabel, ReloadNote, RouteCounts, ServerCounts, StoreOp, BUCKETS,
    BUCKET_COUNT,
};
use crate::state::AppState;

/// Seconds of history behind the sparklines.
pub(crate) const HISTORY: usize = 600;
/// Seconds over which rates, error rates and latency quantiles are computed.
const RATE_WINDOW: usize = 10;
/// Seconds over which per-minute counts (statuses, refusals, sessions) are taken.
const MINUTE: usize = 60;
/// How long a store count (the store's health probe) may take.
const STORE_PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// Reasons a session ends for, as `cloakroom_sessions_ended_total` labels them.
const END_REASONS: [&str; 7] = [
    "logout", "admin", "expired", "idle", "absolute", "evicted", "anomaly",
];

/// One second of the sparklines.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Point {
    pub(crate) at_ms: u64,
    pub(crate) requests: f64,
    pub(crate) errors: f64,
    /// p99 of the requests answered in that second, ms.
    pub(crate) p99_ms: Option<f64>,
    pub(crate) sessions: Option<u64>,
}

/// Process-wide cumulative counts, one per second.
#[derive(Debug, Clone, Default)]
struct Totals {
    created: u64,
    ended: [u64; END_REASONS.len()],
    store_errors: u64,
    store_load: [u64; BUCKET_COUNT],
}

/// What the page and `/status.json` show, built once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Snapshot {
    pub(crate) at_ms: u64,
    pub(crate) proxy: ProxyView,
    pub(crate) upstreams: Vec<UpstreamView>,
    pub(crate) routes: Vec<RouteView>,
    pub(crate) sessions: SessionsView,
    /// The last ten minutes, one point a second, oldest first.
    pub(crate) series: Vec<Point>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ProxyView {
    pub(crate) version: &'static str,
    pub(crate) uptime_s: u64,
    pub(crate) generation: u64,
    pub(crate) reload: Option<ReloadNote>,
    pub(crate) warnings: Vec<String>,
    pub(crate) connections: u64,
    pub(crate) tunnels: i64,
    pub(crate) token_required: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct UpstreamView {
    pub(crate) name: String,
    pub(crate) balance: String,
    pub(crate) affinity: String,
    pub(crate) health_checked: bool,
    pub(crate) servers: Vec<ServerView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerView {
    pub(crate) name: String,
    pub(crate) up: bool,
    pub(crate) draining: bool,
    pub(crate) in_flight: usize,
    /// Attempts per second over the last ten seconds.
    pub(crate) rps: f64,
    /// Share of attempts that failed or got a 5xx, over the last ten seconds.
    pub(crate) error_rate: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) requests_total: u64,
    pub(crate) changed_ms: Option<u64>,
    pub(crate) down_reason: Option<String>,
    pub(crate) check: Option<CheckNote>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RouteView {
    pub(crate) name: String,
    pub(crate) upstream: String,
    /// Requests per second over the last ten seconds.
    pub(crate) rps: f64,
    /// Answers in the last minute by class: 1xx .. 5xx.
    pub(crate) classes: [u64; 5],
    pub(crate) p99_ms: Option<f64>,
    /// Refusals in the last minute, by reason.
    pub(crate) refused: Vec<(&'static str, u64)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SessionsView {
    pub(crate) store: &'static str,
    /// Live sessions (`None`: the store keeps none server-side, or did not answer).
    pub(crate) live: Option<u64>,
    pub(crate) created_per_min: u64,
    pub(crate) ended_per_min: Vec<(&'static str, u64)>,
    /// The last store probe: `None` when there is no store to ask.
    pub(crate) store_ok: Option<bool>,
    pub(crate) store_error: Option<String>,
    pub(crate) store_probe_ms: Option<f64>,
    pub(crate) store_load_p99_ms: Option<f64>,
    pub(crate) store_errors_per_min: u64,
}

/// The sampler's memory between ticks.
#[derive(Debug)]
pub(crate) struct Sampler {
    started: Instant,
    history: Ring<Point>,
    totals: Ring<Totals>,
    /// Sum of every route's counts, one per second (for the sparklines).
    traffic: Ring<RouteCounts>,
    routes: Vec<Ring<RouteCounts>>,
    servers: HashMap<(String, String), Ring<ServerCounts>>,
    generation: u64,
    /// Seconds until the next store count, and the last one's result.
    probe_in: u32,
    store: StoreProbe,
}

#[derive(Debug, Clone, Default)]
struct StoreProbe {
    live: Option<u64>,
    ok: Option<bool>,
    error: Option<String>,
    ms: Option<f64>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

impl Sampler {
    pub(crate) fn new() -> Sampler {
        Sampler {
            started: Instant::now(),
            history: Ring::new(HISTORY),
            totals: Ring::new(MINUTE + 1),
            traffic: Ring::new(2),
            routes: Vec::new(),
            servers: HashMap::new(),
            generation: 0,
            probe_in: 0,
            store: StoreProbe::default(),
        }
    }

    /// Takes one sample and builds the snapshot the page shows.
    pub(crate) async fn tick(&mut self, state: &AppState) -> Snapshot {
        self.probe_store(state).await;
        let runtime = state.runtime();
        let now_ms = crate::clock::unix_ms();
        let metrics = &state.metrics;

        // Routes: a new generation resolves new handles, so its windows start over.
        if runtime.generation != self.generation {
            self.generation = runtime.generation;
            self.routes.clear();
            self.traffic.clear();
        }
        let mut sum = RouteCounts::default();
        let mut routes = Vec::new();
        if let Some(request_metrics) = &runtime.metrics {
            for (index, counts) in request_metrics.route_counts().enumerate() {
                add_route(&mut sum, &counts);
                if self.routes.len() <= index {
                    self.routes.push(Ring::new(MINUTE + 1));
                }
                if let Some(ring) = self.routes.get_mut(index) {
                    ring.push(counts);
                }
            }
        }
        for (index, ring) in self.routes.iter().enumerate() {
            let config = runtime.config.routes.get(index);
            let name = runtime
                .route_names
                .get(index)
                .map_or("(no route)", |n| &**n)
                .to_string();
            let upstream = config
                .and_then(|r| runtime.upstreams.get(r.upstream))
                .map(|p| p.name.clone())
                .unwrap_or_default();
            let view = route_view(ring, name, upstream);
            // The unrouted row only when something landed there.
            if config.is_some() || view.classes.iter().sum::<u64>() > 0 || !view.refused.is_empty()
            {
                routes.push(view);
            }
        }
        self.traffic.push(sum);

        // Servers.
        let mut upstreams = Vec::new();
        let mut seen = Vec::new();
        for pool in &runtime.upstreams {
            let mut servers = Vec::new();
            for backend in &pool.backends {
                let key = (pool.name.clone(), backend.name.to_string());
                let ring = self
                    .servers
                    .entry(key.clone())
                    .or_insert_with(|| Ring::new(RATE_WINDOW + 1));
                ring.push(backend.state.stats.counts());
                seen.push(key);
                let note = backend.state.stats.note();
                let (rps, error_rate, p50_ms, p99_ms) = server_rates(ring);
                servers.push(ServerView {
                    name: backend.name.to_string(),
                    up: backend.state.is_healthy(),
                    draining: backend.drain,
                    in_flight: backend
                        .state
                        .in_flight
                        .load(std::sync::atomic::Ordering::Relaxed),
                    rps,
                    error_rate,
                    p50_ms,
                    p99_ms,
                    requests_total: ring.last().map_or(0, |c| c.requests),
                    changed_ms: note.changed_ms,
                    down_reason: note.down_reason,
                    check: note.check,
                });
            }
            upstreams.push(UpstreamView {
                name: pool.name.clone(),
                balance: format!("{:?}", pool.balance).to_lowercase(),
                affinity: format!("{:?}", pool.affinity).to_lowercase(),
                health_checked: pool.health.is_some(),
                servers,
            });
        }
        self.servers.retain(|key, _| seen.contains(key));

        // Sessions and the store.
        let totals = self.read_totals(state);
        self.totals.push(totals);
        let sessions = self.sessions_view(state);

        // The sparklines' point for this second.
        let point = match (self.traffic.back(0), self.traffic.back(1)) {
            (Some(now), Some(before)) => {
                let classes = diff(&now.classes, &before.classes);
                let buckets = diff(&now.buckets, &before.buckets);
                Point {
                    at_ms: now_ms,
                    #[allow(clippy::cast_precision_loss)]
                    requests: classes.iter().sum::<u64>() as f64,
                    #[allow(clippy::cast_precision_loss)]
                    errors: classes.get(4).copied().unwrap_or(0) as f64,
                    p99_ms: quantile_ms(&buckets, 0.99),
                    sessions: self.store.live,
                }
            }
            _ => Point {
                at_ms: now_ms,
                sessions: self.store.live,
                ..Point::default()
            },
        };
        self.history.push(point);

        Snapshot {
            at_ms: now_ms,
            proxy: ProxyView {
                version: env!("CARGO_PKG_VERSION"),
                uptime_s: self.started.elapsed().as_secs(),
                generation: runtime.generation,
                reload: metrics.last_reload(),
                warnings: runtime
                    .config
                    .warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                connections: metrics
                    .open_connections
                    .load(std::sync::atomic::Ordering::Relaxed) as u64,
                tunnels: metrics.tunnels_open.get(),
                token_required: runtime.config.listen.admin_token.is_some(),
            },
            upstreams,
            routes,
            sessions,
            series: self.history.iter().copied().collect(),
        }
    }

    /// Counts the sessions in the store (every second for the memory store, every ten
    /// for a remote one, where a count is a scan): its answer is also the store's
    /// health probe.
    async fn probe_store(&mut self, state: &AppState) {
        if self.probe_in > 0 {
            self.probe_in -= 1;
            return;
        }
        let Some(index) = &state.index else {
            self.store = StoreProbe::default();
            return;
        };
        let memory = matches!(state.runtime().config.session.store, StoreKind::Memory);
        self.probe_in = if memory { 0 } else { 9 };
        let started = Instant::now();
        let answer = tokio::time::timeout(STORE_PROBE_DEADLINE, index.count()).await;
        let ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        self.store = match answer {
            Ok(Ok(count)) => StoreProbe {
                live: Some(count as u64),
                ok: Some(true),
                error: None,
                ms,
            },
            Ok(Err(error)) => StoreProbe {
                live: None,
                ok: Some(false),
                error: Some(crate::error_chain::display_chain(&error).to_string()),
                ms,
            },
            Err(_) => StoreProbe {
                live: None,
                ok: Some(false),
                error: Some(format!("no answer within {STORE_PROBE_DEADLINE:?}")),
                ms,
            },
        };
    }

    fn read_totals(&self, state: &AppState) -> Totals {
        let metrics = &state.metrics;
        let mut ended = [0u64; END_REASONS.len()];
        for (slot, reason) in ended.iter_mut().zip(END_REASONS) {
            *slot = metrics
                .sessions_ended
                .get_or_create(&ReasonLabel { reason })
                .get();
        }
        let store_errors = [
            StoreOp::Load,
            StoreOp::Create,
            StoreOp::Save,
            StoreOp::Regenerate,
            StoreOp::Destroy,
        ]
        .iter()
        .map(|op| {
            metrics
                .store_errors
                .get_or_create(&OpLabel { op: op.name() })
                .get()
        })
        .sum();
        let store_load = metrics
            .store_duration
            .get_or_create(&OpLabel {
                op: StoreOp::Load.name(),
            })
            .buckets();
        Totals {
            created: metrics.sessions_created.get(),
            ended,
            store_errors,
            store_load,
        }
    }

    fn sessions_view(&self, state: &AppState) -> SessionsView {
        let store = match state.runtime().config.session.store {
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
            StoreKind::Cookie => "cookie",
            StoreKind::Memcached(_) => "memcached",
            StoreKind::Postgres(_) => "postgres",
        };
        let (now, then) = window(&self.totals, MINUTE);
        let (created, ended, store_errors, load) = match (now, then) {
            (Some(now), Some(then)) => (
                now.created.saturating_sub(then.created),
                END_REASONS
                    .iter()
                    .zip(diff(&now.ended, &then.ended))
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (*r, n))
                    .collect(),
                now.store_errors.saturating_sub(then.store_errors),
                quantile_ms(&diff(&now.store_load, &then.store_load), 0.99),
            ),
            _ => (0, Vec::new(), 0, None),
        };
        SessionsView {
            store,
            live: self.store.live,
            created_per_min: created,
            ended_per_min: ended,
            store_ok: self.store.ok,
            store_error: self.store.error.clone(),
            store_probe_ms: self.store.ms,
            store_load_p99_ms: load,
            store_errors_per_min: store_errors,
        }
    }
}

/// The newest value and the one `secs` before it (or the oldest there is).
fn window<T>(ring: &Ring<T>, secs: usize) -> (Option<&T>, Option<&T>) {
    let back = secs.min(ring.len().saturating_sub(1));
    if back == 0 {
        return (ring.last(), None);
    }
    (ring.last(), ring.back(back))
}

/// Seconds between the newest value and the one `window` returns.
fn span<T>(ring: &Ring<T>, secs: usize) -> usize {
    secs.min(ring.len().saturating_sub(1))
}

fn diff<const N: usize>(now: &[u64; N], then: &[u64; N]) -> [u64; N] {
    let mut out = [0u64; N];
    for ((o, a), b) in out.iter_mut().zip(now).zip(then) {
        *o = a.saturating_sub(*b);
    }
    out
}

fn add_route(sum: &mut RouteCounts, counts: &RouteCounts) {
    for (s, c) in sum.classes.iter_mut().zip(counts.classes) {
        *s += c;
    }
    for (s, c) in sum.buckets.iter_mut().zip(counts.buckets) {
        *s += c;
    }
}

#[allow(clippy::cast_precision_loss)]
fn route_view(ring: &Ring<RouteCounts>, name: String, upstream: String) -> RouteView {
    let mut view = RouteView {
        name,
        upstream,
        ..RouteView::default()
    };
    let (Some(now), Some(minute_ago)) = window(ring, MINUTE) else {
        return view;
    };
    view.classes = diff(&now.classes, &minute_ago.classes);
    view.refused = now
        .refused
        .iter()
        .map(|(reason, n)| {
            let before = minute_ago
                .refused
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, n)| *n);
            (*reason, n.saturating_sub(before))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if let (Some(now), Some(then)) = window(ring, RATE_WINDOW) {
        let requests: u64 = diff(&now.classes, &then.classes).iter().sum();
        view.rps = requests as f64 / span(ring, RATE_WINDOW).max(1) as f64;
        view.p99_ms = quantile_ms(&diff(&now.buckets, &then.buckets), 0.99);
    }
    view
}

/// Requests/s, error rate, p50 and p99 of a server over its window.
#[allow(clippy::cast_precision_loss)]
fn server_rates(ring: &Ring<ServerCounts>) -> (f64, Option<f64>, Option<f64>, Option<f64>) {
    let (Some(now), Some(then)) = window(ring, RATE_WINDOW) else {
        return (0.0, None, None, None);
    };
    let requests = now.requests.saturating_sub(then.requests);
    let failures = now.failures.saturating_sub(then.failures);
    let buckets = diff(&now.buckets, &then.buckets);
    let rps = requests as f64 / span(ring, RATE_WINDOW).max(1) as f64;
    let error_rate = (requests > 0).then(|| failures as f64 / requests as f64);
    (
        rps,
        error_rate,
        quantile_ms(&buckets, 0.5),
        quantile_ms(&buckets, 0.99),
    )
}

/// The `q` quantile (0..1) of a histogram's bucket counts, in ms, interpolated
/// linearly inside its bucket; `None` without observations. The `+Inf` bucket reads as
/// its lower bound.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn quantile_ms(buckets: &[u64; BUCKET_COUNT], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    let last = BUCKETS.last().copied().unwrap_or(0.0);
    for (index, count) in buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let lower = index
                .checked_sub(1)
                .and_then(|i| BUCKETS.get(i))
                .copied()
                .unwrap_or(0.0);
            let upper = BUCKETS.get(index).copied().unwrap_or(last);
            let within = ((rank - seen as f64) / *count as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        seen += count;
    }
    Some(last * 1000.0)
}

/// Runs the sampler once a second until `stop` is raised, publishing each snapshot.
pub(crate) async fn run(
    state: Arc<AppState>,
    status: Arc<super::Status>,
    stop: Arc<crate::shutdown::Signal>,
) {
    let mut sampler = Sampler::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let snapshot = sampler.tick(&state).await;
        status.publish(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_that_holds_the_rank() {
        let mut b = [0u64; BUCKET_COUNT];
        assert_eq!(quantile_ms(&b, 0.99), None);
        // 100 observations in (1 ms, 2.5 ms].
        b[2] = 100;
        let p50 = quantile_ms(&b, 0.5).unwrap();
        assert!((1.0..=2.5).contains(&p50), "{p50}");
        // One slow one in (1 s, 2.5 s]: p99 stays fast, p100 is slow.
        b[11] = 1;
        assert!(quantile_ms(&b, 0.99).unwrap() <= 2.5);
        assert!(quantile_ms(&b, 1.0).unwrap() >= 1000.0);
    }

    #[test]
    fn server_rates_use_the_window() {
        let mut ring = Ring::new(RATE_WINDOW + 1);
        assert_eq!(server_rates(&ring).0, 0.0);
        for second in 0..=10u64 {
            let mut buckets = [0u64; BUCKET_COUNT];
            buckets[3] = second * 20;
            ring.push(ServerCounts {
                requests: second * 20,
                failures: second * 2,
                buckets,
            });
        }
        let (rps, error_rate, p50, p99) = server_rates(&ring);
        assert!((rps - 20.0).abs() < 1e-9, "{rps}");
        assert!((error_rate.unwrap() - 0.1).abs() < 1e-9);
        assert!(p50.unwrap() > 2.5 && p99.unwrap() <= 5.0);
    }
}
