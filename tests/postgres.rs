//! The PostgreSQL store against a real server (a throwaway cluster started by the
//! test): the store's own rules (touch throttle, atomic regeneration, sweep, token
//! hashing, outage and recovery), and whole proxies sharing one database: login and
//! logout seen by both instances, sessions surviving a restart of both, the database
//! stopped under requests (503 with `Retry-After` on session routes, `session = false`
//! routes unaffected, recovery once it is back), and `cloakroom schema`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloakroom::config::{PostgresConfig, PostgresUrl};
use cloakroom::session::store::PostgresStore;
use cloakroom::session::{
    random_bytes, Expiry, Identity, PublicId, Session, SessionIndex, SessionStore, StoreError,
    Sweep, Token,
};
use common::postgres::{unique_table, PgCluster};
use common::{poll_until, TestProxy, SOON};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const COOKIE: &str = "__Host-cloakroom";
const SECRET: &str = "0123456789abcdef0123456789abcdef-postgres-test";
const EXPIRY: Expiry = Expiry {
    idle_ms: 60_000,
    absolute_ms: 600_000,
    touch_ms: 10_000,
};

fn store_config(cluster: &PgCluster, table: &str) -> PostgresConfig {
    PostgresConfig {
        url: PostgresUrl(cluster.url()),
        root_cert: None,
        table: table.to_string(),
        pool: 4,
        timeout: Duration::from_millis(500),
    }
}

fn anon(now: u64) -> Session {
    Session::new(PublicId(random_bytes().unwrap()), now)
}

fn with_user(mut session: Session, user: &str) -> Session {
    session.identity = Some(Arc::new(Identity {
        user: Some(user.into()),
        roles: Some("staff".into()),
    }));
    session
}

/// The `last_seen_ms` the table holds for `public_id`.
async fn stored_last_seen(cluster: &PgCluster, table: &str, id: &PublicId) -> i64 {
    let client = cluster.client().await;
    let row = client
        .query_one(
            format!("SELECT last_seen_ms FROM {table} WHERE public_id = $1").as_str(),
            &[&id.0.as_slice()],
        )
        .await
        .unwrap();
    row.get(0)
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_use_is_written_at_most_once_per_touch_interval() {
    let cluster = PgCluster::shared();
    let table = unique_table("touch");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let session = anon(1_000_000);
    let token = store.create(&session, EXPIRY).await.unwrap();

    // Within touch_ms of the last write: read only.
    let loaded = store
        .load(&token, 1_005_000, EXPIRY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.public_id, session.public_id);
    assert_eq!(
        stored_last_seen(&cluster, &table, &session.public_id).await,
        1_000_000
    );
    // Past it: the use is recorded.
    let loaded = store
        .load(&token, 1_012_000, EXPIRY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.last_seen, 1_012_000);
    assert_eq!(
        stored_last_seen(&cluster, &table, &session.public_id).await,
        1_012_000
    );
    // Idle past idle_ms since the recorded use: gone, and never revived by the read.
    assert!(store
        .load(&token, 1_072_001, EXPIRY)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        stored_last_seen(&cluster, &table, &session.public_id).await,
        1_012_000
    );
}

#[tokio::test]
async fn the_table_holds_a_hash_of_the_token_never_the_token() {
    let cluster = PgCluster::shared();
    let table = unique_table("hash");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let token = store.create(&anon(1_000), EXPIRY).await.unwrap();
    let client = cluster.client().await;
    let row = client
        .query_one(format!("SELECT token_hash FROM {table}").as_str(), &[])
        .await
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, token.0.to_vec());
    let digest = ring::digest::digest(&ring::digest::SHA256, &token.0);
    assert_eq!(stored, digest.as_ref().to_vec());
}

#[tokio::test]
async fn regeneration_kills_the_old_token_and_keeps_the_session() {
    let cluster = PgCluster::shared();
    let table = unique_table("regen");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let session = anon(1_000);
    let old = store.create(&session, EXPIRY).await.unwrap();
    let fresh = store
        .regenerate(&old, &with_user(session.clone(), "ann"), EXPIRY)
        .await
        .unwrap();
    assert_ne!(old, fresh);
    assert!(store.load(&old, 2_000, EXPIRY).await.unwrap().is_none());
    let loaded = store.load(&fresh, 2_000, EXPIRY).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("ann"));
    assert_eq!(loaded.public_id, session.public_id);
    assert_eq!(store.count().await.unwrap(), 1);
    let listed = store.list_user("ann", 2_000, EXPIRY).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].roles.as_deref(), Some("staff"));
    assert_eq!(store.destroy_user("ann").await.unwrap(), 1);
    assert!(store.load(&fresh, 2_000, EXPIRY).await.unwrap().is_none());
}

#[tokio::test]
async fn expiry_sweep_removes_expired_rows_only() {
    let cluster = PgCluster::shared();
    let table = unique_table("sweep");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    // 1,200 sessions idle since t=0 (more than two sweep batches), 3 seen at t=50 s.
    let expired: Vec<Session> = (0..1_200).map(|_| anon(0)).collect();
    for chunk in expired.chunks(100) {
        let creates = chunk.iter().map(|s| store.create(s, EXPIRY));
        for result in futures_util::future::join_all(creates).await {
            result.unwrap();
        }
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(store.create(&anon(50_000), EXPIRY).await.unwrap());
    }
    assert_eq!(store.count().await.unwrap(), 1_203);

    let removed = store.sweep(70_000, EXPIRY).await.unwrap();
    assert_eq!(removed, 1_200);
    assert_eq!(store.count().await.unwrap(), 3);
    for token in &live {
        assert!(store.load(token, 70_000, EXPIRY).await.unwrap().is_some());
    }
    assert_eq!(store.sweep(70_000, EXPIRY).await.unwrap(), 0);
}

#[tokio::test]
async fn a_stopped_database_fails_fast_and_the_store_recovers_by_itself() {
    let cluster = PgCluster::start();
    let table = unique_table("outage");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let token = store
        .create(&with_user(anon(1_000), "bo"), EXPIRY)
        .await
        .unwrap();
    assert!(store.ping().await.is_ok());

    cluster.stop_server();
    // The first call finds out; from then on calls fail at once and readiness fails.
    assert!(store.load(&token, 2_000, EXPIRY).await.is_err());
    assert!(store.known_down());
    assert!(store.ping().await.is_err());
    let started = Instant::now();
    assert!(store.load(&token, 2_000, EXPIRY).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(400));

    cluster.start_server();
    poll_until(SOON, "the store to see the database again", || async {
        !store.known_down()
    })
    .await;
    let loaded = store.load(&token, 2_000, EXPIRY).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("bo"));
}

#[tokio::test]
async fn a_hung_database_times_out_then_fails_fast_and_recovers() {
    let cluster = PgCluster::start();
    let table = unique_table("hung");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let token = store
        .create(&with_user(anon(1_000), "hu"), EXPIRY)
        .await
        .unwrap();

    cluster.pause();
    let started = Instant::now();
    let result = store.load(&token, 2_000, EXPIRY).await;
    assert!(matches!(result, Err(StoreError::Timeout)), "{result:?}");
    // The 500 ms timeout, with a wide margin for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The probe confirms it; then calls fail without waiting.
    poll_until(SOON, "the store to mark the database down", || async {
        store.known_down()
    })
    .await;
    let started = Instant::now();
    assert!(store.load(&token, 2_000, EXPIRY).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(400));

    cluster.resume();
    poll_until(SOON, "the store to see the database again", || async {
        !store.known_down()
    })
    .await;
    let loaded = store.load(&token, 2_000, EXPIRY).await.unwrap().unwrap();
    assert_eq!(loaded.user(), Some("hu"));
}

#[tokio::test]
async fn a_store_opened_while_the_database_is_down_migrates_when_it_comes_up() {
    let cluster = PgCluster::start();
    cluster.stop_server();
    let table = unique_table("late");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    assert!(store.known_down());
    assert!(store.create(&anon(1_000), EXPIRY).await.is_err());
    cluster.start_server();
    poll_until(SOON, "the store to come up", || async {
        !store.known_down()
    })
    .await;
    let token = store.create(&anon(1_000), EXPIRY).await.unwrap();
    assert!(store.load(&token, 1_500, EXPIRY).await.unwrap().is_some());
}

#[tokio::test]
async fn schema_command_prints_a_script_the_store_then_uses_without_ddl() {
    let cluster = PgCluster::shared();
    let table = unique_table("dba");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloakroom"))
        .args(["schema", "--table", &table])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")));
    let client = cluster.client().await;
    client.batch_execute(&script).await.unwrap();
    // A role that may use the table but not create anything: the store must run no DDL.
    let role = format!("{table}_app");
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; \
             REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}; \
             GRANT SELECT ON cloakroom_schema TO {role};"
        ))
        .await
        .unwrap();
    let mut config = store_config(&cluster, &table);
    config.url = PostgresUrl(format!(
        "postgres://{role}@127.0.0.1:{}/postgres",
        cluster.port
    ));
    let store = PostgresStore::open(&config).await.unwrap();
    let token = store.create(&anon(1_000), EXPIRY).await.unwrap();
    assert!(store.load(&token, 1_000, EXPIRY).await.unwrap().is_some());

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_cloakroom"))
        .args(["schema", "--table", "x;drop"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// Whole proxies
// ---------------------------------------------------------------------------------------

/// An upstream scripted by path: `/login/NAME` logs NAME in, `/logout` logs out, any
/// other path answers the `X-Session-User` it received (empty when none).
struct App {
    addr: SocketAddr,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        async move {
                            let path = request.uri().path().to_string();
                            let user = request
                                .headers()
                                .get("x-session-user")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let mut response = http::Response::new(Full::new(Bytes::from(user)));
                            if let Some(name) = path.strip_prefix("/login/") {
                                response
                                    .headers_mut()
                                    .insert("x-session-set-user", name.parse().unwrap());
                            } else if path == "/logout" {
                                response
                                    .headers_mut()
                                    .insert("x-session-logout", "1".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, hits, accept }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A proxy in front of `app` with the PostgreSQL store; `/plain` is a
/// `session = false` route.
async fn proxy(cluster: &PgCluster, table: &str, app: &App) -> TestProxy {
    TestProxy::builder()
        .config(format!(
            "[session]\nstore = \"postgres\"\nsecret = \"{SECRET}\"\n\n\
             [session.postgres]\nurl = \"{url}\"\ntable = \"{table}\"\npool = 4\ntimeout = \"500ms\"\n\n\
             [upstreams.app]\nservers = [\"{app}\"]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n\n\
             [[routes]]\npath = \"/plain\"\nupstream = \"app\"\nsession = false\n",
            url = cluster.url(),
            app = app.addr,
        ))
        .start()
        .await
}

struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    cookie: Option<String>,
    body: String,
}

async fn get(proxy: &TestProxy, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = proxy.client().get(proxy.url(path));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let cookie = header("set-cookie").into_iter().find_map(|c| {
        let value = c
            .strip_prefix(&format!("{COOKIE}="))?
            .split(';')
            .next()?
            .to_string();
        (!value.is_empty()).then_some(value)
    });
    let retry_after = header("retry-after").into_iter().next();
    Reply {
        status: response.status(),
        retry_after,
        cookie,
        body: response.text().await.unwrap(),
    }
}

/// Starts a session on `proxy` and logs it in as `user`; returns the cookie value.
async fn logged_in(proxy: &TestProxy, user: &str) -> String {
    let first = get(proxy, "/", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let anonymous = first.cookie.expect("a new session sets a cookie");
    let login = get(proxy, &format!("/login/{user}"), Some(&anonymous)).await;
    assert_eq!(login.status, StatusCode::OK);
    login.cookie.expect("login sets a fresh cookie")
}

#[tokio::test]
async fn two_instances_share_login_and_logout() {
    let cluster = PgCluster::shared();
    let table = unique_table("pair");
    let app = App::start().await;
    let a = proxy(&cluster, &table, &app).await;
    let b = proxy(&cluster, &table, &app).await;

    let cookie = logged_in(&a, "ann").await;
    assert_eq!(get(&b, "/", Some(&cookie)).await.body, "ann");
    assert_eq!(get(&a, "/", Some(&cookie)).await.body, "ann");

    let logout = get(&b, "/logout", Some(&cookie)).await;
    assert_eq!(logout.status, StatusCode::OK);
    let after = get(&a, "/", Some(&cookie)).await;
    assert_eq!(
        after.body, "",
        "instance A still sees the user after logout on B"
    );
    assert!(
        after.cookie.is_some(),
        "a dead cookie starts a fresh session"
    );
}

#[tokio::test]
async fn sessions_survive_a_restart_of_both_instances() {
    let cluster = PgCluster::shared();
    let table = unique_table("restart");
    let app = App::start().await;
    let cookie = {
        let a = proxy(&cluster, &table, &app).await;
        let _b = proxy(&cluster, &table, &app).await;
        logged_in(&a, "cy").await
    };
    // Both instances are gone; two new ones find the session in the database.
    let a = proxy(&cluster, &table, &app).await;
    let b = proxy(&cluster, &table, &app).await;
    poll_until(
        SOON,
        "the new instance to serve the old session",
        || async { get(&a, "/", Some(&cookie)).await.body == "cy" },
    )
    .await;
    assert_eq!(get(&b, "/", Some(&cookie)).await.body, "cy");
}

#[tokio::test]
async fn database_stopped_under_requests_gives_503_then_recovers() {
    let cluster = PgCluster::start();
    let table = unique_table("down");
    let app = App::start().await;
    let proxy = proxy(&cluster, &table, &app).await;
    let cookie = logged_in(&proxy, "di").await;

    cluster.stop_server();
    for _ in 0..5 {
        let started = Instant::now();
        let reply = get(&proxy, "/", Some(&cookie)).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert!(reply.retry_after.is_some(), "503 without Retry-After");
        // Within the 500 ms store timeout, with a wide margin for a loaded machine.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    // Known down: a request that would start a session is refused before the upstream.
    let hits = app.hits();
    let fresh = get(&proxy, "/", None).await;
    assert_eq!(fresh.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.hits(), hits, "the request reached the upstream");
    // Routes without sessions are unaffected.
    let plain = get(&proxy, "/plain", None).await;
    assert_eq!(plain.status, StatusCode::OK);

    cluster.start_server();
    poll_until(SOON, "session routes to work again", || async {
        get(&proxy, "/", Some(&cookie)).await.status == StatusCode::OK
    })
    .await;
    assert_eq!(get(&proxy, "/", Some(&cookie)).await.body, "di");
}

#[tokio::test]
async fn sslmode_require_connects_over_tls_to_a_server_signed_by_sslrootcert() {
    let pki = common::TestPki::new();
    let leaf = pki.default_leaf("postgres test server");
    let cluster = PgCluster::start_with_tls(&leaf.cert_pem, &leaf.key_pem);
    let ca = cluster.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let mut config = store_config(&cluster, &unique_table("tls"));
    config.url = PostgresUrl(format!("{}?sslmode=require", cluster.url()));
    config.root_cert = Some(ca);
    let store = PostgresStore::open(&config).await.unwrap();
    let token = store.create(&anon(1_000), EXPIRY).await.unwrap();
    assert!(store.load(&token, 1_500, EXPIRY).await.unwrap().is_some());
    let client = cluster.client().await;
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'cloakroom'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "no TLS connection from the store");

    // Without the CA the server's certificate does not verify: no connection.
    let mut untrusted = config.clone();
    untrusted.root_cert = None;
    let store = PostgresStore::open(&untrusted).await.unwrap();
    assert!(store.known_down());
}

#[tokio::test]
async fn a_wrong_token_is_no_session_not_an_error() {
    let cluster = PgCluster::shared();
    let table = unique_table("unknown");
    let store = PostgresStore::open(&store_config(&cluster, &table))
        .await
        .unwrap();
    let token = Token(random_bytes().unwrap());
    assert!(store.load(&token, 1_000, EXPIRY).await.unwrap().is_none());
    store.destroy(&token).await.unwrap();
    store.save(&token, &anon(1_000), EXPIRY).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 0, "save must not create (XX)");
}
