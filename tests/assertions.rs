//! Signed identity assertions, end to end: the JWS the upstream receives verifies with
//! a real verifier (`openssl pkeyutl`, OpenSSL 3) against the key served at
//! `/.cloakroom/jwks.json`, and stops verifying when tampered with; two instances that
//! share `assertion_key` verify each other's tokens; a client-sent copy of the header
//! never reaches the upstream; previous keys stay in the JWKS during rotation.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::{MockUpstream, TestProxy};

/// Writes a fresh Ed25519 PKCS#8 key (made by `openssl genpkey`) to `path`.
fn openssl_key(path: &Path) {
    let status = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(path)
        .status()
        .expect("openssl runs");
    assert!(status.success());
}

fn config(upstream: &MockUpstream, inject: &str) -> String {
    format!(
        r#"
[inject]
assertion = "X-Session-Assertion"
{inject}

[upstreams.app]
servers = ["{}"]

[[routes]]
path = "/"
upstream = "app"
"#,
        upstream.server()
    )
}

/// The `x` members of the JWKS the proxy serves.
async fn jwks_keys(proxy: &TestProxy) -> Vec<String> {
    let response = proxy
        .client()
        .get(proxy.url("/.cloakroom/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    let text = response.text().await.unwrap();
    assert!(text.contains(r#""kty":"OKP""#) && text.contains(r#""crv":"Ed25519""#));
    text.split(r#""x":""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

/// Verifies `token` with `openssl pkeyutl -verify` and the JWKS key `x`.
fn openssl_verifies(dir: &Path, token: &str, x: &str) -> bool {
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend(URL_SAFE_NO_PAD.decode(x).unwrap());
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(spki)
    );
    std::fs::write(dir.join("pub.pem"), pem).unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    std::fs::write(dir.join("input"), input).unwrap();
    std::fs::write(dir.join("sig"), URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    let output = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(dir.join("pub.pem"))
        .arg("-in")
        .arg(dir.join("input"))
        .arg("-sigfile")
        .arg(dir.join("sig"))
        .output()
        .expect("openssl runs");
    output.status.success()
}

fn claims(token: &str) -> String {
    String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

/// One request through `proxy` with `headers`; the assertion the upstream received.
async fn assertion(proxy: &TestProxy, upstream: &MockUpstream, headers: &[(&str, &str)]) -> String {
    let mut request = proxy.client().get(proxy.url("/"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let all = upstream.last_request().all("x-session-assertion");
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_verifies_against_the_jwks_with_openssl_and_fails_after_tampering() {
    let upstream = MockUpstream::start("app").await;
    let login = MockUpstream::start("login").await;
    login.add_response_header("X-Session-Set-User", "alice");
    login.add_response_header("X-Session-Set-Roles", "admin,ops");
    let dir = tempfile::tempdir().unwrap();
    openssl_key(&dir.path().join("assertion.pem"));
    let key = dir.path().join("assertion.pem");
    let proxy = TestProxy::builder()
        .config(format!(
            "{}\n[upstreams.login]\nservers = [\"{}\"]\n[[routes]]\npath = \"/login\"\nupstream = \"login\"\n",
            config(&upstream, &format!("assertion_key = \"{}\"", key.display())),
            login.server()
        ))
        .start()
        .await;
    let keys = jwks_keys(&proxy).await;
    assert_eq!(keys.len(), 1);

    let token = assertion(&proxy, &upstream, &[("x-session-assertion", "forged")]).await;
    assert_ne!(token, "forged");
    let header = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        header.contains(r#""alg":"EdDSA""#) && header.contains(r#""kid":""#),
        "{header}"
    );
    let anonymous = claims(&token);
    assert!(!anonymous.contains(r#""sub""#), "{anonymous}");
    for claim in [
        r#""iss":"cloakroom""#,
        r#""aud":"app""#,
        r#""sid":""#,
        r#""iat":"#,
        r#""exp":"#,
    ] {
        assert!(
            anonymous.contains(claim),
            "{claim} missing from {anonymous}"
        );
    }
    assert!(openssl_verifies(dir.path(), &token, &keys[0]));

    // Logged in: sub and roles.
    let response = proxy
        .client()
        .get(proxy.url("/login"))
        .send()
        .await
        .unwrap();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .next()
        .expect("a cookie");
    let token = assertion(&proxy, &upstream, &[("cookie", &cookie)]).await;
    let logged_in = claims(&token);
    assert!(logged_in.contains(r#""sub":"alice""#), "{logged_in}");
    assert!(
        logged_in.contains(r#""roles":["admin","ops"]"#),
        "{logged_in}"
    );
    assert!(openssl_verifies(dir.path(), &token, &keys[0]));

    // Tampered claims (Mallory instead of alice) no longer verify.
    let forged_claims = URL_SAFE_NO_PAD.encode(logged_in.replace("alice", "mallo"));
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = &forged_claims;
    assert!(!openssl_verifies(dir.path(), &parts.join("."), &keys[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_an_assertion_key_verify_each_others_tokens() {
    let upstream = MockUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shared.pem");
    openssl_key(&key);
    let inject = format!("assertion_key = \"{}\"", key.display());
    let a = TestProxy::builder()
        .config(config(&upstream, &inject))
        .start()
        .await;
    let b = TestProxy::builder()
        .config(config(&upstream, &inject))
        .start()
        .await;
    let (keys_a, keys_b) = (jwks_keys(&a).await, jwks_keys(&b).await);
    assert_eq!(keys_a, keys_b);
    let from_a = assertion(&a, &upstream, &[]).await;
    let from_b = assertion(&b, &upstream, &[]).await;
    assert!(openssl_verifies(dir.path(), &from_a, &keys_b[0]));
    assert!(openssl_verifies(dir.path(), &from_b, &keys_a[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_signs_and_previous_keys_stay_in_the_jwks() {
    let upstream = MockUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.pem");
    openssl_key(&old);
    let proxy = TestProxy::builder()
        .config(config(
            &upstream,
            &format!("assertion_previous_keys = [\"{}\"]", old.display()),
        ))
        .start()
        .await;
    let keys = jwks_keys(&proxy).await;
    assert_eq!(keys.len(), 2, "current and previous key: {keys:?}");
    let token = assertion(&proxy, &upstream, &[]).await;
    assert!(openssl_verifies(dir.path(), &token, &keys[0]));
    assert!(!openssl_verifies(dir.path(), &token, &keys[1]));
}
