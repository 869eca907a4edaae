//! A store that restarts while the proxy runs (issue 15): once session routes answer
//! again, they keep answering. Every worker's link to Redis, and every pooled
//! PostgreSQL connection, still holds a socket to the dead server; each must reconnect
//! and retry by itself, without a 503 and without marking the whole store down.
//!
//! The store-level tests restart the server while the test's runtime is blocked (the
//! restart is a blocking call), so no connection has noticed its dead socket when the
//! next operation starts: that operation must succeed, and the store must not be
//! marked down.
//!
//! The proxy tests warm the links (requests over new client connections, so they land on
//! every worker), kills the server and starts it again on the same port, waits for the
//! first 200 on a session route, logs in at once, and then sends 30 requests, each
//! over a new client connection: all must succeed and the login must stick. Run with
//! `workers = 1` and `workers = 4`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use cloakroom::config::{PostgresConfig, PostgresUrl, RedisConfig};
use cloakroom::session::store::PostgresStore;
use cloakroom::session::{random_bytes, Expiry, PublicId, RedisStore, Session, SessionStore};
use common::postgres::{unique_table, PgCluster};
use common::redis::RedisServer;
use common::session_app::{get, login, App};
use common::{poll_until, TestProxy, SOON};
use reqwest::StatusCode;

const SECRET: &str = "0123456789abcdef0123456789abcdef-recovery-test";

const EXPIRY: Expiry = Expiry {
    idle_ms: 60_000,
    absolute_ms: 600_000,
    touch_ms: 10_000,
};

fn anon(now: u64) -> Session {
    Session::new(PublicId(random_bytes().unwrap()), now)
}

#[tokio::test]
async fn redis_store_retries_on_a_new_connection_after_a_restart_and_stays_up() {
    let mut server = RedisServer::start().await;
    let store = RedisStore::open(
        &RedisConfig {
            url: server.url(),
            prefix: "cloakroom:".to_owned(),
            timeout: Duration::from_secs(1),
            urls: Vec::new(),
            ca: None,
            sentinel: None,
        },
        None,
    )
    .unwrap();
    let now = cloakroom::session::now_ms();
    let token = store.create(&anon(now), EXPIRY).await.unwrap();
    assert!(store.load(&token, now, EXPIRY).await.unwrap().is_some());

    server.restart().await;
    // The link still holds the old socket: the command fails on it, runs again on
    // the new connection, and finds the (empty) new server.
    assert!(store.load(&token, now, EXPIRY).await.unwrap().is_none());
    assert!(!store.known_down(), "one broken link marked the store down");
    let token = store.create(&anon(now), EXPIRY).await.unwrap();
    assert!(store.load(&token, now, EXPIRY).await.unwrap().is_some());
}

#[tokio::test]
async fn postgres_store_replaces_pooled_connections_that_died_and_stays_up() {
    let cluster = PgCluster::start();
    let store = PostgresStore::open(&PostgresConfig {
        url: PostgresUrl(cluster.url()),
        root_cert: None,
        table: unique_table("stale"),
        pool: 4,
        timeout: Duration::from_secs(1),
    })
    .await
    .unwrap();
    let token = store.create(&anon(1_000), EXPIRY).await.unwrap();
    // Four operations at once: the pool holds four connections.
    let loads = (0..4).map(|_| store.load(&token, 2_000, EXPIRY));
    for loaded in futures_util::future::join_all(loads).await {
        assert!(loaded.unwrap().is_some());
    }

    // Blocking: no connection's driver runs until the next operation awaits.
    cluster.kill_server();
    cluster.start_server();
    let loaded = store.load(&token, 3_000, EXPIRY).await;
    assert!(
        matches!(loaded, Ok(Some(_))),
        "the operation was not retried on a live connection: {loaded:?}"
    );
    assert!(
        !store.known_down(),
        "one dead connection marked the store down"
    );
    for _ in 0..8 {
        assert!(store.load(&token, 3_000, EXPIRY).await.unwrap().is_some());
    }
}

/// A proxy with `workers` event loops, the `[session]` store lines `store`, and `/`
/// a session route to `app`.
async fn proxy(app: &App, workers: usize, store: &str) -> TestProxy {
    TestProxy::builder()
        .listen(format!("workers = {workers}"))
        .config(format!(
            "[session]\nsecret = \"{SECRET}\"\n{store}\n\n\
             [upstreams.app]\nservers = [\"{}\"]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
            app.addr
        ))
        .start()
        .await
}

/// Uses the store from every worker: new sessions and logged-in requests, some of
/// them at the same time (so a pool holds several connections), each over a new
/// client connection.
async fn warm_up(proxy: &TestProxy) {
    let cookie = login(proxy, "warm").await;
    for _ in 0..4 {
        let requests = (0..6).map(|i| {
            let cookie = (i % 2 == 0).then_some(cookie.as_str());
            get(proxy, "/", cookie)
        });
        for reply in futures_util::future::join_all(requests).await {
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        }
    }
}

/// After the store came back: the first 200, a login at once, then 30 requests over
/// new connections (logged-in ones and new sessions, in turn) that all succeed.
async fn serves_cleanly_after_recovery(proxy: &TestProxy) {
    poll_until(SOON, "a session route to answer 200 again", || async {
        get(proxy, "/", None).await.status == StatusCode::OK
    })
    .await;
    let cookie = login(proxy, "zoe").await;
    let mut failed = Vec::new();
    for i in 0..30 {
        let reply = if i % 2 == 0 {
            get(proxy, "/", Some(&cookie)).await
        } else {
            get(proxy, "/", None).await
        };
        let ok = reply.status == StatusCode::OK
            && if i % 2 == 0 {
                reply.body == "zoe"
            } else {
                reply.cookie.is_some()
            };
        if !ok {
            failed.push((i, reply));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 30 requests after recovery failed: {failed:?}",
        failed.len()
    );
}

async fn redis_restart_is_served_cleanly(workers: usize) {
    let mut server = RedisServer::start().await;
    let app = App::start().await;
    let store = format!(
        "store = \"redis\"\n\n[session.redis]\nurl = \"{}\"\ntimeout = \"1s\"",
        server.url()
    );
    let proxy = proxy(&app, workers, &store).await;
    warm_up(&proxy).await;

    server.kill();
    let down = get(&proxy, "/", None).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{down:?}");
    server.restart().await;

    serves_cleanly_after_recovery(&proxy).await;
}

#[tokio::test]
async fn redis_restarted_on_its_port_is_served_without_503s_by_one_worker() {
    redis_restart_is_served_cleanly(1).await;
}

#[tokio::test]
async fn redis_restarted_on_its_port_is_served_without_503s_by_four_workers() {
    redis_restart_is_served_cleanly(4).await;
}

async fn postgres_restart_is_served_cleanly(workers: usize) {
    let cluster = PgCluster::start();
    let app = App::start().await;
    let store = format!(
        "store = \"postgres\"\n\n[session.postgres]\nurl = \"{}\"\ntable = \"{}\"\n\
         pool = 4\ntimeout = \"1s\"",
        cluster.url(),
        unique_table("recovery")
    );
    let proxy = proxy(&app, workers, &store).await;
    warm_up(&proxy).await;
    let before = login(&proxy, "yves").await;

    cluster.kill_server();
    let down = get(&proxy, "/", Some(&before)).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{down:?}");
    cluster.start_server();

    serves_cleanly_after_recovery(&proxy).await;
    // The database kept its rows: the login from before the crash is still there.
    let kept = get(&proxy, "/", Some(&before)).await;
    assert_eq!(
        (kept.status, kept.body.as_str()),
        (StatusCode::OK, "yves"),
        "{kept:?}"
    );
}

#[tokio::test]
async fn postgres_killed_and_restarted_is_served_without_503s_by_one_worker() {
    postgres_restart_is_served_cleanly(1).await;
}

#[tokio::test]
async fn postgres_killed_and_restarted_is_served_without_503s_by_four_workers() {
    postgres_restart_is_served_cleanly(4).await;
}
