//! Is the hand-written cookie handling on the request path worth keeping over the
//! `cookie` crate?
//!
//! Two per-request jobs, each done both ways on the same input:
//! - writing our `Set-Cookie` (`CookieCodec::set_cookie_value`: `name=value` joined to
//!   attributes the `cookie` crate wrote once) vs building it with `cookie::Cookie`
//!   per request;
//! - finding and verifying our cookie among a browser's `Cookie` header with four
//!   other cookies (`CookieCodec::find`) vs `cookie::Cookie::split_parse` then the same
//!   MAC check (`CookieCodec::open`).
//!
//! `cargo bench --bench cookie_header -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderValue, COOKIE};

use cloakroom::session::{CookieCodec, Token};

fn codec() -> CookieCodec {
    CookieCodec::new(&common::shipped_config().session, &[&[7u8; 32]])
}

fn set_cookie(c: &mut Criterion) {
    let codec = codec();
    let value = codec.seal(&Token([9u8; 32]));
    let mut group = c.benchmark_group("set_cookie");
    group.bench_function("hand_written_join", |b| {
        b.iter(|| black_box(codec.set_cookie_value(black_box(&value))))
    });
    group.bench_function("cookie_crate_per_request", |b| {
        b.iter(|| {
            let built = cookie::Cookie::build(("__Host-cloakroom", black_box(value.as_str())))
                .path("/")
                .secure(true)
                .http_only(true)
                .same_site(cookie::SameSite::Lax)
                .build();
            black_box(HeaderValue::from_str(&built.to_string()).ok())
        })
    });
    group.finish();
}

fn find(c: &mut Criterion) {
    let codec = codec();
    let value = codec.seal(&Token([9u8; 32]));
    let text =
        format!("_ga=GA1.2.3.4; theme=dark; __Host-cloakroom={value}; lang=en; csrftoken=abc");
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, HeaderValue::from_str(&text).unwrap());
    let mut group = c.benchmark_group("find_cookie_value");
    group.bench_function("hand_written_scan", |b| {
        b.iter(|| black_box(codec.find(black_box(&headers))))
    });
    group.bench_function("cookie_crate_split_parse", |b| {
        b.iter(|| {
            let header = black_box(&headers).get(COOKIE).unwrap().to_str().unwrap();
            let found = cookie::Cookie::split_parse(header)
                .filter_map(Result::ok)
                .find(|c| c.name() == "__Host-cloakroom")
                .and_then(|c| codec.open(c.value()));
            black_box(found)
        })
    });
    group.finish();
}

criterion_group!(benches, set_cookie, find);
criterion_main!(benches);
