//! What one identity assertion costs a request: signing a fresh token (a new session
//! state, or a new connection) against taking the connection's cached one.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cloakroom::assertion::{generate_key, AssertionCache, Assertions};
use cloakroom::config::AssertionConfig;
use cloakroom::session::{Identity, PublicId, Session};
use criterion::{criterion_group, criterion_main, Criterion};

fn assertion(c: &mut Criterion) {
    let Ok(key) = generate_key() else { return };
    let config = AssertionConfig {
        header: http::HeaderName::from_static("x-session-assertion"),
        key: None,
        previous_public_keys: Vec::new(),
        ttl: Duration::from_secs(60),
    };
    let Ok(signer) = Assertions::new(&config, &key) else {
        return;
    };
    let mut session = Session::new(PublicId([7; 16]), 0);
    session.identity = Some(Arc::new(Identity {
        user: Some("alice@example.com".into()),
        roles: Some("admin,ops".into()),
    }));
    let mut group = c.benchmark_group("assertion");
    group.bench_function("uncached_sign", |b| {
        b.iter(|| signer.sign(black_box(&session), "app", black_box(1_000)))
    });
    let cache = AssertionCache::default();
    group.bench_function("cached", |b| {
        b.iter(|| signer.token(&cache, black_box(&session), 0, "app", black_box(1_000)))
    });
    group.finish();
}

criterion_group!(benches, assertion);
criterion_main!(benches);
