//! The JWT builder: any user and roles give a compact JWS whose signature verifies
//! and whose claims are well-formed JSON strings (no raw quote or control character
//! escapes its string).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cloakroom::assertion::{generate_key, Assertions};
use cloakroom::config::AssertionConfig;
use cloakroom::session::{Identity, PublicId, Session};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

fn signer() -> &'static (Assertions, Vec<u8>) {
    static SIGNER: OnceLock<(Assertions, Vec<u8>)> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = generate_key().expect("key");
        let public = Ed25519KeyPair::from_pkcs8(&key)
            .expect("pair")
            .public_key()
            .as_ref()
            .to_vec();
        let config = AssertionConfig {
            header: http::HeaderName::from_static("x-session-assertion"),
            key: None,
            previous_public_keys: Vec::new(),
            ttl: Duration::from_secs(60),
        };
        (Assertions::new(&config, &key).expect("signer"), public)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (user, roles) = text.split_once('\n').unwrap_or((text, ""));
    let mut session = Session::new(PublicId([5; 16]), 0);
    session.identity = Some(Arc::new(Identity {
        user: (!user.is_empty()).then(|| user.into()),
        roles: (!roles.is_empty()).then(|| roles.into()),
    }));
    let (assertions, public) = signer();
    let Some(token) = assertions.sign(&session, "app", 1_700_000_000) else {
        return;
    };
    let token = token.to_str().expect("ASCII");
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    UnparsedPublicKey::new(&ED25519, public)
        .verify(input.as_bytes(), &signature)
        .expect("verifies");
    let claims = URL_SAFE_NO_PAD
        .decode(input.split('.').nth(1).expect("claims"))
        .expect("base64url");
    let claims = String::from_utf8(claims).expect("UTF-8");
    assert!(
        !claims.chars().any(|c| (c as u32) < 0x20),
        "raw control character"
    );
    // Every quote is either escaped or one of the structure's own.
    let mut escaped = false;
    let mut quotes = 0;
    for c in claims.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => quotes += 1,
            _ => {}
        }
    }
    assert_eq!(quotes % 2, 0, "{claims}");
});
