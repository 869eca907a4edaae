//! What does the session stage cost per request?
//!
//! The pure and in-memory pieces the pipeline runs for every request on a session route,
//! through the crate's public API: find and verify our cookie among the `Cookie`
//! headers (`CookieCodec::find`, HMAC-SHA256), load the session from a `MemoryStore`
//! holding 100 000 sessions (through the `SessionStore` trait, inside a current-thread
//! tokio runtime), strip client-sent identity headers and inject the session's
//! (`inject::strip` + `inject::inject`), and the three together.
//!
//! Not included: the store call's timeout wrapper, hop-by-hop stripping, forwarding
//! headers and cookie rewriting (crate-private), and everything outside the session stage.
//!
//! `cargo bench --bench session_stage -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use cloakroom::inject::{self, InjectRules};
use cloakroom::session::{
    now_ms, CookieCodec, Expiry, Identity, MemoryStore, PublicId, Session, SessionStore, Token,
};

/// The sessions in the store.
const SESSIONS: usize = 100_000;
/// Distinct cookies the "many sessions" benches cycle through (random sessions).
const SAMPLE: usize = 4096;
/// Requests prepared at once, untimed, for the benches that consume a header map.
const CHUNK: u64 = 1024;

struct Fixture {
    codec: CookieCodec,
    rules: InjectRules,
    expiry: Expiry,
    store: Arc<dyn SessionStore>,
    /// Tokens of random stored sessions.
    tokens: Vec<Token>,
    /// A browser request carrying the cookie of `tokens[i]`.
    requests: Vec<HeaderMap>,
}

impl Fixture {
    fn new(rt: &tokio::runtime::Runtime) -> Fixture {
        let config = common::shipped_config();
        let codec = CookieCodec::new(&config.session, &[&[7u8; 32]]);
        let rules = InjectRules::new(&config.inject, &config.control);
        let expiry = Expiry::of(&config.session);

        let store = MemoryStore::new(config.session.max_sessions);
        let now = now_ms();
        let all: Vec<Token> = rt.block_on(async {
            let mut all = Vec::with_capacity(SESSIONS);
            for i in 0..SESSIONS {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let session = Session::new(PublicId(id), now);
                all.push(store.create(&session, expiry).await.unwrap());
            }
            all
        });
        // A fixed pseudo-random walk over the stored sessions (no extra dependency).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let tokens: Vec<Token> = (0..SAMPLE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                all[(x % SESSIONS as u64) as usize]
            })
            .collect();
        let requests = tokens.iter().map(|t| browser_request(&codec, t)).collect();
        Fixture {
            codec,
            rules,
            expiry,
            store: Arc::new(store),
            tokens,
            requests,
        }
    }
}

/// A typical browser navigation: 12 headers, our cookie third of four.
fn browser_request(codec: &CookieCodec, token: &Token) -> HeaderMap {
    let cookie = format!(
        "_ga=GA1.1.1843251208.1700000000; theme=dark; {}={}; csrftoken=Yq3xW9vTn4LkP0aR8sDf2GhJ6mZc1VbN",
        codec.name(),
        codec.seal(token)
    );
    let pairs: [(&str, &str); 12] = [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.7,de;q=0.3"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://app.example.com/orders?page=2"),
        ("cookie", &cookie),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("priority", "u=0, i"),
    ];
    let mut headers = HeaderMap::with_capacity(16);
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn logged_in(public_id: PublicId) -> Session {
    let mut session = Session::new(public_id, now_ms());
    session.identity = Some(Arc::new(Identity {
        user: Some("ann.smith@example.com".into()),
        roles: Some("staff,orders-admin".into()),
    }));
    session
}

/// The whole session stage on `iters` fresh copies of the requests (random sessions,
/// valid cookies), prepared `CHUNK` at a time outside the timing, inside one `block_on`
/// of the current-thread runtime.
fn time_stage(rt: &tokio::runtime::Runtime, f: &Fixture, iters: u64) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        let mut done = 0u64;
        while done < iters {
            let n = CHUNK.min(iters - done);
            let mut batch: Vec<HeaderMap> = (done..done + n)
                .map(|i| f.requests[i as usize % SAMPLE].clone())
                .collect();
            let start = Instant::now();
            for headers in &mut batch {
                let token = f.codec.find(headers).unwrap();
                let session = f
                    .store
                    .load(&token, now_ms(), f.expiry)
                    .await
                    .unwrap()
                    .unwrap();
                inject::strip(headers, &f.rules);
                inject::inject(headers, &f.rules, &session);
                black_box(session);
            }
            total += start.elapsed();
            drop(batch);
            done += n;
        }
        total
    })
}

fn session_stage(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = Fixture::new(&rt);
    let now = now_ms();
    let mut group = c.benchmark_group("session_stage");

    let request = &f.requests[0];
    group.bench_function("cookie find (ours among 4)", |b| {
        b.iter(|| f.codec.find(black_box(request)))
    });
    let no_cookie = {
        let mut h = request.clone();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_static("_ga=GA1.1.1843251208.1700000000; theme=dark; csrftoken=x"),
        );
        h
    };
    group.bench_function("cookie find (none of ours)", |b| {
        b.iter(|| f.codec.find(black_box(&no_cookie)))
    });

    group.bench_function("store load (same session, 100k stored)", |b| {
        let token = f.tokens[0];
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(f.store.load(&token, now, f.expiry).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("store load (random sessions, 100k stored)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let token = &f.tokens[i as usize % SAMPLE];
                    black_box(f.store.load(token, now, f.expiry).await.unwrap());
                }
                start.elapsed()
            })
        })
    });

    let anonymous = Session::new(PublicId([9; 16]), now);
    group.bench_function("strip + inject (anonymous, 12 headers)", |b| {
        b.iter_batched(
            || request.clone(),
            |mut headers| {
                inject::strip(&mut headers, &f.rules);
                inject::inject(&mut headers, &f.rules, black_box(&anonymous));
                headers
            },
            BatchSize::SmallInput,
        )
    });
    let user = logged_in(PublicId([9; 16]));
    group.bench_function("strip + inject (logged in, 12 headers)", |b| {
        b.iter_batched(
            || request.clone(),
            |mut headers| {
                inject::strip(&mut headers, &f.rules);
                inject::inject(&mut headers, &f.rules, black_box(&user));
                headers
            },
            BatchSize::SmallInput,
        )
    });

    group.bench_function("find + load + strip + inject (random sessions)", |b| {
        b.iter_custom(|iters| time_stage(&rt, &f, iters))
    });
    group.finish();
}

criterion_group!(benches, session_stage);
criterion_main!(benches);
