//! The built-in login against a real, OpenID-certified provider: panva's
//! `oidc-provider` 8.x (tests/oidc/provider.mjs, installed by `.ci/run` with `npm ci`)
//! on an ephemeral loopback port. The test answers its development login form over
//! HTTP (`prompt=login&login=alice&password=x`, then `prompt=consent`), as a person
//! would in a browser, and checks the identity the upstream receives (the user from
//! the `email` claim, which this provider only serves at userinfo) and the logout's
//! redirect to its `end_session_endpoint`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Instant;

use common::session_app::App;
use common::stores::Store;
use common::{ProxyConfig, Route};
use tokio::io::AsyncBufReadExt as _;

/// The provider's process; killed on drop.
struct Provider {
    child: tokio::process::Child,
    issuer: String,
}

impl Provider {
    async fn start() -> Provider {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/oidc-provider")
                .exists(),
            "run `npm ci` in tests/oidc (./.ci/run does)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let issuer = tokio::time::timeout(common::SOON, lines.next_line())
            .await
            .expect("the provider prints its issuer")
            .unwrap()
            .expect("a line");
        // Keep reading: the provider writes more, and dies of EPIPE on a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Provider { child, issuer }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Cookies by name (paths ignored: one test, one provider).
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (name, val) = pair.split_once('=').unwrap();
            let expired = attrs.contains("Max-Age=0") || attrs.contains("1970");
            if expired || val.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), val.to_string());
            }
        }
    }
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn login_through_oidc_provider() {
    let provider = Provider::start().await;
    let app = App::start().await;
    let config = ProxyConfig::new()
        .table("session", "")
        .upstream("app", [app.server()])
        .route(Route::new("/", "app").keys("login = \"oidc\""))
        .raw(&format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"cloakroom\"\nclient_secret = \"s3cret\"\n\
             scopes = [\"openid\", \"email\", \"profile\"]\nuser_claim = \"email\"\n\
             roles_claim = \"groups\"\nallow_http_loopback = true\n",
            provider.issuer
        ))
        .build();
    let proxy = Store::Memory.start(config).await;
    let client = proxy.client_h1();
    let (mut ours, mut theirs) = (Jar::default(), Jar::default());
    let page = proxy.url_for("app.test", "/reports");
    let began = Instant::now();
    let mut requests = 0;

    let response = client
        .get(&page)
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    requests += 1;
    assert_eq!(response.status(), 302);
    ours.keep(&response);
    let mut next = location(&response);
    assert!(next.starts_with(&provider.issuer), "{next}");
    assert!(next.contains("code_challenge_method=S256"), "{next}");
    let mut prompts = vec!["consent", "login"];
    // Through the provider: its redirects, and its form for each prompt.
    let callback = loop {
        if next.starts_with("https://app.test") {
            break next;
        }
        let url = if next.starts_with('/') {
            format!("{}{next}", provider.issuer)
        } else {
            next.clone()
        };
        let response = if url.contains("/interaction/") {
            let prompt = prompts.pop().expect("two prompts at most");
            let form: &[(&str, &str)] = match prompt {
                "login" => &[("prompt", "login"), ("login", "alice"), ("password", "x")],
                _ => &[("prompt", "consent")],
            };
            client
                .post(&url)
                .header("cookie", theirs.header())
                .form(form)
                .send()
                .await
                .unwrap()
        } else {
            client
                .get(&url)
                .header("cookie", theirs.header())
                .send()
                .await
                .unwrap()
        };
        requests += 1;
        theirs.keep(&response);
        assert!(
            response.status().is_redirection(),
            "{url}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        next = location(&response);
    };
    let response = client
        .get(&callback)
        .header("sec-fetch-mode", "navigate")
        .header("cookie", ours.header())
        .send()
        .await
        .unwrap();
    requests += 1;
    assert_eq!(
        response.status(),
        302,
        "{}",
        response.text().await.unwrap_or_default()
    );
    assert_eq!(location(&response), "/reports");
    ours.keep(&response);
    let elapsed = began.elapsed();
    let cookie_bytes = ours.header().len();

    let response = client
        .get(&page)
        .header("cookie", ours.header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "alice@example.com");
    assert_eq!(
        app.last_request().one("x-session-roles").as_deref(),
        Some("staff,ops")
    );
    eprintln!(
        "oidc-provider login: {requests} requests, {elapsed:?}, cookies {cookie_bytes} bytes"
    );

    let response = client
        .post(proxy.url_for("app.test", "/.cloakroom/logout"))
        .header("cookie", ours.header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let to = location(&response);
    assert!(
        to.starts_with(&format!("{}/session/end?id_token_hint=", provider.issuer)),
        "{to}"
    );
}

/// What a person sees: headless Chromium through the whole login
/// (tests/oidc/browser.py).
#[tokio::test]
async fn login_in_a_real_browser() {
    let provider = Provider::start().await;
    let app = App::start().await;
    let config = ProxyConfig::new()
        .table("session", "")
        .upstream("app", [app.server()])
        .route(Route::new("/", "app").keys("login = \"oidc\""))
        .raw(&format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"cloakroom\"\nclient_secret = \"s3cret\"\n\
             user_claim = \"email\"\nallow_http_loopback = true\n",
            provider.issuer
        ))
        .build();
    let proxy = Store::Memory.start(config).await;
    let url = proxy.url_for("app.test", "/reports?from=browser");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/browser.py");
    let run = tokio::process::Command::new("/usr/bin/python3")
        .arg(script)
        .arg(&url)
        .arg("MAP app.test 127.0.0.1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the browser run ends")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("alice@example.com"), "{stdout}");
    assert_eq!(
        lines.next(),
        Some(url.as_str()),
        "back on the page it started from"
    );
}
