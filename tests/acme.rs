//! `[tls.acme]` against a real ACME CA: Debian's Pebble (Let's Encrypt's test server)
//! and its mock DNS, `pebble-challtestsrv`, which answers 127.0.0.1 for every name.
//! Each test starts its own Pebble on ephemeral loopback ports, with `httpPort` and
//! `tlsPort` set to the proxy's listeners, after the proxy: so every proxy first meets
//! a CA that is down, and must get its certificate once the CA comes up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ports::free_ports;
use common::redis::RedisServer;
use common::{MockUpstream, TestProxy};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_cloakroom");
const SECRET: &str = "0123456789abcdef0123456789abcdef-acme-test";

/// Pebble and its mock DNS, killed on drop.
struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    api: SocketAddr,
    mgmt: SocketAddr,
    dir: tempfile::TempDir,
}

/// Where Pebble will listen and what it trusts; written before the proxy starts so
/// the proxy's config can name the directory and the CA.
struct PebblePlan {
    api: SocketAddr,
    mgmt: SocketAddr,
    dns: SocketAddr,
    dns_mgmt: SocketAddr,
    dir: tempfile::TempDir,
}

/// Pebble's API certificate for localhost and its CA (`ca.pem`), by the openssl CLI.
fn openssl_api_cert(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-subj",
            "/CN=acme test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "api.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "api.pem",
    ]);
}

impl PebblePlan {
    fn new() -> PebblePlan {
        let [api, mgmt, dns, dns_mgmt] = free_ports::<4>();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir().unwrap();
        openssl_api_cert(dir.path());
        PebblePlan {
            api: addr(api),
            mgmt: addr(mgmt),
            dns: addr(dns),
            dns_mgmt: addr(dns_mgmt),
            dir,
        }
    }

    fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.api.port())
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Starts Pebble validating on `http_port`/`tls_port`; `env` adds settings
    /// (`PEBBLE_WFE_NONCEREJECT`...); `validity` is the certificates' life in seconds.
    async fn start(
        self,
        http_port: u16,
        tls_port: u16,
        env: &[(&str, &str)],
        validity: u64,
    ) -> Pebble {
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": self.api.to_string(),
                "managementListenAddress": self.mgmt.to_string(),
                "certificate": self.dir.path().join("api.pem"),
                "privateKey": self.dir.path().join("api.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity,
            }
        });
        let config_path = self.dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &self.dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &self.dns_mgmt.to_string(),
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble)");
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let mut command = Command::new("pebble");
        command
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &self.dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let pebble = command.spawn().expect("pebble (Debian package pebble)");
        let started = Pebble {
            pebble: Some(pebble),
            dns,
            api: self.api,
            mgmt: self.mgmt,
            dir: self.dir,
        };
        common::poll_until(Duration::from_secs(10), "pebble listens", || async {
            TcpStream::connect(started.api).await.is_ok()
                && TcpStream::connect(started.mgmt).await.is_ok()
        })
        .await;
        started
    }
}

impl Pebble {
    /// Pebble's issuing root, from its management API.
    async fn root(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let ca = CertificateDer::from_pem_file(self.dir.path().join("ca.pem")).unwrap();
        let (_, mut tls) = connect(self.mgmt, "localhost", &ca)
            .await
            .expect("pebble management");
        tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8(response).unwrap();
        let pem = &text[text.find("-----BEGIN").expect("a PEM root")..];
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// How many certificates Pebble issued (its log).
    fn issued(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default();
        log.matches("Issued certificate").count()
    }

    fn stop(&mut self) {
        if let Some(mut pebble) = self.pebble.take() {
            let _ = pebble.kill();
            let _ = pebble.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default();
            eprintln!("pebble log:\n{log}");
        }
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// The chain `addr` serves for `name` when the client trusts only `root`; `None` when
/// the handshake fails (no certificate, or one that does not verify).
async fn verified_chain(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Option<Vec<CertificateDer<'static>>> {
    let (tls, _) = connect(addr, name, root).await?;
    Some(tls)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
) -> Option<(Vec<CertificateDer<'static>>, Tls)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        connector.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp),
    )
    .await
    .ok()?
    .ok()?;
    let chain = tls.get_ref().1.peer_certificates()?.to_vec();
    Some((chain, tls))
}

/// Waits (up to `within`) for a chain for `name` that verifies against `root`.
async fn wait_for_chain(
    addr: SocketAddr,
    name: &str,
    root: &CertificateDer<'static>,
    within: Duration,
) -> Vec<CertificateDer<'static>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(chain) = verified_chain(addr, name, root).await {
            return chain;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {name} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn acme_table(plan: &PebblePlan, cache: &Path, extra: &str) -> String {
    acme_table_for(&plan.directory(), &plan.ca(), cache, extra)
}

fn acme_table_for(directory: &str, ca: &Path, cache: &Path, extra: &str) -> String {
    format!(
        "[tls.acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\ndomains = [\"app.example.com\", \"www.example.com\"]\n\
         cache = \"{}\"\nca = \"{}\"\n{extra}\n",
        directory,
        cache.display(),
        ca.display()
    )
}

fn body(upstream: &MockUpstream, acme: &str, session: &str) -> String {
    format!(
        "{acme}\n{session}\n[upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n",
        upstream.server()
    )
}

#[tokio::test]
async fn tls_alpn_01_issues_a_full_chain_then_a_restart_serves_the_cache_with_the_ca_down() {
    let upstream = MockUpstream::start("app").await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let proxy = TestProxy::builder()
        .admin_listener()
        .config(body(&upstream, &acme_table(&plan, cache.path(), ""), ""))
        .start()
        .await;
    // The CA is down: the proxy runs, serving only its file certificate.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (directory, ca) = (plan.directory(), plan.ca());
    let mut pebble = plan.start(1, proxy.https_addr.port(), &[], 3600).await;
    let root = pebble.root().await;
    assert!(verified_chain(proxy.https_addr, "app.example.com", &root)
        .await
        .is_none());
    let up = Instant::now();
    let chain = wait_for_chain(
        proxy.https_addr,
        "app.example.com",
        &root,
        Duration::from_secs(60),
    )
    .await;
    eprintln!("first certificate {:?} after the CA came up", up.elapsed());
    assert!(
        chain.len() >= 2,
        "the full chain (leaf and intermediate) is served: {}",
        chain.len()
    );
    let www = wait_for_chain(
        proxy.https_addr,
        "www.example.com",
        &root,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(www[0], chain[0], "one certificate for both names");
    // Normal clients still get HTTP.
    let response = proxy.client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // The cache: account and bundle, 0600.
    use std::os::unix::fs::PermissionsExt;
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    assert_eq!(pebble.issued(), 1);
    let metrics = reqwest::get(format!("http://{}/metrics", proxy.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cloakroom_acme_orders_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cloakroom_acme_orders_total{result=\"failed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cloakroom_acme_certificate_expiry_timestamp_seconds{domain=\"www.example.com\"}"
        ),
        "{metrics}"
    );

    // Restart with the CA stopped: the cached certificate is served at once.
    drop(proxy);
    pebble.stop();
    let again = TestProxy::builder()
        .config(body(
            &upstream,
            &acme_table_for(&directory, &ca, cache.path(), ""),
            "",
        ))
        .start()
        .await;
    let cached = verified_chain(again.https_addr, "app.example.com", &root)
        .await
        .expect("the cached certificate, served at once");
    assert_eq!(cached[0], chain[0]);
}

#[tokio::test]
async fn http_01_issues_even_when_the_ca_rejects_30_percent_of_nonces() {
    let upstream = MockUpstream::start("app").await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let proxy = TestProxy::builder()
        .http_listener()
        .listen("http = \"127.0.0.1:1\"")
        .config(body(
            &upstream,
            &acme_table(&plan, cache.path(), "challenge = \"http-01\""),
            "",
        ))
        .start()
        .await;
    let http_port = proxy.http_addr.unwrap().port();
    let pebble = plan
        .start(http_port, 1, &[("PEBBLE_WFE_NONCEREJECT", "30")], 3600)
        .await;
    let root = pebble.root().await;
    let up = Instant::now();
    let chain = wait_for_chain(
        proxy.https_addr,
        "app.example.com",
        &root,
        Duration::from_secs(90),
    )
    .await;
    eprintln!(
        "first certificate (http-01, 30% bad nonces) {:?} after the CA came up",
        up.elapsed()
    );
    assert!(chain.len() >= 2);
}

#[tokio::test]
async fn renewal_within_renew_before_swaps_without_dropping_an_open_connection() {
    let upstream = MockUpstream::start("app").await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    // Certificates live 40 s; renewal is due 30 s (minus up to 3 s jitter) before expiry.
    let proxy = TestProxy::builder()
        .config(body(
            &upstream,
            &acme_table(&plan, cache.path(), "renew_before = \"30s\""),
            "",
        ))
        .start()
        .await;
    let pebble = plan.start(1, proxy.https_addr.port(), &[], 40).await;
    let root = pebble.root().await;
    let first = wait_for_chain(
        proxy.https_addr,
        "app.example.com",
        &root,
        Duration::from_secs(60),
    )
    .await;
    let (_, mut open) = connect(proxy.https_addr, "app.example.com", &root)
        .await
        .unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n";
    open.write_all(request).await.unwrap();
    read_head(&mut open).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = wait_for_chain(
            proxy.https_addr,
            "app.example.com",
            &root,
            Duration::from_secs(20),
        )
        .await;
        if now[0] != first[0] {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The connection opened on the old certificate still serves.
    open.write_all(request).await.unwrap();
    read_head(&mut open).await;
    assert!(pebble.issued() >= 2);
}

async fn read_head(tls: &mut Tls) {
    let mut buf = vec![0u8; 16384];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn two_instances_sharing_redis_order_once() {
    let redis = RedisServer::start().await;
    let upstream = MockUpstream::start("app").await;
    let plan = PebblePlan::new();
    let session = format!(
        "[session]\nstore = \"redis\"\nsecret = \"{SECRET}\"\n\n[session.redis]\nurl = \"{}\"\n",
        redis.url()
    );
    let (cache_a, cache_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestProxy::builder()
        .config(body(
            &upstream,
            &acme_table(&plan, cache_a.path(), ""),
            &session,
        ))
        .start()
        .await;
    let b = TestProxy::builder()
        .config(body(
            &upstream,
            &acme_table(&plan, cache_b.path(), ""),
            &session,
        ))
        .start()
        .await;
    // Pebble validates on A's port; B must not order (it would fail validation there).
    let pebble = plan.start(1, a.https_addr.port(), &[], 3600).await;
    let root = pebble.root().await;
    let from_a = wait_for_chain(
        a.https_addr,
        "app.example.com",
        &root,
        Duration::from_secs(60),
    )
    .await;
    // B looks in the store every 2 s while A holds the lock, then every 60 s.
    let from_b = wait_for_chain(
        b.https_addr,
        "app.example.com",
        &root,
        Duration::from_secs(70),
    )
    .await;
    assert_eq!(from_a[0], from_b[0], "one certificate, shared");
    assert_eq!(pebble.issued(), 1);
}

#[test]
fn check_refuses_bad_acme_tables() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n\n\
                [[routes]]\npath = \"/\"\nupstream = \"app\"\n";
    let cases = [
        (
            "[tls.acme]\nchallenge = \"dns-01\"\ndomains = [\"a.example.com\"]\n",
            "tls.acme.challenge",
        ),
        (
            "[tls.acme]\nchallenge = \"http-01\"\ndomains = [\"a.example.com\"]\n",
            "tls.acme.challenge",
        ),
        ("[tls.acme]\n", "tls.acme.domains"),
        (
            "[tls.acme]\ndomains = [\"a.example.com\"]\ncache = \"/proc/nope\"\n",
            "tls.acme.cache",
        ),
        (
            "[tls.acme]\ndomains = [\"a.example.com\"]\nca = \"missing.pem\"\n",
            "tls.acme.ca",
        ),
        (
            "[tls.acme]\ndomains = [\"a.example.com\"]\nrenew_before = \"soon\"\n",
            "tls.acme.renew_before",
        ),
    ];
    for (table, key) in cases {
        let path = dir.path().join("proxy.toml");
        let text = format!("{base}\n[tls]\n{table}");
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{table}: {stderr}");
        assert!(stderr.contains("proxy.toml:"), "{stderr}");
        assert!(stderr.contains(key), "{table}: {stderr}");
    }
    // A good table with domains from the exact route hosts passes.
    let path = dir.path().join("proxy.toml");
    let good = base.replace("path = \"/\"", "host = \"app.example.com\"\npath = \"/\"");
    std::fs::write(
        &path,
        format!("{good}\n[tls]\n[tls.acme]\ncache = \"acme\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("acme").is_dir());
}

/// Without `tls.cert` and with the CA unreachable: the proxy runs, a handshake for the
/// name fails cleanly, and the log says why.
#[tokio::test]
async fn without_a_certificate_yet_handshakes_fail_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let [https, ca_port] = free_ports::<2>();
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:{https}\"\n\n[tls]\n[tls.acme]\n\
         directory = \"https://127.0.0.1:{ca_port}/dir\"\ndomains = [\"app.example.com\"]\n\n\
         [upstreams.app]\nservers = [\"127.0.0.1:9\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n"
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], https));
    common::poll_until(Duration::from_secs(10), "the proxy listens", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // Any root: the handshake must fail before verification matters.
    let self_signed = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
    let root = self_signed.cert.der().clone();
    assert!(connect(addr, "app.example.com", &root).await.is_none());
    common::poll_until(Duration::from_secs(10), "the log says why", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("no certificate for this name yet")
            && text.contains("the CA could not be reached")
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the proxy keeps running"
    );
    let _ = child.kill();
    let _ = child.wait();
}
