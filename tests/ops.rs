//! Operations through real sockets: metrics scraped and parsed after known requests,
//! the session admin API (log a user out everywhere), the admin token, `POST /reload`,
//! `/readyz` following upstream health, and `X-Session-Logout: everywhere`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;

use common::session_app::App;
use common::{poll_until, ProxyConfig, Route, TestProxy, SOON};

fn session_config(app: &App, extra: &str) -> String {
    ProxyConfig::new()
        .prelude(extra)
        .upstream("app", [app.addr])
        .route(Route::new("/", "app"))
        .build()
}

/// The `name=value` of our cookie in a response, if it sets one.
fn cookie_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-cloakroom="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

/// A browser: one cookie, kept by hand.
struct Browser {
    client: reqwest::Client,
    cookie: Option<String>,
}

impl Browser {
    fn new(proxy: &TestProxy) -> Browser {
        Browser {
            client: proxy.client_h1(),
            cookie: None,
        }
    }

    /// GETs `path`, keeps a new cookie, returns status and body.
    async fn get(&mut self, proxy: &TestProxy, path: &str) -> (u16, String) {
        let mut request = self.client.get(proxy.url(path));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        if let Some(cookie) = cookie_of(&response) {
            self.cookie = Some(cookie);
        }
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

async fn json_of(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

fn admin() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// One request to the admin listener, without a token.
async fn admin_call(proxy: &TestProxy, method: reqwest::Method, path: &str) -> reqwest::Response {
    admin()
        .request(method, proxy.admin_url(path))
        .send()
        .await
        .unwrap()
}

async fn scrape(proxy: &TestProxy) -> String {
    let response = admin_call(proxy, reqwest::Method::GET, "/metrics").await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (metric_name == name && labels.iter().all(|want| label_text.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_new_sessions_logins_logouts_and_requests() {
    let app = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(&app, ""))
        .admin_listener()
        .start()
        .await;
    let before = scrape(&proxy).await;
    assert!(before.contains("cloakroom_build_info{version="), "{before}");
    let created = metric(&before, "cloakroom_sessions_created_total", &[]);

    for _ in 0..5 {
        let (status, _) = Browser::new(&proxy).get(&proxy, "/").await;
        assert_eq!(status, 200);
    }
    let mut ann = Browser::new(&proxy);
    ann.get(&proxy, "/").await;
    let (_, _) = ann.get(&proxy, "/login?user=ann").await;
    assert_eq!(ann.get(&proxy, "/").await.1, "ann");
    ann.get(&proxy, "/logout").await;

    let after = scrape(&proxy).await;
    assert!(
        after.contains("# TYPE cloakroom_requests counter"),
        "{after}"
    );
    assert_eq!(
        metric(&after, "cloakroom_sessions_created_total", &[]) - created,
        6.0,
        "5 anonymous visitors and ann's first request:\n{after}"
    );
    assert_eq!(
        metric(&after, "cloakroom_sessions_regenerated_total", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "cloakroom_sessions_ended_total",
            &["reason=\"logout\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "cloakroom_requests_total",
            &["route=\"/\"", "status=\"200\""]
        ),
        9.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "cloakroom_request_duration_seconds_count",
            &["route=\"/\""]
        ),
        9.0
    );
    assert_eq!(
        metric(
            &after,
            "cloakroom_upstream_duration_seconds_count",
            &["upstream=\"app\""]
        ),
        9.0
    );
    assert!(
        metric(
            &after,
            "cloakroom_store_duration_seconds_count",
            &["op=\"load\""]
        ) >= 3.0
    );
    assert_eq!(
        metric(&after, "cloakroom_upstream_up", &["upstream=\"app\""]),
        1.0
    );
    assert_eq!(metric(&after, "cloakroom_sessions_active", &[]), 5.0);

    // A cross-site POST is refused by the proxy and counted as such.
    let refused = proxy
        .client_h1()
        .post(proxy.url("/"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "cloakroom_refused_total", &["reason=\"csrf\""]),
        1.0
    );
}

#[tokio::test]
async fn admin_api_logs_alice_out_everywhere_while_bob_keeps_his_session() {
    let app = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(&app, ""))
        .admin_listener()
        .start()
        .await;
    let mut alice_laptop = Browser::new(&proxy);
    let mut alice_phone = Browser::new(&proxy);
    let mut bob = Browser::new(&proxy);
    for (browser, user) in [
        (&mut alice_laptop, "alice"),
        (&mut alice_phone, "alice"),
        (&mut bob, "bob"),
    ] {
        browser.get(&proxy, &format!("/login?user={user}")).await;
        assert_eq!(browser.get(&proxy, "/").await.1, user);
    }

    let listed = admin_call(&proxy, reqwest::Method::GET, "/sessions?user=alice").await;
    let listed = json_of(listed).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for session in listed {
        assert_eq!(session["user"], "alice");
        assert_eq!(session["id"].as_str().unwrap().len(), 22);
        assert!(session["roles"].is_array());
        assert!(session["created"].as_u64().unwrap() > 0);
        assert!(session["last_seen"].as_u64().unwrap() > 0);
    }

    let ended = admin_call(&proxy, reqwest::Method::DELETE, "/sessions?user=alice").await;
    assert_eq!(ended.status(), 200);
    let ended = json_of(ended).await;
    assert_eq!(ended["ended"], 2);

    assert_eq!(alice_laptop.get(&proxy, "/").await.1, "anon");
    assert_eq!(alice_phone.get(&proxy, "/").await.1, "anon");
    assert_eq!(bob.get(&proxy, "/").await.1, "bob");

    // One session by its public id.
    let bobs = admin_call(&proxy, reqwest::Method::GET, "/sessions?user=bob").await;
    let bobs = json_of(bobs).await;
    let id = bobs[0]["id"].as_str().unwrap().to_string();
    let one = admin_call(&proxy, reqwest::Method::DELETE, &format!("/sessions/{id}")).await;
    assert_eq!(one.status(), 200);
    assert_eq!(bob.get(&proxy, "/").await.1, "anon");
    let again = admin_call(&proxy, reqwest::Method::DELETE, &format!("/sessions/{id}")).await;
    assert_eq!(again.status(), 404);

    let count = admin_call(&proxy, reqwest::Method::GET, "/sessions/count").await;
    let count = json_of(count).await;
    assert!(count["count"].as_u64().is_some(), "{count}");
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(
            &text,
            "cloakroom_sessions_ended_total",
            &["reason=\"admin\""]
        ),
        3.0
    );
}

#[tokio::test]
async fn upstream_logout_everywhere_ends_every_session_of_the_user() {
    let app = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(&app, ""))
        .start()
        .await;
    let mut laptop = Browser::new(&proxy);
    let mut phone = Browser::new(&proxy);
    let mut other = Browser::new(&proxy);
    laptop.get(&proxy, "/login?user=carol").await;
    phone.get(&proxy, "/login?user=carol").await;
    other.get(&proxy, "/login?user=dave").await;
    assert_eq!(phone.get(&proxy, "/").await.1, "carol");

    laptop.get(&proxy, "/logout-everywhere").await;
    assert_eq!(phone.get(&proxy, "/").await.1, "anon");
    assert_eq!(other.get(&proxy, "/").await.1, "dave");
}

#[tokio::test]
async fn admin_token_is_required_except_for_probes() {
    let app = App::start().await;
    let token = "a-long-enough-admin-token-0123";
    let proxy = TestProxy::builder()
        .config(session_config(
            &app, "", // the token goes into [listen] below
        ))
        .admin_listener()
        .start()
        .await;
    // Turn the token on by reload (the same [listen] plus admin_token).
    let text = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .replacen(
            "[listen]\n",
            &format!("[listen]\nadmin_token = \"{token}\"\n"),
            1,
        );
    proxy.write_raw_config(&text);
    proxy.handle.reload().await.unwrap();

    let client = admin();
    for path in ["/metrics", "/sessions?user=x", "/sessions/count"] {
        let response = client.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let wrong = client
            .get(proxy.admin_url(path))
            .bearer_auth("a-long-enough-admin-token-0124")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = client
            .get(proxy.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    let reload = client
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401);
    for path in ["/healthz", "/readyz"] {
        let response = client.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn post_reload_adds_a_route_and_refuses_a_broken_file_with_its_reason() {
    let app = App::start().await;
    let other = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(&app, ""))
        .admin_listener()
        .start()
        .await;
    let client = proxy.client_h1();
    let on = |path: &str| client.get(proxy.url_for("other.test", path)).send();
    assert_eq!(on("/").await.unwrap().status(), 200);

    let with_route = format!(
        "{}\n[upstreams.other]\nservers = [\"{}\"]\n\n[[routes]]\nhost = \"other.test\"\npath = \"/\"\nupstream = \"other\"\nsession = false\n",
        session_config(&app, ""),
        other.addr
    );
    proxy.write_config(&with_route);
    let response = admin_call(&proxy, reqwest::Method::POST, "/reload").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("generation 2"));
    // The new route answers without a session cookie (session = false).
    let response = on("/").await.unwrap();
    assert!(cookie_of(&response).is_none());

    proxy.write_config(&with_route.replace("upstream = \"other\"", "upstream = \"othr\""));
    let refused = admin_call(&proxy, reqwest::Method::POST, "/reload").await;
    assert_eq!(refused.status(), 422);
    let reason = refused.text().await.unwrap();
    assert!(reason.contains("upstream"), "{reason}");
    assert!(reason.contains("othr"), "names the bad value: {reason}");
    assert!(
        reason.contains("proxy.toml:"),
        "names the file and line: {reason}"
    );
    // The running config keeps serving.
    let response = on("/").await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(cookie_of(&response).is_none());
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "cloakroom_config_reloads_total", &["result=\"ok\""]),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "cloakroom_config_reloads_total",
            &["result=\"failed\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn readyz_fails_while_every_server_of_an_upstream_is_down_and_recovers() {
    let app = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(
            &app,
            "",
        ).replace(
            "[[routes]]",
            "[upstreams.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 1\nrise = 1\n\n[[routes]]",
        ))
        .admin_listener()
        .start()
        .await;
    let client = admin();
    let readyz = || async {
        let response = client.get(proxy.admin_url("/readyz")).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz().await.0, 200);

    app.healthy.store(false, Ordering::Relaxed);
    poll_until(SOON, "readyz says 503", || async {
        readyz().await.0 == 503
    })
    .await;
    let (_, body) = readyz().await;
    assert!(body.contains("upstream app: no healthy server"), "{body}");
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "cloakroom_upstream_up", &["upstream=\"app\""]),
        0.0
    );

    app.healthy.store(true, Ordering::Relaxed);
    poll_until(SOON, "readyz says 200 again", || async {
        readyz().await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn readyz_fails_while_connections_drain_at_shutdown() {
    let slow = common::MockUpstream::start("slow").await;
    slow.set_delay(std::time::Duration::from_secs(3));
    let proxy = TestProxy::builder()
        .config(format!(
            "[timeouts]\nshutdown_grace = \"10s\"\n[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nsession = false\n",
            slow.server()
        ))
        .admin_listener()
        .start()
        .await;
    let client = proxy.client_h1();
    let in_flight = tokio::spawn(client.get(proxy.url("/")).send());
    poll_until(SOON, "the request reaches the upstream", || async {
        slow.request_count() == 1
    })
    .await;
    proxy.handle.shutdown();
    let admin = admin();
    poll_until(SOON, "/readyz answers 503 stopping", || async {
        match admin.get(proxy.admin_url("/readyz")).send().await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap().contains("stopping"),
            Err(_) => false,
        }
    })
    .await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "the in-flight request finished");
}

#[tokio::test]
async fn cookie_store_answers_501_with_the_reason_on_the_session_admin_paths() {
    let app = App::start().await;
    let proxy = TestProxy::builder()
        .config(session_config(
            &app,
            "[session]\nstore = \"cookie\"\nsecret = \"0123456789abcdef0123456789abcdef0123\"\n",
        ))
        .admin_listener()
        .start()
        .await;
    let mut browser = Browser::new(&proxy);
    browser.get(&proxy, "/login?user=erin").await;
    assert_eq!(browser.get(&proxy, "/").await.1, "erin");
    let client = admin();
    for response in [
        client.get(proxy.admin_url("/sessions?user=erin")).send(),
        client.delete(proxy.admin_url("/sessions?user=erin")).send(),
        client.get(proxy.admin_url("/sessions/count")).send(),
    ] {
        let response = response.await.unwrap();
        assert_eq!(response.status(), 501);
        let body = json_of(response).await;
        assert!(
            body["error"].as_str().unwrap().contains("not supported"),
            "{body}"
        );
    }
    // Metrics count sealed sessions too; the sealed session is untouched.
    let text = scrape(&proxy).await;
    assert_eq!(metric(&text, "cloakroom_sessions_created_total", &[]), 1.0);
    let (_, _) = browser.get(&proxy, "/login?user=erin2").await;
    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "cloakroom_sessions_regenerated_total", &[]),
        1.0
    );
    assert_eq!(browser.get(&proxy, "/").await.1, "erin2");
}
