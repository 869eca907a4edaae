//! The Memcached session store against real `memcached` processes (started per test on
//! ephemeral ports): two proxy instances sharing one server; two servers listed in
//! different orders agreeing on where each session lives; a server killed under
//! requests (its share answers 503 with `Retry-After` within the timeout, the rest keep
//! working, never an anonymous session for a logged-in cookie, then recovery); a hung
//! server; eviction under a small `-m` (a fresh anonymous session, never an error);
//! logout everywhere across instances; and what an evicted user index weakens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use cloakroom::config::MemcachedConfig;
use cloakroom::session::store::MemcachedStore;
use cloakroom::session::{Expiry, SessionIndex};
use common::memcached::MemcachedServer;
use common::scripted::{config, get, login, send, App, Reply};
use common::{poll_until, TestProxy};
use reqwest::{Method, StatusCode};

const SECRET: &str = "0123456789abcdef0123456789abcdef-memcached-test";

/// `[session]` on Memcached at `servers`, with `timeout`.
fn session(servers: &[String], timeout: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "store = \"memcached\"\nsecret = \"{SECRET}\"\n\n[session.memcached]\n\
         servers = [{list}]\ntimeout = \"{timeout}\""
    )
}

/// A proxy in front of `app` with sessions on `servers`; `/` a session route, `/plain`
/// a `session = false` route.
async fn proxy(app: &App, servers: &[String], admin: bool) -> TestProxy {
    let text = config(
        &app.server(),
        &session(servers, "250ms"),
        "",
        "[[routes]]\npath = \"/plain\"\nupstream = \"app\"\nsession = false\n",
    );
    let mut builder = TestProxy::builder().config(text);
    if admin {
        builder = builder.admin_listener();
    }
    builder.start().await
}

/// Logs a fresh session in as `user`; returns its cookie.
async fn logged_in(proxy: &TestProxy, user: &str) -> String {
    let reply = login(proxy, None, user, "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.cookie()
}

fn store_config(servers: &[String]) -> MemcachedConfig {
    MemcachedConfig {
        servers: servers.to_vec(),
        prefix: "cloakroom:".into(),
        timeout: Duration::from_millis(500),
    }
}

const EXPIRY: Expiry = Expiry {
    idle_ms: 1_800_000,
    absolute_ms: 43_200_000,
    touch_ms: 180_000,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_login_one_session_id_and_one_logout() {
    let server = MemcachedServer::start().await;
    let app = App::start().await;
    let a = proxy(&app, &[server.address()], false).await;
    let b = proxy(&app, &[server.address()], false).await;

    let cookie = logged_in(&a, "ann").await;
    let on_a = get(&a, "/", Some(&cookie)).await;
    let on_b = get(&b, "/", Some(&cookie)).await;
    assert_eq!(on_b.user().as_deref(), Some("ann"));
    assert_eq!(on_a.id(), on_b.id());
    assert!(
        on_b.our_set_cookie().is_none(),
        "a known session needs no new cookie"
    );

    // Logout on B ends it on A too.
    let out = send(
        &b.client(),
        Method::GET,
        &b.url("/"),
        Some(&cookie),
        &[("x-reply", "X-Session-Logout: 1")],
    )
    .await;
    assert_eq!(out.status, StatusCode::OK);
    let after = get(&a, "/", Some(&cookie)).await;
    assert_eq!(after.user(), None);
    assert_ne!(after.id(), on_a.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_listed_in_different_orders_agree_and_share_the_sessions() {
    let (one, two) = (
        MemcachedServer::start().await,
        MemcachedServer::start().await,
    );
    let app = App::start().await;
    let a = proxy(&app, &[one.address(), two.address()], false).await;
    let b = proxy(&app, &[two.address(), one.address()], false).await;

    let mut cookies = Vec::new();
    for i in 0..24 {
        let user = format!("user{i}");
        let on = if i % 2 == 0 { &a } else { &b };
        cookies.push((user.clone(), logged_in(on, &user).await));
    }
    for (user, cookie) in &cookies {
        for instance in [&a, &b] {
            let reply = get(instance, "/", Some(cookie)).await;
            assert_eq!(reply.user().as_deref(), Some(user.as_str()));
        }
    }
    // Both servers hold sessions (24 sessions, each with its mapping and user index).
    let (on_one, on_two) = (one.stat("curr_items"), two.stat("curr_items"));
    assert!(on_one > 0 && on_two > 0, "{on_one} / {on_two} items");
    assert!(on_one + on_two >= 24 * 3, "{on_one} + {on_two} items");
}

/// The logged-in cookies among `cookies` that the proxy still serves (200 with their
/// user), and those that answer 503; any other answer fails the test.
async fn served(proxy: &TestProxy, cookies: &[(String, String)]) -> (usize, usize) {
    let (mut ok, mut unavailable) = (0, 0);
    for (user, cookie) in cookies {
        let started = Instant::now();
        let reply = get(proxy, "/", Some(cookie)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        match reply.status {
            StatusCode::OK => {
                assert_eq!(reply.user().as_deref(), Some(user.as_str()));
                ok += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(reply.header("retry-after").is_some());
                assert!(reply.our_set_cookie().is_none(), "no anonymous session");
                unavailable += 1;
            }
            other => panic!("{other}: {}", reply.body),
        }
    }
    (ok, unavailable)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_costs_only_its_share_then_recovers() {
    let one = MemcachedServer::start().await;
    let mut two = MemcachedServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &[one.address(), two.address()], true).await;
    let mut cookies = Vec::new();
    for i in 0..20 {
        let user = format!("kim{i}");
        cookies.push((user.clone(), logged_in(&p, &user).await));
    }

    // Requests keep coming while the server dies.
    let load = {
        let (client, url, cookies) = (p.client(), p.url("/"), cookies.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_millis(1500);
            let mut seen = 0;
            while Instant::now() < deadline {
                for (user, cookie) in &cookies {
                    let reply = send(&client, Method::GET, &url, Some(cookie), &[]).await;
                    match reply.status {
                        StatusCode::OK => assert_eq!(reply.user().as_deref(), Some(user.as_str())),
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert!(reply.our_set_cookie().is_none())
                        }
                        other => panic!("{other} under load: {}", reply.body),
                    }
                    seen += 1;
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    two.kill();
    assert!(load.await.unwrap() > 0);

    let (ok, unavailable) = served(&p, &cookies).await;
    assert!(ok > 0 && unavailable > 0, "{ok} served, {unavailable} 503");
    // New sessions land on the server that answers; plain routes never cared.
    for _ in 0..5 {
        let fresh = get(&p, "/", None).await;
        assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.body);
        fresh.cookie();
    }
    assert_eq!(get(&p, "/plain", None).await.status, StatusCode::OK);
    // One server answers: the instance stays ready.
    let ready = reqwest::get(p.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Back (empty): its sessions start afresh, the others kept theirs.
    two.restart().await;
    poll_until(
        Duration::from_secs(15),
        "every cookie to be answered",
        || {
            let (p, cookies) = (&p, &cookies);
            async move {
                let mut all = true;
                for (_, cookie) in cookies {
                    all &= get(p, "/", Some(cookie)).await.status == StatusCode::OK;
                }
                all
            }
        },
    )
    .await;
    let mut kept = 0;
    for (user, cookie) in &cookies {
        let reply = get(&p, "/", Some(cookie)).await;
        if reply.user().as_deref() == Some(user.as_str()) {
            kept += 1;
        } else {
            assert_eq!(reply.user(), None);
            reply.cookie();
        }
    }
    assert_eq!(kept, ok, "the sessions of the live server were kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_server_killed_gives_503_within_the_timeout_not_ready_then_recovers() {
    let mut server = MemcachedServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &[server.address()], true).await;
    let cookie = logged_in(&p, "erin").await;

    server.kill();
    for cookie in [Some(cookie.as_str()), None, Some(cookie.as_str()), None] {
        let before = app.count();
        let started = Instant::now();
        let reply = get(&p, "/", cookie).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.header("retry-after").is_some());
        assert!(reply.our_set_cookie().is_none());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        if cookie.is_none() {
            assert_eq!(app.count(), before, "refused before forwarding");
        }
    }
    let ready = reqwest::get(p.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&p, "/plain", None).await.status, StatusCode::OK);

    server.restart().await;
    poll_until(
        Duration::from_secs(15),
        "session routes to serve again",
        || {
            let p = &p;
            async move { get(p, "/", None).await.status == StatusCode::OK }
        },
    )
    .await;
    let ready = reqwest::get(p.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_gives_503_within_the_timeout_and_recovers_on_sigcont() {
    let server = MemcachedServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &[server.address()], false).await;
    let cookie = logged_in(&p, "finn").await;

    server.pause();
    for cookie in [Some(cookie.as_str()), None, Some(cookie.as_str())] {
        let started = Instant::now();
        let reply = get(&p, "/", cookie).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert!(reply.header("retry-after").is_some());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    server.resume();
    poll_until(
        Duration::from_secs(15),
        "the session to be served again",
        || {
            let (p, cookie) = (&p, &cookie);
            async move {
                let reply = get(p, "/", Some(cookie)).await;
                reply.status == StatusCode::OK && reply.user().as_deref() == Some("finn")
            }
        },
    )
    .await;
}

/// Writes `count` items of about a session's size (and around it) straight into `server` (pipelined,
/// quiet), to push older items out of a small memory limit.
fn fill(port: u16, count: usize) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = Vec::new();
    for i in 0..count {
        // Sizes around a session record's, so every slab class a session may use fills.
        let size = 20 + (i * 7) % 200;
        out.extend_from_slice(format!("ms other-app:{i:08} {size} T0 q\r\n").as_bytes());
        out.extend_from_slice(&vec![b'x'; size]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"mn\r\n");
    stream.write_all(&out).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"MN\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_is_a_fresh_anonymous_session_never_an_error() {
    let server = MemcachedServer::start_with_memory(2).await;
    let app = App::start().await;
    let p = proxy(&app, &[server.address()], false).await;
    let cookie = logged_in(&p, "gail").await;
    let id = get(&p, "/", Some(&cookie)).await.id();

    let port = server.port;
    tokio::task::spawn_blocking(move || fill(port, 150_000))
        .await
        .unwrap();
    assert!(server.stat("evictions") > 0, "nothing was evicted");

    let reply = get(&p, "/", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.user(), None, "the evicted login is not served");
    assert_ne!(reply.id(), id);
    let fresh = reply.cookie();
    // The fresh session works like any other, even while the server stays full.
    let again = get(&p, "/", Some(&fresh)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.id(), reply.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_everywhere_ends_the_users_sessions_on_every_instance() {
    let server = MemcachedServer::start().await;
    let app = App::start().await;
    let a = proxy(&app, &[server.address()], true).await;
    let b = proxy(&app, &[server.address()], false).await;
    let alice_on_a = logged_in(&a, "alice").await;
    let alice_on_b = logged_in(&b, "alice").await;
    let alice_laptop = logged_in(&b, "alice").await;
    let bob = logged_in(&a, "bob").await;

    // The admin API on A sees the sessions made on both.
    let listed = reqwest::get(a.admin_url("/sessions?user=alice"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");

    // The app on B says "everywhere" for one of alice's sessions.
    let out: Reply = send(
        &b.client(),
        Method::GET,
        &b.url("/"),
        Some(&alice_laptop),
        &[("x-reply", "X-Session-Logout: everywhere")],
    )
    .await;
    assert_eq!(out.status, StatusCode::OK);
    for (instance, cookie) in [(&a, &alice_on_a), (&b, &alice_on_b), (&a, &alice_laptop)] {
        let reply = get(instance, "/", Some(cookie)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.user(), None, "alice is logged out");
    }
    let reply = get(&b, "/", Some(&bob)).await;
    assert_eq!(reply.user().as_deref(), Some("bob"));
}

/// The key of `user`'s index item (see `session::store::memcached::keys`).
fn index_key(user: &str) -> String {
    use base64::Engine as _;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"user\0");
    context.update(user.as_bytes());
    let digest = context.finish();
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..18]);
    format!("cloakroom:u:{hash}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_user_index_weakens_logout_everywhere_but_never_errs() {
    let server = MemcachedServer::start().await;
    let app = App::start().await;
    let p = proxy(&app, &[server.address()], false).await;
    let first = logged_in(&p, "hana").await;
    let store = MemcachedStore::open(&store_config(&[server.address()]));
    let now = cloakroom::session::now_ms();
    assert_eq!(store.list_user("hana", now, EXPIRY).await.unwrap().len(), 1);

    // What an eviction of the index item does (the session items stay).
    assert!(server.delete(&index_key("hana")), "the index item exists");
    assert!(store
        .list_user("hana", now, EXPIRY)
        .await
        .unwrap()
        .is_empty());
    let second = logged_in(&p, "hana").await;
    // The new index knows only the second session: the documented limit. Logout
    // everywhere ends that one; the first lives on until its own timeout.
    assert_eq!(store.list_user("hana", now, EXPIRY).await.unwrap().len(), 1);
    assert_eq!(store.destroy_user("hana").await.unwrap(), 1);
    assert_eq!(get(&p, "/", Some(&second)).await.user(), None);
    assert_eq!(
        get(&p, "/", Some(&first)).await.user().as_deref(),
        Some("hana")
    );
    // No index at all is no error.
    assert_eq!(store.destroy_user("hana").await.unwrap(), 0);
    assert!(store
        .list_user("nobody", now, EXPIRY)
        .await
        .unwrap()
        .is_empty());
}
