//! Reloads that change a key which takes effect only at start (`session.store`,
//! `listen.https`, ...) are refused whole, through the library handle (as SIGHUP) and
//! `POST /reload` (409): the running config stays, the refusal names the key and says
//! to restart, logged-in users stay logged in and new visitors still get sessions kept
//! by the store the proxy started with. (`tests/cli.rs` checks the same refusal in the
//! binary's log on SIGHUP.)

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::scripted::*;
use common::{config_text, TestProxy};
use reqwest::StatusCode;

const SECRET: &str = "restart-only-secret-0123456789abcdef";
const COOKIE_STORE: &str = "store = \"cookie\"\nsecret = \"restart-only-secret-0123456789abcdef\"";

/// A proxy with sessions in `[session]` (`session` keys) and an admin listener.
async fn start_with_admin(app: &App, session: &str) -> TestProxy {
    TestProxy::builder()
        .config(config(&app.server(), session, "", ""))
        .admin_listener()
        .start()
        .await
}

/// A reload is refused both through the handle (as SIGHUP) and `POST /reload` (409),
/// naming `key` and saying to restart.
async fn assert_refused(proxy: &TestProxy, key: &str) {
    let error = proxy.handle.reload().await.unwrap_err();
    assert!(
        matches!(error, cloakroom::ReloadError::NeedsRestart(_)),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&format!("{key}: changed from")), "{text}");
    assert!(text.contains("restart cloakroom to apply it"), "{text}");
    assert!(
        text.contains("proxy.toml:"),
        "names the file and line: {text}"
    );

    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("{key}: changed from")), "{body}");
    assert!(body.contains("restart"), "{body}");
}

/// The session of `cookie` still carries `user` to the upstream; a new visitor gets a
/// session that the proxy keeps (its next request has the same public id) and can log
/// in.
async fn assert_sessions_work(proxy: &TestProxy, cookie: &str, user: &str) {
    let again = get(proxy, "/", Some(cookie)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.user().as_deref(), Some(user), "still logged in");

    let first = get(proxy, "/", None).await;
    let (visitor, id) = (first.cookie(), first.id());
    let next = get(proxy, "/", Some(&visitor)).await;
    assert_eq!(next.id(), id, "the new visitor's session is kept");
    let logged_in = login(proxy, Some(&visitor), "newcomer", "").await;
    assert_eq!(logged_in.status, StatusCode::OK);
    let after = get(proxy, "/", Some(&logged_in.cookie())).await;
    assert_eq!(
        after.user().as_deref(),
        Some("newcomer"),
        "the login sticks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_from_memory_to_cookie_store_is_refused_and_sessions_stay() {
    let app = App::start().await;
    let proxy = start_with_admin(&app, &format!("secret = \"{SECRET}\"")).await;
    let cookie = login(&proxy, None, "alice", "admin").await.cookie();

    proxy.write_config(&config(&app.server(), COOKIE_STORE, "", ""));
    assert_refused(&proxy, "session.store").await;
    assert_sessions_work(&proxy, &cookie, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_from_cookie_to_memory_store_is_refused_and_sessions_stay() {
    let app = App::start().await;
    let proxy = start_with_admin(&app, COOKIE_STORE).await;
    let cookie = login(&proxy, None, "bob", "").await.cookie();

    proxy.write_config(&config(
        &app.server(),
        &format!("store = \"memory\"\nsecret = \"{SECRET}\""),
        "",
        "",
    ));
    assert_refused(&proxy, "session.store").await;
    assert_sessions_work(&proxy, &cookie, "bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_another_https_address_is_refused_and_sessions_stay() {
    let app = App::start().await;
    let proxy = start_with_admin(&app, "").await;
    let cookie = login(&proxy, None, "carol", "").await.cookie();

    let admin = proxy.admin_addr.unwrap();
    let text = config_text("127.0.0.1:1", &config(&app.server(), "", "", "")).replacen(
        "[listen]\n",
        &format!("[listen]\nadmin = \"{admin}\"\n"),
        1,
    );
    proxy.write_raw_config(&text);
    assert_refused(&proxy, "listen.https").await;
    assert_sessions_work(&proxy, &cookie, "carol").await;

    // The same file with the address the proxy started with reloads (rotation, routes
    // and every other live key stay reloadable).
    proxy.write_config(&config(&app.server(), "idle_timeout = \"10m\"", "", ""));
    assert_eq!(proxy.handle.reload().await.unwrap(), 2);
    assert_sessions_work(&proxy, &cookie, "carol").await;
}
