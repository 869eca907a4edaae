//! What does a new session cost in-process?
//!
//! The pieces the request path runs for a request without our cookie on a session
//! route (src/proxy/session.rs), through the public API: the public id's OS draw
//! (`random_bytes::<16>`), the token's (`random_bytes::<32>`, which `MemoryStore::create`
//! makes itself), `MemoryStore::create` through the `SessionStore` trait inside a
//! current-thread tokio runtime, `CookieCodec::set_cookie` (HMAC seal + header), and
//! all of it together. The allocator is mimalloc, as in the proxy binary.
//!
//! The store, three situations:
//! - below the bound (the designed steady state: 100 000 stored, `max_sessions` at its
//!   1 000 000 default; the reaper removes expired sessions elsewhere, modelled by
//!   destroying each chunk of 1024 new sessions untimed, so the tables are sized);
//! - at the bound (100 000 stored, `max_sessions = 100 000`: every create evicts; the
//!   steady state when cookieless clients outpace expiry);
//! - growing (a fresh store filled to 100 000 and to 1 000 000; per fill, construction
//!   and drop untimed): hash-table growth, rehash and fresh pages included.
//!
//! Not included: the store call's timeout wrapper, metrics, the rate limiter, writing
//! the response.
//!
//! Measured on this machine (2 cores, Linux 6.18, glibc 2.36), 2026-12-02:
//! - `random_bytes::<16>` 306 ns, `random_bytes::<32>` 307 ns when each was one
//!   getrandom(2); 49 ns and 97 ns since they are taken from a per-thread block of 512
//!   bytes fetched at once;
//! - create below the bound 574 ns (the token draw was ~300 of it), 316 ns since;
//! - create at the bound 3.74 µs: eviction. Right after filling it costs ~1.3 µs and
//!   it climbs to ~3.5 µs within a few hundred thousand creates, because the victim
//!   sample is always the first 32 entries in iteration order: the low shards are
//!   drained and every eviction walks their empty tables;
//! - `set_cookie` 338 ns;
//! - all together below the bound 1.48 µs (two draws ~0.6 µs, HMAC ~0.3 µs), 0.83 µs
//!   with the per-thread block;
//! - growing: 65.9 ms per 100 000 (659 ns per create, +85 ns over steady state),
//!   944 ms per 1 000 000 (944 ns per create, +370 ns).
//!
//! `cargo bench --bench new_session -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};

use cloakroom::session::{
    now_ms, random_bytes, CookieCodec, Expiry, MemoryStore, PublicId, Session, SessionStore, Token,
};

/// The proxy binary's allocator (src/main.rs): what a growing store costs depends on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The sessions already stored in the steady-state benches.
const SESSIONS: usize = 100_000;
/// New sessions timed at once; the steady-state benches then destroy them, untimed.
const CHUNK: u64 = 1024;

struct Fixture {
    codec: CookieCodec,
    expiry: Expiry,
    /// `session.max_sessions` (default 1 000 000).
    max_sessions: usize,
}

impl Fixture {
    fn new() -> Fixture {
        let config = common::shipped_config();
        Fixture {
            codec: CookieCodec::new(&config.session, &[&[7u8; 32]]),
            expiry: Expiry::of(&config.session),
            max_sessions: config.session.max_sessions,
        }
    }
}

/// An anonymous session with a counter for its public id (no OS draw).
fn session(i: u64, now: u64) -> Session {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_le_bytes());
    Session::new(PublicId(id), now)
}

/// A store bounded to `max` holding `n` sessions, behind the trait as the proxy holds it.
fn filled_store(
    rt: &tokio::runtime::Runtime,
    max: usize,
    n: usize,
    f: &Fixture,
) -> Arc<dyn SessionStore> {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(max));
    let now = now_ms();
    rt.block_on(async {
        for i in 0..n as u64 {
            store.create(&session(i, now), f.expiry).await.unwrap();
        }
    });
    store
}

/// Times `iters` calls of `create` (each stores one session into `store` and returns its
/// token), in chunks of `CHUNK`; each chunk's sessions are destroyed untimed, so a
/// steady-state store keeps its size.
async fn steady_creates(
    store: &dyn SessionStore,
    iters: u64,
    mut create: impl AsyncFnMut(u64) -> Token,
) -> Duration {
    let mut tokens = Vec::with_capacity(CHUNK as usize);
    let mut total = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let n = CHUNK.min(iters - done);
        let start = Instant::now();
        for i in done..done + n {
            tokens.push(create(i).await);
        }
        total += start.elapsed();
        for token in tokens.drain(..) {
            store.destroy(&token).await.unwrap();
        }
        done += n;
    }
    total
}

fn new_session(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = Fixture::new();
    let now = now_ms();

    let mut group = c.benchmark_group("new_session");

    group.bench_function("random_bytes::<16> (public id)", |b| {
        b.iter(|| black_box(random_bytes::<16>().unwrap()))
    });
    group.bench_function("random_bytes::<32> (token)", |b| {
        b.iter(|| black_box(random_bytes::<32>().unwrap()))
    });

    let steady = filled_store(&rt, f.max_sessions, SESSIONS, &f);
    group.bench_function("store create (100k stored, below the bound)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(steady_creates(&*steady, iters, async |i| {
                steady.create(&session(i, now), f.expiry).await.unwrap()
            }))
        })
    });

    let full = filled_store(&rt, SESSIONS, SESSIONS, &f);
    group.bench_function("store create (100k stored, at the bound: evicts)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(full.create(&session(i, now), f.expiry).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    drop(full);

    let token = Token(random_bytes::<32>().unwrap());
    group.bench_function("set_cookie (HMAC seal + Set-Cookie)", |b| {
        b.iter(|| black_box(f.codec.set_cookie(black_box(&token)).unwrap()))
    });

    group.bench_function("all together (100k stored, below the bound)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(steady_creates(&*steady, iters, async |_| {
                let public_id = PublicId(random_bytes::<16>().unwrap());
                let session = Session::new(public_id, now);
                let token = steady.create(&session, f.expiry).await.unwrap();
                black_box(f.codec.set_cookie(&token).unwrap());
                token
            }))
        })
    });
    group.finish();
    drop(steady);

    // One iteration fills a fresh store; the empty store's construction and the full
    // store's drop are not timed.
    let mut group = c.benchmark_group("new_session_growing");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in [SESSIONS, f.max_sessions] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("store create (fresh store filled to {n})"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(f.max_sessions));
                    total += rt.block_on(async {
                        let start = Instant::now();
                        for i in 0..n as u64 {
                            black_box(store.create(&session(i, now), f.expiry).await.unwrap());
                        }
                        start.elapsed()
                    });
                    drop(store);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, new_session);
criterion_main!(benches);
