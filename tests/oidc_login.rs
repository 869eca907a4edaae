//! The built-in OIDC login through real sockets, against a provider written in the
//! test (`tests/oidc/idp.rs`, which can also answer with hostile tokens): the full
//! login and the injected identity, 401 for API requests, parallel logins, forged and
//! replayed `state`, every kind of bad ID token, open-redirect attempts, `allow_roles`,
//! RP-initiated logout, back-channel logout across two instances sharing Redis, and
//! the provider being down. `tests/oidc_provider.rs` runs the login against a real,
//! certified provider (oidc-provider).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "oidc/idp.rs"]
mod idp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::session_app::App;
use common::stores::Store;
use common::{ProxyConfig, Route, TestProxy};
use idp::{Idp, Token};

/// A browser: one client, a cookie jar for the proxy's origin.
struct Browser {
    client: reqwest::Client,
    jar: HashMap<String, String>,
}

impl Browser {
    fn new(proxy: &TestProxy) -> Browser {
        Browser {
            client: proxy.client_h1(),
            jar: HashMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
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
            if attrs.contains("Max-Age=0") || val.is_empty() {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), val.to_string());
            }
        }
    }

    /// A top-level navigation (`Sec-Fetch-Mode: navigate`) to the proxy.
    async fn navigate(&mut self, url: &str) -> reqwest::Response {
        let mut request = self
            .client
            .get(url)
            .header("accept", "text/html,*/*;q=0.8")
            .header("sec-fetch-mode", "navigate");
        if !self.jar.is_empty() {
            request = request.header("cookie", self.cookie_header());
        }
        let response = request.send().await.unwrap();
        self.keep(&response);
        response
    }

    /// Asks the proxy for `url` and follows to the provider: the callback URL it
    /// sends the browser back to.
    async fn start_login(&mut self, url: &str) -> String {
        let response = self.navigate(url).await;
        assert_eq!(response.status(), 302, "a navigation starts the login");
        let to_idp = location(&response);
        let answer = self.client.get(&to_idp).send().await.unwrap();
        assert_eq!(answer.status(), 302);
        location(&answer)
    }

    async fn login(&mut self, url: &str) -> reqwest::Response {
        let callback = self.start_login(url).await;
        self.navigate(&callback).await
    }

    async fn whoami(&mut self, url: &str) -> (u16, String) {
        let response = self.navigate(url).await;
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .expect("a Location")
        .to_str()
        .unwrap()
        .to_string()
}

fn config(app: &App, issuer: &str, extra_routes: &[Route]) -> String {
    let mut config = ProxyConfig::new()
        .table("session", "")
        .upstream("app", [app.server()])
        .route(Route::new("/", "app").keys("login = \"oidc\""))
        .route(Route::new("/admin", "app").keys("login = \"oidc\"\nallow_roles = [\"root\"]"))
        .route(Route::new("/staff", "app").keys("login = \"oidc\"\nallow_roles = [\"staff\"]"))
        .route(Route::new("/public", "app"));
    for route in extra_routes {
        config = config.route(route.clone());
    }
    config
        .raw(&format!(
            "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"cloakroom\"\nclient_secret = \"s3cret\"\n\
             roles_claim = \"groups\"\nallow_http_loopback = true\n"
        ))
        .build()
}

/// `config` with a session secret (instances sharing a store share it; the config's
/// `client_secret` hides from `Store::apply` that the session has none).
fn with_secret(config: String) -> String {
    config.replacen(
        "[session]\n",
        "[session]\nsecret = \"0123456789abcdef0123456789abcdef-shared\"\n",
        1,
    )
}

async fn start(app: &App, idp: &Idp) -> TestProxy {
    Store::Memory.start(config(app, &idp.issuer(), &[])).await
}

#[tokio::test]
async fn full_login_injects_the_identity_and_returns_to_the_page() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    let page = proxy.url_for("app.test", "/reports?month=5");
    let before = app.request_count();
    let began = Instant::now();
    let done = browser.login(&page).await;
    let elapsed = began.elapsed();
    assert_eq!(done.status(), 302);
    assert_eq!(location(&done), "/reports?month=5");
    assert_eq!(
        app.request_count(),
        before,
        "nothing reached the app before the login"
    );
    let cookies: Vec<_> = browser.jar.keys().cloned().collect();
    assert_eq!(
        cookies,
        ["__Host-cloakroom"],
        "only the session cookie is left"
    );
    let cookie_bytes: usize = browser.jar.iter().map(|(k, v)| k.len() + v.len() + 1).sum();
    let (status, body) = browser.whoami(&page).await;
    assert_eq!((status, body.as_str()), (200, "alice"));
    let seen = app.last_request();
    assert_eq!(seen.one("x-session-roles").as_deref(), Some("staff,admin"));
    eprintln!(
        "login: 3 requests through the proxy/provider hops, {elapsed:?}, session cookie {cookie_bytes} bytes"
    );
}

#[tokio::test]
async fn api_requests_get_401_never_a_redirect() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let client = proxy.client_h1();
    let url = proxy.url_for("app.test", "/data");
    let cases = [
        client.get(&url).header("accept", "application/json"),
        client
            .get(&url)
            .header("sec-fetch-mode", "cors")
            .header("accept", "text/html"),
        client.get(&url),
        client.post(&url).header("accept", "text/html"),
    ];
    for request in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(response.headers().contains_key("www-authenticate"));
        assert!(!response.headers().contains_key("location"));
    }
    // Routes without login = "oidc" are not touched.
    let response = client
        .get(proxy.url_for("app.test", "/public"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn two_tabs_logging_in_at_once_both_succeed() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    let first = browser
        .start_login(&proxy.url_for("app.test", "/one"))
        .await;
    let second = browser
        .start_login(&proxy.url_for("app.test", "/two"))
        .await;
    let done = browser.navigate(&second).await;
    assert_eq!(
        (done.status().as_u16(), location(&done)),
        (302, "/two".into())
    );
    let done = browser.navigate(&first).await;
    assert_eq!(
        (done.status().as_u16(), location(&done)),
        (302, "/one".into())
    );
    assert_eq!(
        browser.whoami(&proxy.url_for("app.test", "/one")).await.1,
        "alice"
    );
}

#[tokio::test]
async fn forged_replayed_and_foreign_states_get_400() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    let forged = proxy.url_for("app.test", "/.cloakroom/oidc/callback?code=x&state=forged");
    assert_eq!(browser.navigate(&forged).await.status(), 400);

    // Another browser's callback (no binding cookie): refused, and the state is spent.
    let callback = browser.start_login(&proxy.url_for("app.test", "/")).await;
    let mut thief = Browser::new(&proxy);
    assert_eq!(thief.navigate(&callback).await.status(), 400);
    assert_eq!(browser.navigate(&callback).await.status(), 400);
    assert_eq!(
        thief.whoami(&proxy.url_for("app.test", "/public")).await.1,
        "anon"
    );

    // Replay of a completed callback.
    let callback = browser.start_login(&proxy.url_for("app.test", "/")).await;
    assert_eq!(browser.navigate(&callback).await.status(), 302);
    let mut again = Browser::new(&proxy);
    again.jar = browser.jar.clone();
    again.jar.retain(|k, _| k != "__Host-cloakroom");
    assert_eq!(again.navigate(&callback).await.status(), 400);
}

#[tokio::test]
async fn hostile_id_tokens_never_make_a_session() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    for mode in [
        Token::Tampered,
        Token::WrongAud,
        Token::WrongIss,
        Token::Expired,
        Token::WrongNonce,
        Token::AlgNone,
        Token::HmacWithPublicKey,
    ] {
        idp.set_token(mode);
        let mut browser = Browser::new(&proxy);
        let done = browser.login(&proxy.url_for("app.test", "/")).await;
        assert_eq!(done.status(), 400, "{mode:?}");
        let (status, body) = browser.whoami(&proxy.url_for("app.test", "/public")).await;
        assert_eq!((status, body.as_str()), (200, "anon"), "{mode:?}");
    }
    idp.set_token(Token::Good);
    let mut browser = Browser::new(&proxy);
    assert_eq!(
        browser
            .login(&proxy.url_for("app.test", "/"))
            .await
            .status(),
        302
    );
}

#[tokio::test]
async fn return_paths_never_leave_the_origin() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    for path in ["//evil.test/x", "/%2F%2Fevil.test", "/\\evil.test"] {
        let mut browser = Browser::new(&proxy);
        let done = browser.login(&proxy.url_for("app.test", path)).await;
        let to = location(&done);
        assert!(
            to.starts_with('/') && !to.starts_with("//") && !to.contains('\\'),
            "{path} -> {to}"
        );
    }
}

#[tokio::test]
async fn allow_roles_answer_403_to_a_logged_in_user() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    browser.login(&proxy.url_for("app.test", "/")).await;
    let response = browser
        .navigate(&proxy.url_for("app.test", "/admin/x"))
        .await;
    assert_eq!(response.status(), 403, "not a redirect");
    assert!(!response.headers().contains_key("location"));
    assert_eq!(
        browser
            .whoami(&proxy.url_for("app.test", "/staff/x"))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn logout_ends_the_session_and_redirects_to_the_provider() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    browser.login(&proxy.url_for("app.test", "/")).await;
    let response = browser
        .client
        .post(proxy.url_for("app.test", "/.cloakroom/logout"))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let to = location(&response);
    assert!(
        to.starts_with(&format!("{}/logout?id_token_hint=", idp.issuer())),
        "{to}"
    );
    let back = format!("https%3A%2F%2Fapp.test%3A{}%2F", proxy.https_addr.port());
    assert!(
        to.contains(&format!("post_logout_redirect_uri={back}")),
        "{to}"
    );
    browser.keep(&response);
    assert_eq!(
        browser
            .whoami(&proxy.url_for("app.test", "/public"))
            .await
            .1,
        "anon"
    );
}

#[tokio::test]
async fn backchannel_logout_reaches_every_instance_sharing_redis() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let redis = Store::redis().await;
    let text = with_secret(config(&app, &idp.issuer(), &[]));
    let a = redis.start(text.clone()).await;
    let b = redis.start(text).await;
    let mut browser = Browser::new(&a);
    browser.login(&a.url_for("app.test", "/")).await;
    assert_eq!(
        browser.whoami(&a.url_for("app.test", "/x")).await.1,
        "alice"
    );

    let endpoint = b.url_for("app.test", "/.cloakroom/oidc/backchannel");
    let post = |token: String| {
        b.client_h1()
            .post(&endpoint)
            .form(&[("logout_token", token)])
            .send()
    };
    let forged = idp.logout_token("another-client", serde_json::json!({"sid": "sid-1"}));
    assert_eq!(post(forged).await.unwrap().status(), 400);
    let with_nonce = idp.logout_token(
        "cloakroom",
        serde_json::json!({"sid": "sid-1", "nonce": "n"}),
    );
    assert_eq!(post(with_nonce).await.unwrap().status(), 400);
    assert_eq!(
        browser.whoami(&a.url_for("app.test", "/x")).await.1,
        "alice"
    );

    let token = idp.logout_token("cloakroom", serde_json::json!({"sid": "sid-1"}));
    assert_eq!(post(token.clone()).await.unwrap().status(), 200);
    assert_eq!(
        post(token).await.unwrap().status(),
        400,
        "a replayed jti is refused"
    );
    let (status, _) = browser.whoami(&a.url_for("app.test", "/x")).await;
    assert_eq!(
        status, 302,
        "the session on the other instance ended: login again"
    );
}

#[tokio::test]
async fn provider_down_gives_503_fast_and_sessions_keep_working() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = start(&app, &idp).await;
    let mut browser = Browser::new(&proxy);
    browser.login(&proxy.url_for("app.test", "/")).await;
    idp.stop();
    assert_eq!(
        browser.whoami(&proxy.url_for("app.test", "/x")).await.1,
        "alice"
    );

    // A provider never reached: login routes answer 503 within the call deadline.
    let down = Store::Memory
        .start(config(
            &app,
            &format!("http://{}", common::refused_addr()),
            &[],
        ))
        .await;
    let mut browser = Browser::new(&down);
    let began = Instant::now();
    let response = browser.navigate(&down.url_for("app.test", "/")).await;
    assert_eq!(response.status(), 503);
    assert!(began.elapsed() < Duration::from_secs(6));
    assert_eq!(
        browser.whoami(&down.url_for("app.test", "/public")).await.0,
        200
    );
}

#[tokio::test]
async fn cookie_store_seals_the_pending_login_into_its_cookie() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = Store::Cookie
        .start(with_secret(config(&app, &idp.issuer(), &[])))
        .await;
    let mut browser = Browser::new(&proxy);
    let callback = browser.start_login(&proxy.url_for("app.test", "/c")).await;
    let pending: Vec<_> = browser
        .jar
        .iter()
        .filter(|(k, _)| k.starts_with("__Host-cloakroom-oidc-"))
        .map(|(_, v)| v.len())
        .collect();
    assert_eq!(pending.len(), 1);
    eprintln!("sealed pending-login cookie: {} bytes of value", pending[0]);
    let copied = browser.jar.clone();
    let done = browser.navigate(&callback).await;
    assert_eq!(
        (done.status().as_u16(), location(&done)),
        (302, "/c".into())
    );
    assert_eq!(
        browser.whoami(&proxy.url_for("app.test", "/c")).await.1,
        "alice"
    );
    // The same cookie and callback again: redeemed once.
    let mut replay = Browser::new(&proxy);
    replay.jar = copied;
    assert_eq!(replay.navigate(&callback).await.status(), 400);
    // Another browser without the cookie.
    let callback = Browser::new(&proxy)
        .start_login(&proxy.url_for("app.test", "/d"))
        .await;
    assert_eq!(Browser::new(&proxy).navigate(&callback).await.status(), 400);
}

#[tokio::test]
async fn an_expired_login_state_gets_400() {
    let (app, idp) = (App::start().await, Idp::start().await);
    let proxy = Store::Cookie
        .builder(&with_secret(config(&app, &idp.issuer(), &[])))
        .manual_clock()
        .start()
        .await;
    let mut browser = Browser::new(&proxy);
    let callback = browser.start_login(&proxy.url_for("app.test", "/")).await;
    proxy.advance(Duration::from_secs(11 * 60));
    assert_eq!(browser.navigate(&callback).await.status(), 400);
}
