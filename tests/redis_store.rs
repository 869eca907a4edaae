//! The Redis session store against a real `redis-server` (started per test on an
//! ephemeral port, without persistence): the store's operations and key TTLs, two proxy
//! instances sharing one login, logout and logout-by-user, sessions outliving a proxy
//! restart, `rediss://` with a private CA, and the failure behaviour: Redis killed or
//! hung (SIGSTOP) → 503 with `Retry-After` within the timeout, `session = false` routes
//! unaffected, recovery once Redis is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom::config::RedisConfig;
use cloakroom::session::{
    Expiry, Identity, PublicId, RedisStore, Session, SessionIndex, SessionStore, StoreError, Token,
};
use common::redis::RedisServer;
use common::scripted::App;
use common::{poll_until, ProxyConfig, Route, TestPki, TestProxy};
use reqwest::StatusCode;

const COOKIE: &str = "__Host-cloakroom";
const SECRET: &str = "0123456789abcdef0123456789abcdef-redis-test";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A proxy config: Redis store at `redis` (TOML lines of `[session.redis]`), `/` a
/// session route to `app`, `/plain` a `session = false` route to it.
fn config(app: &App, session: &str, redis: &str) -> String {
    ProxyConfig::new()
        .table(
            "session",
            &format!("store = \"redis\"\nsecret = \"{SECRET}\"\n{session}"),
        )
        .table("session.redis", redis)
        .upstream("app", [app.addr])
        .route(Route::new("/", "app"))
        .route(Route::new("/plain", "app").session(false))
        .build()
}

async fn proxy(app: &App, redis: &RedisServer, session: &str) -> TestProxy {
    let lines = format!("url = \"{}\"\ntimeout = \"250ms\"", redis.url());
    TestProxy::builder()
        .config(config(app, session, &lines))
        .start()
        .await
}

/// What one request returned.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    /// Our cookie's new value, if the response set one.
    cookie: Option<String>,
    body: String,
}

impl Reply {
    /// A request header the upstream saw.
    fn seen(&self, name: &str) -> Option<String> {
        self.body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_owned())
    }
}

/// GET `path` with our cookie (if any) and `x-reply` lines for the upstream.
async fn get(proxy: &TestProxy, path: &str, cookie: Option<&str>, replies: &[&str]) -> Reply {
    let mut request = proxy.client_h1().get(proxy.url(path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    for reply in replies {
        request = request.header("x-reply", *reply);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{COOKIE}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned());
    let body = response.text().await.unwrap();
    Reply {
        status,
        retry_after,
        cookie,
        body,
    }
}

/// Starts an anonymous session and logs it in as `user`; returns the cookie.
async fn login(proxy: &TestProxy, user: &str) -> String {
    let first = get(proxy, "/", None, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let anon = first.cookie.expect("a new session sets a cookie");
    let reply = get(
        proxy,
        "/",
        Some(&anon),
        &[&format!("X-Session-Set-User: {user}")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.cookie.expect("a login sets a fresh cookie")
}

fn store_config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_owned(),
        prefix: "cloakroom:".to_owned(),
        timeout: Duration::from_millis(500),
        urls: Vec::new(),
        ca: None,
        sentinel: None,
    }
}

const EXPIRY: Expiry = Expiry {
    idle_ms: 60_000,
    absolute_ms: 600_000,
    touch_ms: 1_000,
};

fn now() -> u64 {
    cloakroom::session::now_ms()
}

fn session(user: Option<&str>, at: u64) -> Session {
    let mut s = Session::new(PublicId(cloakroom::session::random_bytes().unwrap()), at);
    s.identity = user.map(|u| {
        Arc::new(Identity {
            user: Some(u.into()),
            roles: Some("admin,dev".into()),
        })
    });
    s
}

/// Every key in the server's database.
async fn redis_keys(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn pttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// The store itself
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn store_keeps_sessions_with_ttls_indexes_and_atomic_regeneration() {
    let server = RedisServer::start().await;
    let store = RedisStore::open(&store_config(&server.url()), None).unwrap();
    let t0 = now();

    let anon = session(None, t0);
    let token = store.create(&anon, EXPIRY).await.unwrap();
    let loaded = store.load(&token, t0, EXPIRY).await.unwrap().unwrap();
    assert_eq!(loaded.public_id, anon.public_id);
    assert!(store
        .load(&Token([9; 32]), t0, EXPIRY)
        .await
        .unwrap()
        .is_none());

    // The record key holds neither the token nor its base64; its TTL is the idle time.
    let keys = redis_keys(&server.url()).await;
    let record = keys.iter().find(|k| k.starts_with("cloakroom:s:")).unwrap();
    let ttl = pttl(&server.url(), record).await;
    assert!(ttl > 55_000 && ttl <= 60_000, "ttl {ttl}");
    assert_eq!(keys.len(), 2, "record and public-id mapping: {keys:?}");

    // A login regenerates: the old token is dead, the new one holds the user.
    let mut user = loaded.clone();
    user.identity = session(Some("ann"), t0).identity;
    let fresh = store.regenerate(&token, &user, EXPIRY).await.unwrap();
    assert_ne!(fresh, token);
    assert!(store.load(&token, t0, EXPIRY).await.unwrap().is_none());
    let loaded = store.load(&fresh, t0, EXPIRY).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("ann"));
    assert_eq!(loaded.public_id, anon.public_id);

    // A second session of ann, listed and ended by user and by public id.
    let other = session(Some("ann"), t0);
    let other_token = store.create(&other, EXPIRY).await.unwrap();
    let mut listed: Vec<_> = store
        .list_user("ann", t0, EXPIRY)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.public_id)
        .collect();
    listed.sort_by_key(|p| p.0);
    let mut expected = vec![anon.public_id, other.public_id];
    expected.sort_by_key(|p| p.0);
    assert_eq!(listed, expected);
    assert_eq!(store.count().await.unwrap(), 2);
    assert!(store.destroy_public(&other.public_id).await.unwrap());
    assert!(!store.destroy_public(&other.public_id).await.unwrap());
    assert!(store
        .load(&other_token, t0, EXPIRY)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.destroy_user("ann").await.unwrap(), 1);
    assert!(store.load(&fresh, t0, EXPIRY).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 0);
    assert!(store.list_user("ann", t0, EXPIRY).await.unwrap().is_empty());
}

#[tokio::test]
async fn store_records_use_at_most_once_per_touch_interval_and_enforces_expiry_on_read() {
    let server = RedisServer::start().await;
    let store = RedisStore::open(&store_config(&server.url()), None).unwrap();
    let t0 = now();
    let token = store.create(&session(None, t0), EXPIRY).await.unwrap();
    let keys = redis_keys(&server.url()).await;
    let record = keys
        .iter()
        .find(|k| k.starts_with("cloakroom:s:"))
        .unwrap()
        .clone();
    let stored = |url: String, key: String| async move {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        cloakroom::session::record::decode(&bytes)
            .unwrap()
            .last_seen
    };
    // Within the touch interval nothing is written.
    store.load(&token, t0 + 500, EXPIRY).await.unwrap().unwrap();
    assert_eq!(stored(server.url(), record.clone()).await, t0);
    // Past it, the last use is written back.
    store
        .load(&token, t0 + 1_500, EXPIRY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored(server.url(), record.clone()).await, t0 + 1_500);
    // Idle past the limit (by the stored timestamps): no session, whatever the TTL.
    assert!(store
        .load(&token, t0 + 1_500 + EXPIRY.idle_ms, EXPIRY)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn store_answers_errors_not_empty_sessions_when_redis_is_gone() {
    let mut server = RedisServer::start().await;
    let store = RedisStore::open(&store_config(&server.url()), None).unwrap();
    let t0 = now();
    let token = store
        .create(&session(Some("ann"), t0), EXPIRY)
        .await
        .unwrap();
    server.kill();
    let started = Instant::now();
    let error = store.load(&token, t0, EXPIRY).await.unwrap_err();
    assert!(
        matches!(error, StoreError::Backend { .. } | StoreError::Timeout),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(store.known_down());
    assert!(store.ping().await.is_err());
}

// ---------------------------------------------------------------------------------------
// Through the proxy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn two_instances_share_one_login_one_session_id_and_one_logout() {
    let server = RedisServer::start().await;
    let app = App::start().await;
    let a = proxy(&app, &server, "").await;
    let b = proxy(&app, &server, "").await;

    let cookie = login(&a, "ann").await;
    let on_a = get(&a, "/", Some(&cookie), &[]).await;
    let on_b = get(&b, "/", Some(&cookie), &[]).await;
    assert_eq!(on_b.status, StatusCode::OK);
    assert_eq!(on_b.seen("x-session-user").as_deref(), Some("ann"));
    assert_eq!(on_a.seen("x-session-id"), on_b.seen("x-session-id"));
    assert!(on_b.cookie.is_none(), "a known session needs no new cookie");

    // Logout on B ends it on A too.
    let out = get(&b, "/", Some(&cookie), &["X-Session-Logout: 1"]).await;
    assert_eq!(out.status, StatusCode::OK);
    let after = get(&a, "/", Some(&cookie), &[]).await;
    assert_eq!(after.seen("x-session-user"), None);
    assert_ne!(after.seen("x-session-id"), on_a.seen("x-session-id"));
}

#[tokio::test]
async fn destroy_by_user_ends_the_users_sessions_on_every_instance() {
    let server = RedisServer::start().await;
    let app = App::start().await;
    let a = proxy(&app, &server, "").await;
    let b = proxy(&app, &server, "").await;
    let on_a = login(&a, "bob").await;
    let on_b = login(&b, "bob").await;
    let carol = login(&a, "carol").await;

    let admin = RedisStore::open(&store_config(&server.url()), None).unwrap();
    assert_eq!(
        admin.list_user("bob", now(), EXPIRY).await.unwrap().len(),
        2
    );
    assert_eq!(admin.destroy_user("bob").await.unwrap(), 2);

    for (proxy, cookie) in [(&a, &on_a), (&b, &on_b), (&b, &on_a), (&a, &on_b)] {
        let reply = get(proxy, "/", Some(cookie), &[]).await;
        assert_eq!(reply.seen("x-session-user"), None);
    }
    let reply = get(&b, "/", Some(&carol), &[]).await;
    assert_eq!(reply.seen("x-session-user").as_deref(), Some("carol"));
}

#[tokio::test]
async fn idle_sessions_expire_in_redis_by_their_ttl() {
    let server = RedisServer::start().await;
    let app = App::start().await;
    let p = proxy(
        &app,
        &server,
        "idle_timeout = \"1s\"\nabsolute_timeout = \"1h\"",
    )
    .await;
    let first = get(&p, "/", None, &[]).await;
    let cookie = first.cookie.clone().unwrap();
    let keys = redis_keys(&server.url()).await;
    let record = keys.iter().find(|k| k.starts_with("cloakroom:s:")).unwrap();
    let ttl = pttl(&server.url(), record).await;
    assert!(ttl > 0 && ttl <= 1_000, "ttl {ttl}");
    poll_until(
        Duration::from_secs(10),
        "Redis to expire the session",
        || {
            let url = server.url();
            async move { redis_keys(&url).await.is_empty() }
        },
    )
    .await;
    let again = get(&p, "/", Some(&cookie), &[]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_ne!(again.seen("x-session-id"), first.seen("x-session-id"));
    assert!(again.cookie.is_some(), "an expired session is replaced");
}

#[tokio::test]
async fn sessions_outlive_a_proxy_restart() {
    let server = RedisServer::start().await;
    let app = App::start().await;
    let first = proxy(&app, &server, "").await;
    let cookie = login(&first, "dora").await;
    let id = get(&first, "/", Some(&cookie), &[])
        .await
        .seen("x-session-id");
    drop(first);
    let second = proxy(&app, &server, "").await;
    let reply = get(&second, "/", Some(&cookie), &[]).await;
    assert_eq!(reply.seen("x-session-user").as_deref(), Some("dora"));
    assert_eq!(reply.seen("x-session-id"), id);
}

#[tokio::test]
async fn killed_redis_gives_503_with_retry_after_within_the_timeout_then_recovers() {
    let mut server = RedisServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &server, "").await;
    let cookie = login(&p, "erin").await;

    server.kill();
    for cookie in [Some(cookie.as_str()), None, Some(cookie.as_str()), None] {
        let before = app.count();
        let started = Instant::now();
        let reply = get(&p, "/", cookie, &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.retry_after.is_some());
        assert!(
            reply.cookie.is_none(),
            "no anonymous session while Redis is down"
        );
        // 250 ms per store call; generous room for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        if cookie.is_none() {
            assert_eq!(
                app.count(),
                before,
                "a new session was refused before forwarding"
            );
        }
    }
    let plain = get(&p, "/plain", None, &[]).await;
    assert_eq!(plain.status, StatusCode::OK);

    server.restart().await;
    poll_until(
        Duration::from_secs(15),
        "session routes to serve again",
        || {
            let p = &p;
            async move { get(p, "/", None, &[]).await.status == StatusCode::OK }
        },
    )
    .await;
}

#[tokio::test]
async fn hung_redis_gives_503_within_the_timeout_and_recovers_on_sigcont() {
    let server = RedisServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &server, "").await;
    let cookie = login(&p, "finn").await;

    server.pause();
    for cookie in [Some(cookie.as_str()), None, Some(cookie.as_str())] {
        let started = Instant::now();
        let reply = get(&p, "/", cookie, &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.retry_after.is_some());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    let plain = get(&p, "/plain", None, &[]).await;
    assert_eq!(plain.status, StatusCode::OK);

    server.resume();
    poll_until(
        Duration::from_secs(15),
        "the session to be served again",
        || {
            let (p, cookie) = (&p, &cookie);
            async move {
                let reply = get(p, "/", Some(cookie), &[]).await;
                reply.status == StatusCode::OK
                    && reply.seen("x-session-user").as_deref() == Some("finn")
            }
        },
    )
    .await;
}

#[tokio::test]
async fn rediss_with_a_private_ca_serves_sessions() {
    let pki = TestPki::new();
    let server = RedisServer::start_tls(&pki).await;
    let app = App::start().await;
    let lines = format!(
        "url = \"{}\"\nca = \"{}\"",
        server.url(),
        server.ca_file().unwrap().display()
    );
    let p = TestProxy::builder()
        .config(config(&app, "", &lines))
        .start()
        .await;
    let cookie = login(&p, "gus").await;
    let reply = get(&p, "/", Some(&cookie), &[]).await;
    assert_eq!(reply.seen("x-session-user").as_deref(), Some("gus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_on_one_instance_logs_alice_out_on_both_while_bob_keeps_his_session() {
    let app = App::start().await;
    let redis = RedisServer::start().await;
    let lines = format!("url = \"{}\"\ntimeout = \"250ms\"", redis.url());
    let a = TestProxy::builder()
        .config(config(&app, "", &lines))
        .admin_listener()
        .start()
        .await;
    let b = proxy(&app, &redis, "").await;
    let alice_on_a = login(&a, "alice").await;
    let alice_on_b = login(&b, "alice").await;
    let bob_on_b = login(&b, "bob").await;

    let admin = reqwest::Client::new();
    let listed = admin
        .get(a.admin_url("/sessions?user=alice"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 2, "both instances' sessions: {listed:?}");
    assert!(listed.iter().all(|s| s["user"] == "alice"));

    let ended = admin
        .delete(a.admin_url("/sessions?user=alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::OK);
    for (proxy, cookie) in [(&a, &alice_on_a), (&b, &alice_on_b)] {
        let reply = get(proxy, "/", Some(cookie), &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.seen("x-session-user"), None, "alice is logged out");
    }
    let bob = get(&a, "/", Some(&bob_on_b), &[]).await;
    assert_eq!(bob.seen("x-session-user").as_deref(), Some("bob"));
}
