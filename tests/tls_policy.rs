//! TLS policy through a real client (`openssl s_client`): TLS 1.2 and 1.3 are served,
//! TLS 1.1 and 1.0 are refused, TLS 1.2 without an AEAD suite (CBC, RSA key exchange)
//! is refused; `tls.hsts` puts `Strict-Transport-Security` on every https response,
//! the proxy's own and error answers included.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;

use common::{MockUpstream, TestProxy};
use tokio::io::AsyncWriteExt;

/// Whether `openssl s_client` with `args` completes a handshake with the proxy.
async fn handshake(proxy: &TestProxy, args: &[&str]) -> bool {
    let mut child = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(proxy.https_addr.to_string())
        .args(["-servername", "localhost"])
        // Let the client offer old protocols and suites: the server must refuse them.
        .args(["-cipher", "ALL:@SECLEVEL=0"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"Q\n").await;
    drop(stdin);
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("openssl finished")
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    // A completed handshake prints the negotiated cipher; a refused one prints
    // "Cipher is (NONE)" or nothing.
    text.lines()
        .any(|l| l.contains("Cipher is ") && !l.contains("(NONE)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_with_aead_suites_are_served() {
    let upstream = MockUpstream::start("app").await;
    let proxy = TestProxy::in_front_of(&upstream).await;
    assert!(handshake(&proxy, &["-tls1_3"]).await, "TLS 1.3 refused");
    assert!(handshake(&proxy, &["-tls1_2"]).await, "TLS 1.2 refused");
    assert!(!handshake(&proxy, &["-tls1_1"]).await, "TLS 1.1 accepted");
    assert!(!handshake(&proxy, &["-tls1"]).await, "TLS 1.0 accepted");
    for weak in [
        "ECDHE-RSA-AES128-SHA",
        "AES128-SHA",
        "AES256-GCM-SHA384",
        "DES-CBC3-SHA",
    ] {
        let args = ["-tls1_2", "-cipher", weak];
        assert!(!handshake(&proxy, &args).await, "{weak} accepted");
    }
    assert!(
        handshake(
            &proxy,
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
            ]
        )
        .await,
        "an AEAD ECDHE suite was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_on_every_https_response_when_set_and_absent_otherwise() {
    let upstream = MockUpstream::start("app").await;
    upstream.add_response_header("Strict-Transport-Security", "max-age=1");
    let with = TestProxy::builder()
        .config(format!(
            // Right after the harness's [tls] table, so these keys belong to it.
            "hsts = \"max-age=31536000; includeSubDomains\"\n\n[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/app\"\nupstream = \"app\"\n",
            upstream.server()
        ))
        .start()
        .await;
    let client = with.client();
    for path in ["/app", "/nothing-here", "/.cloakroom/logout"] {
        let response = client.get(with.url(path)).send().await.unwrap();
        let hsts: Vec<_> = response
            .headers()
            .get_all("strict-transport-security")
            .iter()
            .collect();
        assert_eq!(hsts.len(), 1, "{path}: {hsts:?}");
        assert_eq!(hsts[0], "max-age=31536000; includeSubDomains", "{path}");
    }
    let without = TestProxy::in_front_of(&MockUpstream::start("plain").await).await;
    let response = without.client().get(without.url("/")).send().await.unwrap();
    assert!(response
        .headers()
        .get("strict-transport-security")
        .is_none());
}
