//! Sessions that outlive one process, end to end: the cookie store shared by two proxy
//! instances (login, data, logout, tampering, another secret, `previous_secrets`,
//! `hash` affinity agreeing across instances, the 4 KB bound), and the memory store's
//! `persist` snapshot across a restart (with a rotated secret, and a corrupt file).
//! The Redis and PostgreSQL stores have their own files.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::scripted::*;
use common::{poll_until, TestProxy, SOON};
use reqwest::{Method, StatusCode};

const SECRET: &str = "shared-state-secret-0123456789abcdef";
const OTHER_SECRET: &str = "shared-state-other-secret-0123456789";

/// `[session]` keys for the cookie store under `secret` (and `previous`).
fn cookie_session(secret: &str, previous: &[&str]) -> String {
    let previous: Vec<String> = previous.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "store = \"cookie\"\nsecret = \"{secret}\"\nprevious_secrets = [{}]",
        previous.join(", ")
    )
}

/// Sends `replies` as `x-reply` headers (the app answers with them).
async fn reply_with(proxy: &TestProxy, cookie: Option<&str>, replies: &[String]) -> Reply {
    let headers: Vec<(&str, &str)> = replies.iter().map(|r| ("x-reply", r.as_str())).collect();
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        cookie,
        &headers,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_login_data_and_public_id_are_shared_by_two_instances() {
    let app = App::start().await;
    let a = start(config(&app.server(), &cookie_session(SECRET, &[]), "", "")).await;
    let b = start(config(&app.server(), &cookie_session(SECRET, &[]), "", "")).await;

    let first = get(&a, "/", None).await;
    let id = first.id();
    let logged_in = login(&a, Some(&first.cookie()), "alice", "admin,dev").await;
    let cookie = logged_in.cookie();
    let with_data = reply_with(&a, Some(&cookie), &["X-Session-Set-Data: cart=3".into()]).await;
    let cookie = with_data.cookie();

    let on_b = get(&b, "/", Some(&cookie)).await;
    assert_eq!(on_b.id(), id, "one session id across instances");
    assert_eq!(on_b.user().as_deref(), Some("alice"));
    assert_eq!(
        on_b.seen_one("x-session-roles").as_deref(),
        Some("admin,dev")
    );
    assert_eq!(on_b.seen_one("x-session-data").as_deref(), Some("cart=3"));
    // The proxy's cookie never reaches the app, and fits what browsers keep.
    assert!(on_b.seen("cookie").is_empty());
    assert!(cookie.len() < 400, "{} bytes", cookie.len());

    // Logout on B expires the cookie in the browser.
    let out = reply_with(&b, Some(&cookie), &["X-Session-Logout: 1".into()]).await;
    let set = out.our_set_cookie().expect("an expiring Set-Cookie");
    assert!(set.contains("Max-Age=0"), "{set}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_refuses_tampered_and_foreign_cookies_and_accepts_previous_secrets() {
    let app = App::start().await;
    let old = start(config(&app.server(), &cookie_session(SECRET, &[]), "", "")).await;
    let other = start(config(
        &app.server(),
        &cookie_session(OTHER_SECRET, &[]),
        "",
        "",
    ))
    .await;
    let rotated = start(config(
        &app.server(),
        &cookie_session(OTHER_SECRET, &[SECRET]),
        "",
        "",
    ))
    .await;

    let cookie = login(&old, None, "bob", "").await.cookie();
    let id = get(&old, "/", Some(&cookie)).await.id();

    let mut bytes = cookie.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    for (proxy, value, what) in [
        (&old, tampered.as_str(), "tampered"),
        (&other, cookie.as_str(), "sealed under another secret"),
    ] {
        let reply = get(proxy, "/", Some(value)).await;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert_ne!(reply.id(), id, "{what}: a fresh session");
        assert_eq!(reply.user(), None, "{what}: no identity");
        reply.cookie();
    }

    // During rotation the old cookie still carries its session...
    let accepted = get(&rotated, "/", Some(&cookie)).await;
    assert_eq!(accepted.id(), id);
    assert_eq!(accepted.user().as_deref(), Some("bob"));
    // ...and what the rotated instance seals opens under the new secret only.
    let fresh = login(&rotated, Some(&cookie), "bob", "ops").await.cookie();
    assert_eq!(
        get(&other, "/", Some(&fresh)).await.user().as_deref(),
        Some("bob")
    );
    assert_eq!(get(&old, "/", Some(&fresh)).await.user(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_hash_affinity_sends_a_session_to_the_same_server_from_both_instances() {
    let (s1, s2, s3) = (App::start().await, App::start().await, App::start().await);
    let upstream = format!(
        "[upstreams.app]\nservers = [\"{}\", \"{}\", \"{}\"]\naffinity = \"hash\"\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        s1.server(),
        s2.server(),
        s3.server()
    );
    let body = format!("[session]\n{}\n{upstream}", cookie_session(SECRET, &[]));
    let a = start(body.clone()).await;
    let b = start(body).await;
    let apps = [&s1, &s2, &s3];
    for _ in 0..8 {
        let cookie = get(&a, "/", None).await.cookie();
        let counts = || apps.iter().map(|app| app.count()).collect::<Vec<_>>();
        let before = counts();
        for proxy in [&a, &b, &a, &b] {
            assert_eq!(get(proxy, "/", Some(&cookie)).await.status, StatusCode::OK);
        }
        let after = counts();
        let served: Vec<usize> = (0..3).filter(|&i| after[i] != before[i]).collect();
        assert_eq!(
            served.len(),
            1,
            "one server for the session: {before:?} -> {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_refuses_data_that_would_outgrow_the_cookie_and_keeps_the_old_data() {
    let app = App::start().await;
    let proxy = start(config(&app.server(), &cookie_session(SECRET, &[]), "", "")).await;
    let cookie = reply_with(&proxy, None, &["X-Session-Set-Data: theme=dark".into()])
        .await
        .cookie();
    let big: Vec<String> = (0..8)
        .map(|i| format!("X-Session-Set-Data: k{i}={}", "v".repeat(1000)))
        .collect();
    let reply = reply_with(&proxy, Some(&cookie), &big).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the response itself is served"
    );
    let kept = reply
        .our_set_cookie()
        .map_or(cookie.clone(), |_| reply.cookie());
    assert!(kept.len() < 4000, "{} bytes", kept.len());
    let after = get(&proxy, "/", Some(&kept)).await;
    assert_eq!(
        after.seen_one("x-session-data").as_deref(),
        Some("theme=dark")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_store_session_ends_after_the_idle_timeout() {
    let app = App::start().await;
    let session = format!("{}\nidle_timeout = \"1s\"", cookie_session(SECRET, &[]));
    let proxy = start(config(&app.server(), &session, "", "")).await;
    let first = get(&proxy, "/", None).await;
    let (cookie, id) = (first.cookie(), first.id());
    poll_until(SOON, "the sealed session expires", || {
        let (proxy, cookie, id) = (&proxy, &cookie, &id);
        async move { get(proxy, "/", Some(cookie)).await.id() != *id }
    })
    .await;
}

/// `[session]` keys for the memory store persisted at `path`.
fn persisted_session(path: &Path, secret: &str, previous: &[&str]) -> String {
    let previous: Vec<String> = previous.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "secret = \"{secret}\"\nprevious_secrets = [{}]\npersist = \"{}\"",
        previous.join(", "),
        path.display()
    )
}

async fn stop(mut proxy: TestProxy) {
    proxy.handle.shutdown();
    proxy.wait_stopped(SOON).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sessions_survive_a_restart_with_persist_and_a_rotated_secret() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.snap");
    let before = start(config(
        &app.server(),
        &persisted_session(&path, SECRET, &[]),
        "",
        "",
    ))
    .await;
    let cookie = login(&before, None, "carol", "admin").await.cookie();
    let id = get(&before, "/", Some(&cookie)).await.id();
    let anonymous = get(&before, "/", None).await.cookie();
    stop(before).await;
    assert!(path.exists(), "the snapshot was written at shutdown");

    let after = start(config(
        &app.server(),
        &persisted_session(&path, OTHER_SECRET, &[SECRET]),
        "",
        "",
    ))
    .await;
    let reply = get(&after, "/", Some(&cookie)).await;
    assert_eq!(reply.id(), id, "the same session after the restart");
    assert_eq!(reply.user().as_deref(), Some("carol"));
    assert_eq!(reply.seen_one("x-session-roles").as_deref(), Some("admin"));
    assert!(get(&after, "/", Some(&anonymous))
        .await
        .our_set_cookie()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_moved_aside_and_the_proxy_starts_empty() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.snap");
    std::fs::write(&path, b"CLOAKSN1 this is not a snapshot").unwrap();
    let proxy = start(config(
        &app.server(),
        &persisted_session(&path, SECRET, &[]),
        "",
        "",
    ))
    .await;
    let reply = get(&proxy, "/", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.cookie();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("sessions.snap.corrupt-")),
        "{names:?}"
    );
    stop(proxy).await;
    assert!(path.exists(), "a fresh snapshot is written at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_by_reload_keeps_existing_sessions_and_new_cookies_use_the_new_secret() {
    let app = App::start().await;
    let with = |secret: &str, previous: &[&str]| {
        let previous: Vec<String> = previous.iter().map(|p| format!("\"{p}\"")).collect();
        config(
            &app.server(),
            &format!(
                "secret = \"{secret}\"\nprevious_secrets = [{}]",
                previous.join(", ")
            ),
            "",
            "",
        )
    };
    let proxy = start(with(SECRET, &[])).await;
    let old_cookie = login(&proxy, None, "dan", "").await.cookie();

    proxy.write_config(&with(OTHER_SECRET, &[SECRET]));
    proxy.handle.reload().await.unwrap();
    assert_eq!(
        get(&proxy, "/", Some(&old_cookie)).await.user().as_deref(),
        Some("dan"),
        "a cookie made under the previous secret still works"
    );
    let new_cookie = login(&proxy, Some(&old_cookie), "dan", "ops")
        .await
        .cookie();

    // Once the old secret is dropped, only cookies made under the new one verify.
    proxy.write_config(&with(OTHER_SECRET, &[]));
    proxy.handle.reload().await.unwrap();
    assert_eq!(get(&proxy, "/", Some(&old_cookie)).await.user(), None);
    assert_eq!(
        get(&proxy, "/", Some(&new_cookie)).await.user().as_deref(),
        Some("dan")
    );
}
