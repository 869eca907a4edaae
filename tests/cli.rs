//! The `cloakroom` binary as operators use it: `check` (exit codes and error messages
//! naming file, line, column and key), and a real run on a free port driven by signals
//! (SIGHUP reloads, SIGTERM exits 0).

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use common::ports::free_port;
use common::{
    config_text, poll_until, reqwest_client, write_leaf, MockUpstream, ProxyConfig, TestPki, SOON,
};
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_cloakroom");

/// A temp dir holding the test certificate and a `proxy.toml` written from `text`.
struct ConfigDir {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl ConfigDir {
    fn new() -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        write_leaf(dir.path(), &pki.default_leaf("cli test leaf"));
        ConfigDir { dir, pki }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    fn write(&self, text: &str) -> PathBuf {
        std::fs::write(self.path(), text).unwrap();
        self.path()
    }
}

fn check(config: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .env_remove("CLOAKROOM_CONFIG")
        .output()
        .unwrap()
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1
}

/// True when `stderr` contains `proxy.toml:{line}:{some column}`.
fn names_line(stderr: &str, line: usize) -> bool {
    let prefix = format!("proxy.toml:{line}:");
    stderr.match_indices(&prefix).any(|(i, _)| {
        stderr[i + prefix.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

const VALID_BODY: &str = r#"
[upstreams.app]
servers = ["127.0.0.1:9001"]

[[routes]]
path = "/"
upstream = "app"
"#;

#[test]
fn check_accepts_a_valid_config() {
    let dir = ConfigDir::new();
    let path = dir.write(&config_text("127.0.0.1:8443", VALID_BODY));
    let output = check(&path);
    assert!(
        output.status.success(),
        "exit {:?}, stderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_rejects_a_misspelled_upstream_with_line_and_key() {
    let dir = ConfigDir::new();
    let text = config_text(
        "127.0.0.1:8443",
        r#"
[upstreams.app]
servers = ["127.0.0.1:9001"]

[[routes]]
path = "/"
upstream = "ap"
"#,
    );
    let path = dir.write(&text);
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("routes[0].upstream"), "stderr:\n{stderr}");
    let line = line_of(&text, "upstream = \"ap\"");
    assert!(
        names_line(&stderr, line),
        "expected proxy.toml:{line}:COL in:\n{stderr}"
    );
    assert!(
        stderr.contains("app"),
        "names the known upstreams:\n{stderr}"
    );
}

#[test]
fn check_suggests_the_key_for_an_unknown_one() {
    let dir = ConfigDir::new();
    let text = config_text(
        "127.0.0.1:8443",
        &format!("[timeouts]\nupstrem = \"5s\"\n{VALID_BODY}"),
    );
    let path = dir.write(&text);
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.to_ascii_lowercase().contains("did you mean"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("upstream"), "stderr:\n{stderr}");
    let line = line_of(&text, "upstrem");
    assert!(
        names_line(&stderr, line),
        "expected proxy.toml:{line}:COL in:\n{stderr}"
    );
}

#[test]
fn check_reports_a_toml_syntax_error_with_line_and_column() {
    let dir = ConfigDir::new();
    let text = config_text(
        "127.0.0.1:8443",
        "[upstreams.app]\nservers = [\"127.0.0.1:9001\"\n\n[[routes]]\npath = \"/\"\n",
    );
    let path = dir.write(&text);
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    // The unclosed array is noticed between its opening line and the next table.
    let opened = line_of(&text, "servers = [");
    let next = line_of(&text, "[[routes]]");
    assert!(
        (opened..=next).any(|line| names_line(&stderr, line)),
        "expected proxy.toml:LINE:COL with LINE in {opened}..={next} in:\n{stderr}"
    );
}

#[test]
fn check_rejects_an_unreadable_certificate() {
    let dir = ConfigDir::new();
    std::fs::write(dir.dir.path().join("cert.pem"), "garbage").unwrap();
    let path = dir.write(&config_text("127.0.0.1:8443", VALID_BODY));
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("tls.cert"), "names the key:\n{stderr}");
}

#[test]
fn check_warns_about_idle_longer_than_absolute_and_still_exits_0() {
    let dir = ConfigDir::new();
    let body = format!("[session]\nidle_timeout = \"2h\"\nabsolute_timeout = \"1h\"\n{VALID_BODY}");
    let path = dir.write(&config_text("127.0.0.1:8443", &body));
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("session.idle_timeout"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_duration_over_400_days_in_every_duration_key() {
    const SECRET: &str = "secret = \"0123456789abcdef0123456789abcdef\"";
    const SERVERS: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n";
    const ROUTE: &str = "[[routes]]\npath = \"/\"\nupstream = \"app\"\n";
    // (the key as errors name it, the config body with DURATION where the value goes)
    let timeouts = [
        "connect",
        "header_read",
        "tls_handshake",
        "upstream",
        "client_idle",
        "upstream_idle",
        "shutdown_grace",
        "tunnel_idle",
    ]
    .map(|key| {
        (
            format!("timeouts.{key}"),
            format!("[timeouts]\n{key} = DURATION\n{VALID_BODY}"),
        )
    });
    let session = [
        "idle_timeout",
        "absolute_timeout",
        "persist_interval",
        "touch_interval",
    ]
    .map(|key| {
        (
            format!("session.{key}"),
            format!("[session]\n{key} = DURATION\n{VALID_BODY}"),
        )
    });
    let others = [
        (
            "session.redis.timeout",
            format!(
                "[session]\nstore = \"redis\"\n{SECRET}\n[session.redis]\n\
                 url = \"redis://127.0.0.1:6379\"\ntimeout = DURATION\n{VALID_BODY}"
            ),
        ),
        (
            "session.postgres.timeout",
            format!(
                "[session]\nstore = \"postgres\"\n{SECRET}\n[session.postgres]\n\
                 url = \"postgres://cloakroom@127.0.0.1:5432/cloakroom\"\ntimeout = DURATION\n{VALID_BODY}"
            ),
        ),
        (
            "upstreams.app.health.interval",
            format!("{SERVERS}[upstreams.app.health]\npath = \"/h\"\ninterval = DURATION\n{ROUTE}"),
        ),
        (
            "upstreams.app.health.timeout",
            format!("{SERVERS}[upstreams.app.health]\npath = \"/h\"\ntimeout = DURATION\n{ROUTE}"),
        ),
        (
            "routes[0].timeout",
            format!("{SERVERS}{ROUTE}timeout = DURATION\n"),
        ),
        (
            "inject.assertion_ttl",
            format!("[inject]\nassertion_ttl = DURATION\n{VALID_BODY}"),
        ),
    ]
    .map(|(key, body)| (key.to_owned(), body));
    let dir = ConfigDir::new();
    for (key, body) in timeouts.into_iter().chain(session).chain(others) {
        for absurd in ["\"400000000000y\"", "\"401d\""] {
            let text = config_text("127.0.0.1:8443", &body.replace("DURATION", absurd));
            let output = check(&dir.write(&text));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{key} = {absurd}:\n{stderr}");
            assert!(
                stderr.contains(&format!("{key}: {absurd} is longer than 400 days")),
                "{key} = {absurd}:\n{stderr}"
            );
            let line = line_of(&text, absurd);
            assert!(
                names_line(&stderr, line),
                "{key}: expected proxy.toml:{line}:COL in:\n{stderr}"
            );
        }
        // The longest allowed value passes this key's check (other rules may still
        // refuse it, e.g. the assertion ttl's range, but never as too long).
        let text = config_text("127.0.0.1:8443", &body.replace("DURATION", "\"400d\""));
        let stderr = String::from_utf8_lossy(&check(&dir.write(&text)).stderr).into_owned();
        assert!(!stderr.contains("400 days"), "{key} = 400d:\n{stderr}");
    }
}

#[test]
fn secret_prints_a_fresh_secret_that_check_accepts() {
    let secret = || {
        let output = Command::new(BIN).arg("secret").output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (secret(), secret());
    assert_ne!(a, b);
    assert_eq!(a.len(), 64, "48 bytes, base64url: {a}");
    let dir = ConfigDir::new();
    let body = format!("[session]\nstore = \"cookie\"\nsecret = \"{a}\"\n{VALID_BODY}");
    let output = check(&dir.write(&config_text("127.0.0.1:8443", &body)));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A running `cloakroom` process; killed on drop if the test did not stop it.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(config: &Path, log: PathBuf) -> Running {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env_remove("CLOAKROOM_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        Running { child, log }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut status = None;
        let child = &mut self.child;
        let deadline = tokio::time::Instant::now() + within;
        while status.is_none() {
            status = child.try_wait().unwrap();
            if status.is_none() && tokio::time::Instant::now() >= deadline {
                panic!(
                    "cloakroom did not exit within {within:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        status.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn two_upstreams(a: &MockUpstream, b: &MockUpstream, routes: &str, extra: &str) -> String {
    ProxyConfig::new()
        .prelude(extra)
        .upstream("a", [a.server()])
        .upstream("b", [b.server()])
        .raw(routes)
        .build()
}

async fn wait_accepting(port: u16) {
    poll_until(SOON, "cloakroom accepts connections", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reloads_on_sighup_and_exits_0_on_sigterm() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let dir = ConfigDir::new();
    let port = free_port();
    let https = format!("127.0.0.1:{port}");
    let root = "[[routes]]\npath = \"/\"\nupstream = \"a\"\nsession = false\n";
    let path = dir.write(&config_text(&https, &two_upstreams(&a, &b, root, "")));
    let mut running = Running::start(&path, dir.dir.path().join("stderr.log"));
    wait_accepting(port).await;

    let client = reqwest_client(&dir.pki, ([127, 0, 0, 1], port).into(), true);
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let response = client.get(url("/new")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "a");

    let with_new =
        format!("{root}\n[[routes]]\npath = \"/new\"\nupstream = \"b\"\nsession = false\n");
    dir.write(&config_text(&https, &two_upstreams(&a, &b, &with_new, "")));
    running.signal("HUP");
    poll_until(SOON, "the reloaded route serves /new from b", || async {
        match client.get(url("/new")).send().await {
            Ok(response) => response.text().await.is_ok_and(|t| t == "b"),
            Err(_) => false,
        }
    })
    .await;
    let response = client.get(url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "a");

    // A broken file on SIGHUP keeps the running config.
    dir.write("this is [not toml");
    running.signal("HUP");
    poll_until(SOON, "the refused reload is logged", || async {
        running.log().contains("reload refused")
    })
    .await;
    let response = client.get(url("/new")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "b");

    // A valid file that changes a restart-only key is refused too: the log names the
    // key and says to restart.
    let cookie_store =
        "[session]\nstore = \"cookie\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    dir.write(&config_text(
        &https,
        &two_upstreams(&a, &b, &with_new, cookie_store),
    ));
    running.signal("HUP");
    poll_until(SOON, "the restart-only change is refused", || async {
        running.log().contains("session.store: changed from")
    })
    .await;
    let log = running.log();
    assert!(log.contains("restart cloakroom to apply it"), "{log}");
    let response = client.get(url("/new")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "b");

    running.signal("TERM");
    let status = running.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", running.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_after_the_grace_period_even_with_a_stuck_request() {
    let a = MockUpstream::start("a").await;
    a.set_delay(Duration::from_secs(120));
    let b = MockUpstream::start("b").await;
    let dir = ConfigDir::new();
    let port = free_port();
    let https = format!("127.0.0.1:{port}");
    let root = "[[routes]]\npath = \"/\"\nupstream = \"a\"\nsession = false\n";
    let extra = "[timeouts]\nupstream = \"300s\"\nshutdown_grace = \"500ms\"\n";
    let path = dir.write(&config_text(&https, &two_upstreams(&a, &b, root, extra)));
    let mut running = Running::start(&path, dir.dir.path().join("stderr.log"));
    wait_accepting(port).await;

    let client = reqwest_client(&dir.pki, ([127, 0, 0, 1], port).into(), true);
    let stuck = tokio::spawn(client.get(format!("https://localhost:{port}/")).send());
    poll_until(SOON, "the request reaches the upstream", || async {
        a.request_count() == 1
    })
    .await;

    running.signal("TERM");
    let status = running.wait_exit(SOON).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", running.log());
    let result = tokio::time::timeout(SOON, stuck).await.unwrap().unwrap();
    assert!(result.is_err(), "the stuck request was cut: {result:?}");
}
