//! What rate limiting costs a request: the client-IP choice and one keyed GCRA check,
//! for one hot client and spread over 100 000 clients (more keys, colder cache).

use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use cloakroom::config::{Rate, RateLimitsConfig};
use cloakroom::rate_limit::{client_ip, RateLimits};
use criterion::{criterion_group, criterion_main, Criterion};

fn rate_limit(c: &mut Criterion) {
    let Some(count) = NonZeroU32::new(u32::MAX) else {
        return;
    };
    let rate = Some(Rate {
        count,
        per: Duration::from_secs(1),
    });
    let limits = RateLimits::new(RateLimitsConfig {
        per_ip: rate,
        ..RateLimitsConfig::default()
    });
    let headers = http::HeaderMap::new();
    let peer: IpAddr = [192, 0, 2, 7].into();
    let mut group = c.benchmark_group("rate_limit");
    group.bench_function("per_ip_one_client", |b| {
        b.iter(|| {
            let ip = client_ip(black_box(peer), &headers, &[]);
            limits.check_ip(ip)
        })
    });
    let mut i = 0u32;
    group.bench_function("per_ip_100k_clients", |b| {
        b.iter(|| {
            i = (i + 1) % 100_000;
            let ip: IpAddr = (0x0a00_0000 + i).to_be_bytes().into();
            limits.check_ip(client_ip(black_box(ip), &headers, &[]))
        })
    });
    group.finish();
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
