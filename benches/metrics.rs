//! What do metrics cost per request?
//!
//! The request path's metric work, through the public API: counting an answered
//! request of a route (its pre-resolved status counter and the latency histogram),
//! recording the upstream latency, both together as one request does, and the
//! label-hashing `Family::get_or_create` lookup that the pre-resolved handles avoid.
//! Run on one thread (each worker is one thread), and with two threads hitting the
//! same counters, as two workers do.
//!
//! `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use cloakroom::config::Config;
use cloakroom::metrics::{Metrics, RequestLabels, RequestMetrics};

const CONFIG: &str = r#"
[listen]
admin = "127.0.0.1:9901"
[tls]
cert = "Cargo.toml"
key = "Cargo.toml"
[upstreams.app]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
[[routes]]
path = "/"
upstream = "app"
[[routes]]
path = "/api"
upstream = "app"
"#;

fn handles() -> (Arc<Metrics>, RequestMetrics) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let config = Config::from_str_with_env(&path, CONFIG, &|_| None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let request = RequestMetrics::new(&metrics, &config);
    (metrics, request)
}

fn bench(c: &mut Criterion) {
    let (metrics, request) = handles();
    let elapsed = Duration::from_micros(850);
    c.bench_function("answered (route counter + latency histogram)", |b| {
        b.iter(|| request.answered(black_box(Some(1)), black_box(200), black_box(elapsed)))
    });
    c.bench_function("one request (answered + upstream latency)", |b| {
        b.iter(|| {
            request.upstream_answered(black_box(0), black_box(elapsed));
            request.answered(black_box(Some(1)), black_box(200), black_box(elapsed));
        })
    });
    let label: Arc<str> = "/api".into();
    c.bench_function("avoided: Family::get_or_create(route, status).inc()", |b| {
        b.iter(|| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    route: label.clone(),
                    status: black_box(200),
                })
                .inc();
        })
    });
    let request = Arc::new(request);
    c.bench_function("one request, two threads on the same counters", |b| {
        b.iter_custom(|iters| {
            let other = {
                let request = request.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        request.upstream_answered(0, elapsed);
                        request.answered(Some(1), 200, elapsed);
                    }
                })
            };
            let start = std::time::Instant::now();
            for _ in 0..iters {
                request.upstream_answered(black_box(0), black_box(elapsed));
                request.answered(black_box(Some(1)), black_box(200), black_box(elapsed));
            }
            let spent = start.elapsed();
            other.join().unwrap();
            spent
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
