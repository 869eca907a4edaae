//! What a hijack-signal check costs a request on a session route: fingerprinting the
//! User-Agent family and the network, and comparing with the session's.

use std::hint::black_box;
use std::net::IpAddr;

use cloakroom::anomaly::{compare, origin, origin_cached, AgentCache};
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderValue;

fn anomaly(c: &mut Criterion) {
    let chrome = HeaderValue::from_static("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36");
    let safari = HeaderValue::from_static("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1");
    let ip: IpAddr = [203, 0, 113, 9].into();
    let then = origin(Some(&chrome), ip);
    let mut group = c.benchmark_group("anomaly");
    group.bench_function("check_chrome", |b| {
        b.iter(|| compare(then, origin(Some(black_box(&chrome)), black_box(ip))))
    });
    group.bench_function("check_safari", |b| {
        b.iter(|| compare(then, origin(Some(black_box(&safari)), black_box(ip))))
    });
    let cache = AgentCache::default();
    group.bench_function("check_chrome_cached", |b| {
        b.iter(|| {
            compare(
                then,
                origin_cached(&cache, Some(black_box(&chrome)), black_box(ip)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, anomaly);
criterion_main!(benches);
