//! The `cloakroom` binary as operations see it: `check` refusing an exposed admin
//! listener without a token, JSON access logs (fields of one request, and no cookie
//! value, secret, token or `Authorization` value anywhere in a login/logout run), and
//! the container contract checked without a container engine: run as an unprivileged
//! user from a read-only directory, answer `cloakroom health`, exit 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::ports::free_ports;
use common::session_app::App;
use common::{config_text, poll_until, refused_addr, reqwest_client, write_leaf, TestPki, SOON};

const BIN: &str = env!("CARGO_BIN_EXE_cloakroom");
const SECRET: &str = "s3cr3t-value-for-the-cookie-mac-0123456789";
const ADMIN_TOKEN: &str = "admin-token-never-logged-0123456789";
const APP_AUTHORIZATION: &str = "Bearer app-credential-never-logged-42";

/// A running binary whose stderr goes to a file.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(command: Command, log: PathBuf) -> Running {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = spawn(command, Stdio::from(stderr));
        Running { child, log }
    }

    /// Started with stderr a pipe, handed to the caller to read or to leave unread.
    fn start_piped(command: Command) -> (Running, ChildStderr) {
        let mut child = spawn(command, Stdio::piped());
        let stderr = child.stderr.take().unwrap();
        let running = Running {
            child,
            log: PathBuf::new(),
        };
        (running, stderr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("cloakroom did not exit; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn spawn(mut command: Command, stderr: Stdio) -> Child {
    command
        .env_remove("CLOAKROOM_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn health(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["health", "--config"])
        .arg(config)
        .env_remove("CLOAKROOM_CONFIG")
        .env("CLOAKROOM_SECRET", SECRET)
        .output()
        .unwrap()
}

async fn wait_healthy(config: &Path, running: &Running) {
    poll_until(SOON, "cloakroom health exits 0", || async {
        if !running.log().is_empty() && running.log().contains("not started") {
            panic!("did not start:\n{}", running.log());
        }
        health(config).status.success()
    })
    .await;
}

#[test]
fn check_refuses_a_non_loopback_admin_listener_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), &TestPki::new().default_leaf("check"));
    let body = "[upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n[[routes]]\nupstream = \"app\"\n";
    let text = config_text("0.0.0.0:8443", body).replacen(
        "[listen]\n",
        "[listen]\nadmin = \"0.0.0.0:9901\"\n",
        1,
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("listen.admin_token"), "{stderr}");
    assert!(
        stderr.contains("proxy.toml:2:"),
        "points at the admin line: {stderr}"
    );

    let with_token = text.replacen(
        "[listen]\n",
        &format!("[listen]\nadmin_token = \"{ADMIN_TOKEN}\"\n"),
        1,
    );
    std::fs::write(&path, with_token).unwrap();
    let output = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_the_request_fields_and_never_a_secret() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    write_leaf(dir.path(), &pki.default_leaf("json log"));
    let [port, admin_port] = free_ports();
    let body = format!(
        "[session]\nsecret = \"${{CLOAKROOM_SECRET}}\"\n\n[log]\nformat = \"json\"\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        app.addr
    );
    let text = config_text(&format!("127.0.0.1:{port}"), &body).replacen(
        "[listen]\n",
        &format!("[listen]\nadmin = \"127.0.0.1:{admin_port}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n"),
        1,
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&config)
        .env("CLOAKROOM_SECRET", SECRET);
    let mut running = Running::start(command, dir.path().join("stderr.log"));
    wait_healthy(&config, &running).await;

    let client = reqwest_client(&pki, ([127, 0, 0, 1], port).into(), true);
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let mut cookies = Vec::new();
    let mut cookie: Option<String> = None;
    let mut request_id = String::new();
    for path in ["/", "/login?user=alice", "/private", "/logout"] {
        let mut request = client
            .get(url(path))
            .header("authorization", APP_AUTHORIZATION);
        if let Some(c) = &cookie {
            request = request.header("cookie", c);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{path}");
        if path == "/private" {
            request_id = response
                .headers()
                .get("x-request-id")
                .expect("the response carries X-Request-Id")
                .to_str()
                .unwrap()
                .to_string();
        }
        for value in response.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            if let Some((_, v)) = pair.split_once('=') {
                if !v.is_empty() {
                    cookies.push(v.to_string());
                    cookie = Some(pair.clone());
                }
            }
        }
        response.text().await.unwrap();
    }
    assert!(
        cookies.len() >= 2,
        "a session cookie and its rotation: {cookies:?}"
    );
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let metrics = admin
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    running.terminate();
    let status = running.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", running.log());
    let log = running.log();

    // Every line is one JSON object.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|l| l["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("no access line with request_id {request_id}:\n{log}"));
    assert_eq!(line["target"], "cloakroom::access");
    assert!(line["timestamp"].is_string());
    assert_eq!(line["peer"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], format!("localhost:{port}"));
    assert_eq!(line["path"], "/private");
    assert_eq!(line["route"], "/");
    assert_eq!(line["backend"], app.addr.to_string());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_out"], 5, "the body \"alice\"");
    assert_eq!(line["user"], "alice");
    assert_eq!(line["session"].as_str().unwrap().len(), 22);
    assert!(line["elapsed_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());

    for (what, secret) in [
        ("the session secret", SECRET),
        ("the admin token", ADMIN_TOKEN),
        ("the Authorization value", APP_AUTHORIZATION),
        (
            "the Authorization credential",
            "app-credential-never-logged-42",
        ),
    ] {
        assert!(!log.contains(secret), "{what} appears in the log:\n{log}");
    }
    for value in &cookies {
        assert!(
            !log.contains(value.as_str()),
            "a cookie value appears in the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_unprivileged_from_a_read_only_directory_answers_health_and_exits_0_on_sigterm() {
    let app = App::start().await;
    // The image's layout: binary, config and certificates, nothing writable, no shell
    // needed; the secret comes from the environment.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pki = TestPki::new();
    write_leaf(root, &pki.default_leaf("container"));
    let [port, admin_port] = free_ports();
    let body = format!(
        "[session]\nsecret = \"${{CLOAKROOM_SECRET}}\"\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        app.addr
    );
    let text = config_text(&format!("127.0.0.1:{port}"), &body).replacen(
        "[listen]\n",
        &format!("[listen]\nadmin = \"127.0.0.1:{admin_port}\"\n"),
        1,
    );
    let config = root.join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let binary = root.join("cloakroom");
    std::fs::copy(BIN, &binary).unwrap();
    for (file, mode) in [
        ("cloakroom", 0o555),
        ("proxy.toml", 0o444),
        ("cert.pem", 0o444),
        ("key.pem", 0o444),
    ] {
        std::fs::set_permissions(root.join(file), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555)).unwrap();

    let unprivileged = nobody_prefix();
    let mut command = match &unprivileged {
        Some(prefix) => {
            let mut c = Command::new(&prefix[0]);
            c.args(&prefix[1..]).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    command
        .arg("--config")
        .arg(&config)
        .current_dir(root)
        .env_clear()
        .env("CLOAKROOM_SECRET", SECRET);
    let log = std::env::temp_dir().join(format!("cloakroom-container-{port}.log"));
    let mut running = Running::start(command, log.clone());
    wait_healthy(&config, &running).await;

    let client = reqwest_client(&pki, ([127, 0, 0, 1], port).into(), true);
    let response = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    if unprivileged.is_some() {
        // setpriv execs cloakroom in place: the same pid, now uid 65534.
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", running.child.id())).unwrap();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .unwrap();
        assert_eq!(uid, "65534", "runs unprivileged");
    }

    running.terminate();
    let status = running.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", running.log());
    // Nothing was written next to the config (a read-only root filesystem is fine).
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cert.pem", "cloakroom", "key.pem", "proxy.toml"]);
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(log);
}

/// `setpriv` to uid/gid 65534 (nobody) when running as root with setpriv present;
/// otherwise `None` (the test still checks the read-only directory as this user).
fn nobody_prefix() -> Option<Vec<String>> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    (root && setpriv).then(|| {
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    })
}

#[test]
fn the_container_configs_are_valid() {
    // The image's own (standalone) config and the one compose.yaml selects.
    for name in ["proxy.toml", "compose.toml"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        write_leaf(
            &dir.path().join("certs"),
            &TestPki::new().default_leaf("image"),
        );
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("container")
                .join(name),
        )
        .unwrap();
        // Compose's service name does not resolve here; everything else is as shipped.
        let path = dir.path().join(name);
        std::fs::write(&path, shipped.replace("demo-apps:", "127.0.0.1:")).unwrap();
        let env = |name: &str| match name {
            "CLOAKROOM_SECRET" => Some(SECRET.to_string()),
            "CLOAKROOM_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
            _ => None,
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let config = cloakroom::Config::from_str_with_env(&path, &text, &env)
            .unwrap_or_else(|e| panic!("container/{name}:\n{e}"));
        assert_eq!(
            cloakroom::admin::probe::healthz_url(&config).unwrap(),
            "http://127.0.0.1:9901/healthz",
            "container/{name}: the HEALTHCHECK probes the admin listener on loopback"
        );
    }
}

/// Requests answered by the proxy at `port` during `for_how_long`, 16 at a time; every
/// one must be answered 502/503 within `SOON` (a worker blocked on a full log pipe
/// would leave them hanging).
async fn fire_failing_requests(client: &reqwest::Client, port: u16, for_how_long: Duration) -> u64 {
    let until = tokio::time::Instant::now() + for_how_long;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut answered = 0u64;
            while tokio::time::Instant::now() < until {
                let request = client.get(format!("https://localhost:{port}/")).send();
                let response = tokio::time::timeout(SOON, request)
                    .await
                    .expect("a request was not answered: is a worker blocked on the log?")
                    .unwrap();
                let status = response.status().as_u16();
                assert!(matches!(status, 502 | 503), "status {status}");
                response.bytes().await.unwrap();
                answered += 1;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(count) = tasks.join_next().await {
        answered += count.unwrap();
    }
    answered
}

/// `cloakroom_log_dropped_total` from the admin listener.
async fn log_dropped(admin_port: u16) -> u64 {
    let admin = reqwest::Client::builder().no_proxy().build().unwrap();
    let text = admin
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cloakroom_log_dropped_total "))
        .unwrap_or_else(|| panic!("no cloakroom_log_dropped_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The binary in front of an upstream that is down (every request fails and warns,
/// access log on), stderr a pipe; drained by a thread when `drain`.
async fn start_in_an_outage(drain: bool) -> (Running, TestPki, u16, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    write_leaf(dir.path(), &pki.default_leaf("log back-pressure"));
    let [port, admin_port] = free_ports();
    let body = format!(
        "[session]\nsecret = \"{SECRET}\"\n\n[log]\naccess = true\n\n\
         [upstreams.app]\nservers = [\"{}\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        refused_addr()
    );
    let text = config_text(&format!("127.0.0.1:{port}"), &body).replacen(
        "[listen]\n",
        &format!("[listen]\nadmin = \"127.0.0.1:{admin_port}\"\n"),
        1,
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config);
    let (running, mut stderr) = Running::start_piped(command);
    if drain {
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    } else {
        // Held open and never read, like a stalled log driver.
        std::mem::forget(stderr);
    }
    poll_until(SOON, "the admin listener answers", || async move {
        let admin = reqwest::Client::builder().no_proxy().build().unwrap();
        admin
            .get(format!("http://127.0.0.1:{admin_port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    (running, pki, port, admin_port, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_log_pipe_never_stalls_requests_and_drops_are_counted() {
    let phase = Duration::from_secs(3);

    // Reference: the same outage with stderr drained.
    let (mut drained, pki, port, admin_port, _dir) = start_in_an_outage(true).await;
    let client = reqwest_client(&pki, ([127, 0, 0, 1], port).into(), true);
    let reference = fire_failing_requests(&client, port, phase).await;
    assert_eq!(log_dropped(admin_port).await, 0);
    drained.terminate();
    assert_eq!(drained.wait_exit().await.code(), Some(0));

    // stderr nobody reads: its 64 KiB fill within a few hundred access lines, then
    // the queue, then lines are dropped; requests go on being answered throughout.
    let (mut stalled, pki, port, admin_port, _dir) = start_in_an_outage(false).await;
    let client = reqwest_client(&pki, ([127, 0, 0, 1], port).into(), true);
    let mut answered = fire_failing_requests(&client, port, phase).await;
    let first_phase = answered;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while log_dropped(admin_port).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line dropped after {answered} requests"
        );
        answered += fire_failing_requests(&client, port, Duration::from_secs(1)).await;
    }
    // Past the drop point (the pipe and the whole queue full): still answered.
    let dropping = fire_failing_requests(&client, port, phase).await;
    assert!(dropping > 0);
    let dropped = log_dropped(admin_port).await;
    assert!(dropped > 0);
    eprintln!(
        "log back-pressure: {:.0} req/s with stderr drained, {:.0} req/s unread (first {phase:?}), \
         {:.0} req/s while dropping; ratio unread/drained {:.2}; {} requests, {dropped} lines dropped",
        reference as f64 / phase.as_secs_f64(),
        first_phase as f64 / phase.as_secs_f64(),
        dropping as f64 / phase.as_secs_f64(),
        first_phase as f64 / reference as f64,
        answered + dropping,
    );
    // SIGTERM still ends it cleanly, the writer thread blocked or not.
    stalled.terminate();
    assert_eq!(stalled.wait_exit().await.code(), Some(0));
}
