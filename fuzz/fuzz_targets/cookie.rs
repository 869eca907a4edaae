//! Cookie parsing, MAC verification and the sealed-cookie store's AEAD: a fuzzed
//! `Cookie` header or value never panics, never opens to a token unless it is a value
//! this codec sealed (round-trip checked), and never opens as a sealed session.
#![no_main]

use std::time::Duration;

use cloakroom::config::{SameSite, SessionConfig, StoreKind};
use cloakroom::session::store::SealedCodec;
use cloakroom::session::{CookieCodec, Token};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn codec() -> CookieCodec {
    let config = SessionConfig {
        cookie: "__Host-cloakroom".into(),
        same_site: SameSite::Lax,
        secure: true,
        persistent: false,
        idle_timeout: Duration::from_secs(1800),
        absolute_timeout: Duration::from_secs(43200),
        store: StoreKind::Memory,
        secret: None,
        max_sessions: 10,
        previous_secrets: Vec::new(),
        persist: None,
        persist_interval: Duration::from_secs(30),
        touch_interval: Duration::from_secs(180),
    };
    CookieCodec::new(&config, &[b"0123456789abcdef0123456789abcdef-fuzz"])
}

fuzz_target!(|data: &[u8]| {
    let codec = codec();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, value);
        if let Some(token) = codec.find(&headers) {
            // Only a sealed value opens; sealing the token again must open to it.
            assert_eq!(codec.open(&codec.seal(&token)), Some(token));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = codec.open(text);
        let _ = codec.is_ours(text);
        let sealed = SealedCodec::new("__Host-cloakroom", &[b"0123456789abcdef0123456789abcdef-fuzz"]);
        // Forging an authentic sealed value is the AEAD's job: random input never opens.
        assert!(sealed.open(text).is_none());
    }
    if data.len() >= 32 {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&data[..32]);
        let token = Token(bytes);
        assert_eq!(codec.open(&codec.seal(&token)), Some(token));
    }
});
