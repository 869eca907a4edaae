//! Sessions, end to end: the session cookie and its attributes, the public id and the
//! identity headers the upstream receives, stripping of spoofed identity headers and of
//! our own cookie, the control headers (login with id regeneration, data, logout), the
//! logout endpoint, forged/expired cookies, idle and absolute expiry, `require_user`,
//! `session = false` routes, CSRF, the memory store's bound and HTTP/2 split cookies.
//!
//! Each test is an `async fn(Store)`; the `every_store!` and `server_side_stores!`
//! macros at the end run it once per session backend (modules `memory`, `cookie`,
//! `redis`, `postgres`, `memcached`: real servers, see `common::stores`), as tower-sessions'
//! `route_tests!` does. Expiry tests move the proxy's manual clock instead of sleeping.
//!
//! Most tests drive the scripted upstream of `common::scripted` ([`App`]): a request header `x-reply: Name: value`
//! (repeatable) makes it answer with that response header, `x-reply-status: N` with that
//! status, and its body lists every request header it received (`name: value` lines),
//! so a client can see what the upstream saw even when requests run concurrently.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use common::scripted::*;
use common::stores::Store;
use common::{MockUpstream, TestProxy};
use reqwest::{Method, StatusCode};

/// A 32-byte `session.secret` for the tests that need a known key.
const SECRET: &str = "0123456789abcdef0123456789abcdef-sessions-test";

fn assert_no_control_headers(reply: &Reply) {
    for name in [
        "x-session-set-user",
        "x-session-set-roles",
        "x-session-set-data",
        "x-session-logout",
    ] {
        assert!(
            reply.header(name).is_none(),
            "control header {name} reached the client: {:?}",
            reply.headers
        );
    }
}

// ---------------------------------------------------------------------------------------
// The cookie
// ---------------------------------------------------------------------------------------

async fn first_request_gets_host_prefixed_lax_session_cookie_without_domain_or_max_age(
    store: Store,
) {
    let (_app, proxy) = default_proxy_on(&store).await;

    for client in [proxy.client_h1(), proxy.client()] {
        let reply = send(&client, Method::GET, &proxy.url("/"), None, &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let set = reply.our_set_cookie().expect("a session cookie");
        let (name, value, attributes) = parse_set_cookie(&set);
        assert_eq!(name, COOKIE);
        assert!(!value.is_empty());
        assert_eq!(
            attribute(&attributes, "path"),
            Some(Some("/".into())),
            "{set}"
        );
        assert_eq!(attribute(&attributes, "secure"), Some(None), "{set}");
        assert_eq!(attribute(&attributes, "httponly"), Some(None), "{set}");
        assert_eq!(
            attribute(&attributes, "samesite"),
            Some(Some("Lax".into())),
            "{set}"
        );
        assert_eq!(attribute(&attributes, "domain"), None, "{set}");
        // A browser-session cookie by default.
        assert_eq!(attribute(&attributes, "max-age"), None, "{set}");
        assert_eq!(attribute(&attributes, "expires"), None, "{set}");
        assert_eq!(
            set,
            format!("{COOKIE}={value}; HttpOnly; SameSite=Lax; Secure; Path=/")
        );
    }
}

async fn same_site_strict_is_configurable(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(&app.server(), "same_site = \"strict\"", "", ""))
        .await;

    let set = get(&proxy, "/", None).await.our_set_cookie().unwrap();
    let (_, _, attributes) = parse_set_cookie(&set);
    assert_eq!(
        attribute(&attributes, "samesite"),
        Some(Some("Strict".into())),
        "{set}"
    );
    assert_eq!(attribute(&attributes, "secure"), Some(None), "{set}");
    assert_eq!(attribute(&attributes, "httponly"), Some(None), "{set}");
    assert_eq!(attribute(&attributes, "domain"), None, "{set}");
}

async fn persistent_cookie_has_max_age_of_absolute_timeout(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(
            &app.server(),
            "persistent = true\nabsolute_timeout = \"2h\"",
            "",
            "",
        ))
        .await;

    let set = get(&proxy, "/", None).await.our_set_cookie().unwrap();
    let (_, _, attributes) = parse_set_cookie(&set);
    assert_eq!(
        attribute(&attributes, "max-age"),
        Some(Some("7200".into())),
        "{set}"
    );
    assert_eq!(attribute(&attributes, "samesite"), Some(Some("Lax".into())));
    assert_eq!(attribute(&attributes, "domain"), None, "{set}");
}

async fn five_hundred_fresh_requests_get_distinct_cookies_and_public_ids_unrelated_to_them(
    store: Store,
) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let client = proxy.client();
    let url = proxy.url("/");

    let mut pairs: Vec<(String, String)> = Vec::new();
    for _batch in 0..10 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let client = client.clone();
            let url = url.clone();
            tasks.spawn(async move {
                let reply = send(&client, Method::GET, &url, None, &[]).await;
                (reply.cookie(), reply.id())
            });
        }
        while let Some(pair) = tasks.join_next().await {
            pairs.push(pair.unwrap());
        }
    }
    assert_eq!(pairs.len(), 500);

    let cookies: HashSet<&str> = pairs.iter().map(|(c, _)| c.as_str()).collect();
    let ids: HashSet<&str> = pairs.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(cookies.len(), 500, "cookie values repeat");
    assert_eq!(ids.len(), 500, "public ids repeat");

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for (cookie, id) in &pairs {
        // 128 bits, base64url without padding.
        assert_eq!(id.len(), 22, "public id {id:?}");
        let id_bytes = b64
            .decode(id)
            .unwrap_or_else(|e| panic!("public id {id:?} is not base64url: {e}"));
        assert_eq!(id_bytes.len(), 16);
        // The cookie carries at least 128 bits.
        assert!(cookie.len() >= 22, "cookie value too short: {cookie:?}");
        assert_ne!(cookie, id);
        assert!(
            !cookie.contains(id.as_str()),
            "public id {id} is readable in its cookie {cookie}"
        );
        if let Ok(raw) = b64.decode(cookie) {
            assert!(
                !raw.windows(16).any(|w| w == id_bytes.as_slice()),
                "the public id's bytes are inside the cookie value"
            );
        }
        // No cookie value is another session's public id either.
        assert!(!ids.contains(cookie.as_str()));
    }
}

async fn public_id_reaches_upstream_from_the_first_request_and_stays_stable(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;

    let first = get(&proxy, "/", None).await;
    let id = first.id();
    let cookie = first.cookie();
    // Anonymous: no user, roles or data headers.
    let seen = app.last();
    assert_eq!(seen.one("x-session-id").as_deref(), Some(id.as_str()));
    assert!(seen.all("x-session-user").is_empty());
    assert!(seen.all("x-session-roles").is_empty());
    assert!(seen.all("x-session-data").is_empty());

    for client in [proxy.client(), proxy.client_h1()] {
        let again = send(&client, Method::GET, &proxy.url("/x"), Some(&cookie), &[]).await;
        assert_eq!(again.id(), id);
        assert!(
            again.our_set_cookie().is_none(),
            "a live session needs no new cookie: {:?}",
            again.set_cookies()
        );
    }
}

// ---------------------------------------------------------------------------------------
// What the upstream receives
// ---------------------------------------------------------------------------------------

async fn spoofed_session_headers_are_stripped_for_an_anonymous_session(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let spoof = [
        ("x-session-user", "admin"),
        ("x-session-roles", "root"),
        ("x-session-id", "AAAAAAAAAAAAAAAAAAAAAA"),
        ("x-session-data", "admin=1"),
        ("x-session-anything", "evil"),
        ("X-Session-Set-User", "admin"),
    ];

    for cookie in [None, Some(new_session(&proxy).await.0)] {
        let reply = send(
            &proxy.client(),
            Method::GET,
            &proxy.url("/"),
            cookie.as_deref(),
            &spoof,
        )
        .await;
        let id = reply.id();
        assert_ne!(id, "AAAAAAAAAAAAAAAAAAAAAA");
        let seen = app.last();
        assert_eq!(seen.all("x-session-id"), vec![id]);
        for name in [
            "x-session-user",
            "x-session-roles",
            "x-session-data",
            "x-session-anything",
            "x-session-set-user",
        ] {
            assert!(
                seen.all(name).is_empty(),
                "spoofed {name} reached the upstream: {:?}",
                seen.all(name)
            );
        }
    }
}

async fn spoofed_session_headers_are_stripped_for_a_logged_in_session(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "alice", "editor").await.cookie();

    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[
            ("x-session-user", "admin"),
            ("x-session-roles", "root"),
            ("x-session-anything", "evil"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = app.last();
    assert_eq!(seen.all("x-session-user"), vec!["alice".to_string()]);
    assert_eq!(seen.all("x-session-roles"), vec!["editor".to_string()]);
    assert!(seen.all("x-session-anything").is_empty());
}

async fn configured_inject_names_are_stripped_from_clients_and_used_for_the_session(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(
            &app.server(),
            "",
            "",
            "[inject]\nuser = \"X-Remote-User\"\nid = \"X-Request-Session\"\n\n\
         [control]\nlogout = \"X-App-Logout\"\n",
        ))
        .await;

    // Anonymous: the client's X-Remote-User does not pass.
    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        None,
        &[("x-remote-user", "admin"), ("x-request-session", "forged")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = app.last();
    assert!(seen.all("x-remote-user").is_empty(), "{:?}", seen.headers);
    let id = seen.one("x-request-session").expect("the session id");
    assert_ne!(id, "forged");
    assert!(seen.all("x-session-id").is_empty());

    // Logged in: the real user under the configured name.
    let cookie = login(&proxy, Some(&reply.cookie()), "bob", "")
        .await
        .cookie();
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-remote-user", "admin")],
    )
    .await;
    assert_eq!(app.last().all("x-remote-user"), vec!["bob".to_string()]);
    let bob_id = app.last().one("x-request-session").unwrap();

    // A configured control name sent by a client does not reach the upstream; sent by
    // the upstream it acts and does not reach the client.
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-app-logout", "1")],
    )
    .await;
    assert!(app.last().all("x-app-logout").is_empty());
    assert_eq!(app.last().all("x-remote-user"), vec!["bob".to_string()]);
    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-reply", "X-App-Logout: 1")],
    )
    .await;
    assert!(reply.header("x-app-logout").is_none());
    let (_, value, _) = parse_set_cookie(&reply.our_set_cookie().expect("expired cookie"));
    assert!(value.is_empty());
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[],
    )
    .await;
    assert!(app.last().all("x-remote-user").is_empty());
    assert_ne!(app.last().one("x-request-session").unwrap(), bob_id);
}

async fn own_cookie_is_removed_from_the_cookie_header_sent_upstream(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (cookie, id) = new_session(&proxy).await;

    for client in [proxy.client_h1(), proxy.client()] {
        let reply = client
            .get(proxy.url("/"))
            .header("cookie", format!("a=1; {COOKIE}={cookie}; b=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let seen = app.last();
        assert_eq!(seen.one("x-session-id").as_deref(), Some(id.as_str()));
        assert_eq!(seen.all("cookie"), vec!["a=1; b=2".to_string()]);

        // Only our cookie: no Cookie header at all.
        send(&client, Method::GET, &proxy.url("/"), Some(&cookie), &[]).await;
        let seen = app.last();
        assert_eq!(seen.one("x-session-id").as_deref(), Some(id.as_str()));
        assert!(
            seen.all("cookie").is_empty(),
            "upstream got {:?}",
            seen.all("cookie")
        );
    }

    // Other cookies alone pass untouched.
    proxy
        .client_h1()
        .get(proxy.url("/"))
        .header("cookie", "a=1; b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(app.last().all("cookie"), vec!["a=1; b=2".to_string()]);
}

async fn http2_cookie_split_across_several_headers_still_finds_the_session(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (cookie, id) = new_session(&proxy).await;

    let response = proxy
        .client()
        .get(proxy.url("/"))
        .header("cookie", "a=1")
        .header("cookie", format!("{COOKIE}={cookie}"))
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "the session was not found: {:?}",
        response.headers()
    );
    let seen = app.last();
    assert_eq!(seen.one("x-session-id").as_deref(), Some(id.as_str()));
    // Joined into one header for HTTP/1.1, without ours.
    assert_eq!(seen.all("cookie"), vec!["a=1; b=2".to_string()]);
}

// ---------------------------------------------------------------------------------------
// Control headers
// ---------------------------------------------------------------------------------------

async fn login_regenerates_the_cookie_keeps_the_public_id_and_the_old_cookie_turns_anonymous(
    store: Store,
) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (old_cookie, id) = new_session(&proxy).await;

    let reply = login(&proxy, Some(&old_cookie), "alice", "admin,dev").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_no_control_headers(&reply);
    let new_cookie = reply.cookie();
    assert_ne!(new_cookie, old_cookie, "login must regenerate the cookie");
    // The login request itself was still anonymous.
    assert!(reply.user().is_none());

    let after = get(&proxy, "/", Some(&new_cookie)).await;
    assert_eq!(after.id(), id, "the public id survives the login");
    let seen = app.last();
    assert_eq!(seen.one("x-session-user").as_deref(), Some("alice"));
    assert_eq!(seen.one("x-session-roles").as_deref(), Some("admin,dev"));

    // The pre-login cookie no longer carries the identity: a fresh anonymous session.
    let old = get(&proxy, "/", Some(&old_cookie)).await;
    assert_ne!(old.id(), id);
    assert!(old.user().is_none());
    assert!(old.seen_one("x-session-roles").is_none());
    let fresh_cookie = old.cookie();
    assert_ne!(fresh_cookie, new_cookie);

    // And the new cookie still works after that.
    let again = get(&proxy, "/", Some(&new_cookie)).await;
    assert_eq!(again.id(), id);
    assert_eq!(again.user().as_deref(), Some("alice"));
}

async fn changing_roles_alone_regenerates_and_keeps_the_user(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "carol", "reader").await.cookie();

    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-reply", "X-Session-Set-Roles: reader,writer")],
    )
    .await;
    assert_no_control_headers(&reply);
    let promoted = reply.cookie();
    assert_ne!(promoted, cookie);

    let after = get(&proxy, "/", Some(&promoted)).await;
    assert_eq!(after.user().as_deref(), Some("carol"));
    assert_eq!(
        after.seen_one("x-session-roles").as_deref(),
        Some("reader,writer")
    );
    let stale = get(&proxy, "/", Some(&cookie)).await;
    assert!(stale.user().is_none());
}

async fn session_data_set_delete_round_trip(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (cookie, id) = new_session(&proxy).await;

    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[
            ("x-reply", "X-Session-Set-Data: cart=3"),
            ("x-reply", "X-Session-Set-Data: note=a%20b%26c"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_no_control_headers(&reply);
    assert!(
        reply.our_set_cookie().is_none(),
        "data changes do not regenerate"
    );

    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!(after.id(), id);
    let data = app.last().one("x-session-data").expect("X-Session-Data");
    assert_eq!(
        form_decode(&data),
        vec![
            ("cart".to_string(), "3".to_string()),
            ("note".to_string(), "a b&c".to_string())
        ],
        "raw: {data}"
    );

    // `key=` deletes.
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-reply", "X-Session-Set-Data: cart=")],
    )
    .await;
    get(&proxy, "/", Some(&cookie)).await;
    let data = app.last().one("x-session-data").expect("X-Session-Data");
    assert_eq!(
        form_decode(&data),
        vec![("note".to_string(), "a b&c".to_string())]
    );

    // Deleting the last key: the header is not sent at all.
    send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-reply", "X-Session-Set-Data: note=")],
    )
    .await;
    get(&proxy, "/", Some(&cookie)).await;
    assert!(app.last().all("x-session-data").is_empty());
    assert_eq!(app.last().one("x-session-id").as_deref(), Some(id.as_str()));
}

/// `application/x-www-form-urlencoded` → pairs.
fn form_decode(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        cloakroom::inject::percent_decode(&s.replace('+', " "))
            .unwrap_or_else(|| panic!("bad form encoding {s:?}"))
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn logout_header_destroys_the_session_and_expires_the_cookie(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let login_reply = login(&proxy, None, "dave", "").await;
    let cookie = login_reply.cookie();
    let id = get(&proxy, "/", Some(&cookie)).await.id();

    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[("x-reply", "X-Session-Logout: 1")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_no_control_headers(&reply);
    let set = reply.our_set_cookie().expect("an expiring Set-Cookie");
    let (_, value, attributes) = parse_set_cookie(&set);
    assert!(value.is_empty(), "{set}");
    assert_eq!(
        attribute(&attributes, "max-age"),
        Some(Some("0".into())),
        "{set}"
    );
    assert_eq!(attribute(&attributes, "path"), Some(Some("/".into())));

    // The old cookie now starts a new anonymous session.
    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_ne!(after.id(), id);
    assert!(after.user().is_none());
    after.cookie();
}

async fn logout_endpoint_post_redirects_to_next_expires_the_cookie_and_destroys_the_session(
    store: Store,
) {
    let (app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "erin", "").await.cookie();
    let id = get(&proxy, "/", Some(&cookie)).await.id();
    let before = app.count();

    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/.cloakroom/logout?next=/bye"),
        Some(&cookie),
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header("location").as_deref(), Some("/bye"));
    let set = reply.our_set_cookie().expect("an expiring Set-Cookie");
    let (_, value, attributes) = parse_set_cookie(&set);
    assert!(value.is_empty(), "{set}");
    assert_eq!(attribute(&attributes, "max-age"), Some(Some("0".into())));
    assert_eq!(app.count(), before, "the proxy answers logout itself");

    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_ne!(after.id(), id);
    assert!(after.user().is_none());
}

async fn logout_endpoint_refuses_other_origin_next_targets(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
        "evil",
    ] {
        let reply = send(
            &proxy.client(),
            Method::POST,
            &proxy.url(&format!("/.cloakroom/logout?next={next}")),
            None,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "next={next}");
        assert_eq!(
            reply.header("location").as_deref(),
            Some("/"),
            "next={next}"
        );
    }
    // Without next: `/`.
    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/.cloakroom/logout"),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.header("location").as_deref(), Some("/"));
}

async fn logout_endpoint_get_is_405_and_keeps_the_session(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "frank", "").await.cookie();

    let reply = get(&proxy, "/.cloakroom/logout", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.our_set_cookie().is_none());

    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!(after.user().as_deref(), Some("frank"));
}

async fn logout_endpoint_refuses_a_cross_site_post(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "gina", "").await.cookie();

    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/.cloakroom/logout"),
        Some(&cookie),
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!(after.user().as_deref(), Some("gina"));
}

async fn control_headers_never_reach_the_client_on_a_session_false_route(store: Store) {
    let plain = MockUpstream::start("plain").await;
    for (name, value) in [
        ("X-Session-Set-User", "mallory"),
        ("X-Session-Set-Roles", "admin"),
        ("X-Session-Set-Data", "k=v"),
        ("X-Session-Logout", "1"),
    ] {
        plain.add_response_header(name, value);
    }
    let app = App::start().await;
    let proxy = store
        .start(config(
            &app.server(),
            "",
            "",
            &format!(
                r#"
[upstreams.plain]
servers = ["{}"]

[[routes]]
path = "/static"
upstream = "plain"
session = false
"#,
                plain.server()
            ),
        ))
        .await;

    let (cookie, id) = new_session(&proxy).await;
    for cookie in [None, Some(cookie.as_str())] {
        let reply = send(
            &proxy.client(),
            Method::GET,
            &proxy.url("/static/x"),
            cookie,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "plain");
        assert_no_control_headers(&reply);
        assert!(
            reply.our_set_cookie().is_none(),
            "{:?}",
            reply.set_cookies()
        );
    }
    // The session was neither logged in nor destroyed by them.
    let after = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!(after.id(), id);
    assert!(after.user().is_none());
}

async fn control_headers_are_stripped_from_an_upstream_500_response(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let (cookie, _) = new_session(&proxy).await;

    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        Some(&cookie),
        &[
            ("x-reply-status", "500"),
            ("x-reply", "X-Session-Set-User: mallory"),
            ("x-reply", "X-Session-Set-Roles: admin"),
            ("x-reply", "X-Session-Set-Data: k=v"),
            ("x-reply", "X-Session-Logout: yes"),
            ("x-reply", "X-Other: kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_no_control_headers(&reply);
    assert_eq!(reply.header("x-other").as_deref(), Some("kept"));

    // Also without any session cookie (a new session on an error response).
    let reply = send(
        &proxy.client(),
        Method::GET,
        &proxy.url("/"),
        None,
        &[
            ("x-reply-status", "500"),
            ("x-reply", "X-Session-Set-User: mallory"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_no_control_headers(&reply);
}

// ---------------------------------------------------------------------------------------
// Forged and expired cookies
// ---------------------------------------------------------------------------------------

/// Asserts that `value` as our cookie yields a 200 with a fresh session (not `id`).
async fn assert_fresh_session(proxy: &TestProxy, value: &str, id: &str, what: &str) {
    let reply = get(proxy, "/", Some(value)).await;
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.body);
    assert_ne!(reply.id(), id, "{what}: the old session was found");
    assert!(reply.user().is_none(), "{what}: an identity leaked");
    let fresh = reply.cookie();
    assert_ne!(fresh, value, "{what}");
    // The fresh cookie works.
    assert_eq!(
        get(proxy, "/", Some(&fresh)).await.id(),
        reply.id(),
        "{what}"
    );
}

async fn tampered_cookie_starts_a_fresh_session(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let cookie = login(&proxy, None, "henry", "admin").await.cookie();
    let id = get(&proxy, "/", Some(&cookie)).await.id();

    let len = cookie.len();
    for position in [0, 1, len / 3, len / 2, len - 2, len - 1] {
        let mut bytes = cookie.clone().into_bytes();
        bytes[position] = match bytes[position] {
            b'A' => b'B',
            b'0' => b'1',
            _ => b'A',
        };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_ne!(tampered, cookie);
        assert_fresh_session(&proxy, &tampered, &id, &format!("flipped at {position}")).await;
    }
    // Truncated and extended.
    assert_fresh_session(&proxy, &cookie[..len - 1], &id, "truncated").await;
    assert_fresh_session(&proxy, &format!("{cookie}A"), &id, "extended").await;

    // The genuine cookie still resolves to its user.
    let genuine = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!(genuine.id(), id);
    assert_eq!(genuine.user().as_deref(), Some("henry"));
}

async fn garbage_and_empty_cookie_values_start_a_fresh_session(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    let (_, id) = new_session(&proxy).await;

    for value in [
        "%%%",
        "",
        "\"\"",
        "garbage",
        "AAAA",
        &"A".repeat(87),
        &"_".repeat(500),
    ] {
        assert_fresh_session(&proxy, value, &id, &format!("value {value:?}")).await;
    }
    // A raw header with only the name and no `=`, and with a duplicate of ours.
    for header in [
        COOKIE.to_string(),
        format!("{COOKIE}=; {COOKIE}=%%%"),
        format!("a=1; {COOKIE}"),
    ] {
        let response = proxy
            .client()
            .get(proxy.url("/"))
            .header("cookie", header.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "cookie {header:?}");
        assert!(response.headers().get("set-cookie").is_some());
    }
}

async fn cookie_sealed_for_another_cookie_name_is_refused(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(
            &app.server(),
            &format!("secret = \"{SECRET}\""),
            "",
            "",
        ))
        .await;
    let cookie = login(&proxy, None, "ivan", "admin").await.cookie();
    let id = get(&proxy, "/", Some(&cookie)).await.id();

    // Reseal the same (live) token, with the same secret, for another cookie name.
    let codec = |name: &str| {
        let session = cloakroom::config::SessionConfig {
            cookie: name.to_string(),
            same_site: cloakroom::config::SameSite::Lax,
            secure: true,
            persistent: false,
            idle_timeout: Duration::from_secs(1800),
            absolute_timeout: Duration::from_secs(3600),
            store: cloakroom::config::StoreKind::Memory,
            secret: None,
            max_sessions: 10,
            previous_secrets: Vec::new(),
            persist: None,
            persist_interval: Duration::from_secs(30),
            touch_interval: Duration::from_secs(180),
        };
        cloakroom::session::CookieCodec::new(&session, &[SECRET.as_bytes()])
    };
    let token = codec(COOKIE)
        .open(&cookie)
        .expect("the test reads the proxy's cookie with the configured secret");
    let foreign = codec("__Host-other").seal(&token);
    assert_ne!(foreign, cookie);

    assert_fresh_session(&proxy, &foreign, &id, "sealed for __Host-other").await;
    // Nor is our cookie accepted under the other name (that cookie is not ours at all).
    let response = proxy
        .client()
        .get(proxy.url("/"))
        .header("cookie", format!("__Host-other={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("set-cookie").is_some());
    assert!(app.last().all("x-session-user").is_empty());

    // The genuine cookie is still valid.
    assert_eq!(
        get(&proxy, "/", Some(&cookie)).await.user().as_deref(),
        Some("ivan")
    );
}

async fn idle_timeout_expires_an_unused_session_and_use_keeps_it_alive(store: Store) {
    let app = App::start().await;
    let proxy = store
        .builder(&config(
            &app.server(),
            "idle_timeout = \"2s\"\nabsolute_timeout = \"1h\"",
            "",
            "",
        ))
        .manual_clock()
        .start()
        .await;
    let mut cookie = login(&proxy, None, "judy", "").await.cookie();
    let id = get(&proxy, "/", Some(&cookie)).await.id();

    // Used every 300 ms for 5 s of session time (well over the idle timeout in
    // total): still alive. Like a browser, the client keeps a cookie the proxy
    // reissues (the sealed cookie carries the last use; a store's cookie never changes).
    let mut elapsed = Duration::ZERO;
    while elapsed < Duration::from_secs(5) {
        proxy.advance(Duration::from_millis(300));
        elapsed += Duration::from_millis(300);
        let reply = get(&proxy, "/", Some(&cookie)).await;
        assert_eq!(reply.id(), id, "expired while in use after {elapsed:?}");
        assert_eq!(reply.user().as_deref(), Some("judy"));
        if reply.our_set_cookie().is_some() {
            cookie = reply.cookie();
        }
    }

    // Then left alone for twice the idle timeout: gone.
    proxy.advance(Duration::from_secs(4));
    let reply = get(&proxy, "/", Some(&cookie)).await;
    assert_ne!(reply.id(), id);
    assert!(reply.user().is_none());
    reply.cookie();
}

async fn absolute_timeout_is_not_extended_by_use(store: Store) {
    let app = App::start().await;
    let proxy = store
        .builder(&config(
            &app.server(),
            "idle_timeout = \"2s\"\nabsolute_timeout = \"2s\"",
            "",
            "",
        ))
        .manual_clock()
        .start()
        .await;
    let (cookie, id) = new_session(&proxy).await;

    // Session time since creation; the wall clock adds a few ms on top.
    let mut sent = Duration::ZERO;
    loop {
        proxy.advance(Duration::from_millis(500));
        sent += Duration::from_millis(500);
        let reply = get(&proxy, "/", Some(&cookie)).await;
        if sent < Duration::from_millis(1400) {
            assert_eq!(reply.id(), id, "expired early, at {sent:?}");
        }
        if sent >= Duration::from_millis(3000) {
            assert_ne!(
                reply.id(),
                id,
                "still alive {sent:?} after creation, though used every 500 ms"
            );
            reply.cookie();
            break;
        }
    }
}

async fn absolute_timeout_restarts_at_login(store: Store) {
    let app = App::start().await;
    let proxy = store
        .builder(&config(
            &app.server(),
            "idle_timeout = \"6s\"\nabsolute_timeout = \"6s\"",
            "",
            "",
        ))
        .manual_clock()
        .start()
        .await;
    let (cookie, _) = new_session(&proxy).await;

    proxy.advance(Duration::from_millis(3500));
    let new_cookie = login(&proxy, Some(&cookie), "kate", "").await.cookie();

    // 7 s after creation: past the anonymous session's absolute deadline, 3.5 s after
    // the login, well within its own.
    proxy.advance(Duration::from_millis(3500));
    let reply = get(&proxy, "/", Some(&new_cookie)).await;
    assert_eq!(
        reply.user().as_deref(),
        Some("kate"),
        "a session that logged in 3.5 s ago (created 7 s ago) expired"
    );
    // And the anonymous session it replaced is gone either way.
    let old = get(&proxy, "/", Some(&cookie)).await;
    assert!(old.user().is_none());
}

// ---------------------------------------------------------------------------------------
// Route options
// ---------------------------------------------------------------------------------------

/// `/` open, `/private` with `require_user` and the route keys `private`.
async fn require_user_proxy(store: &Store, app: &App, private: &str) -> TestProxy {
    store
        .start(config(
            &app.server(),
            "",
            "",
            &format!(
                r#"
[[routes]]
path = "/private"
upstream = "app"
require_user = true
{private}
"#
            ),
        ))
        .await
}

async fn require_user_answers_401_without_a_user_and_passes_with_one(store: Store) {
    let app = App::start().await;
    let proxy = require_user_proxy(&store, &app, "").await;

    let before = app.count();
    let reply = get(&proxy, "/private/page", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let (cookie, _) = new_session(&proxy).await;
    let reply = get(&proxy, "/private/page", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.count(),
        before + 1,
        "only the / request reached upstream"
    );

    let cookie = login(&proxy, Some(&cookie), "leo", "").await.cookie();
    let reply = get(&proxy, "/private/page", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.user().as_deref(), Some("leo"));
}

async fn require_user_redirects_get_to_login_url_with_next(store: Store) {
    let app = App::start().await;
    let proxy = require_user_proxy(&store, &app, "login_url = \"/login\"").await;

    let before = app.count();
    let reply = get(&proxy, "/private/page?x=1", None).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let location = reply.header("location").expect("Location");
    let next = location
        .strip_prefix("/login?next=")
        .unwrap_or_else(|| panic!("Location {location:?}"));
    assert_eq!(
        cloakroom::inject::percent_decode(&next.replace('+', " ")).as_deref(),
        Some("/private/page?x=1"),
        "Location {location:?}"
    );

    // Not a GET: 401, no redirect.
    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/private/page"),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count(), before);
}

async fn session_false_route_sets_no_cookie_injects_nothing_and_strips_spoofed_headers(
    store: Store,
) {
    let app = App::start().await;
    let proxy = store
        .start(config(
            &app.server(),
            "",
            "",
            r#"
[[routes]]
path = "/plain"
upstream = "app"
session = false
"#,
        ))
        .await;
    let cookie = login(&proxy, None, "mia", "admin").await.cookie();

    for cookie in [None, Some(cookie.as_str())] {
        let reply = send(
            &proxy.client(),
            Method::GET,
            &proxy.url("/plain/x"),
            cookie,
            &[
                ("x-session-user", "admin"),
                ("x-session-id", "forged"),
                ("x-session-anything", "evil"),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.set_cookies().is_empty(), "{:?}", reply.set_cookies());
        let seen = app.last();
        for name in [
            "x-session-id",
            "x-session-user",
            "x-session-roles",
            "x-session-data",
            "x-session-anything",
        ] {
            assert!(
                seen.all(name).is_empty(),
                "{name} reached a session = false upstream: {:?}",
                seen.all(name)
            );
        }
        assert!(seen.all("cookie").is_empty(), "{:?}", seen.all("cookie"));
    }

    // Cross-site POSTs are not its business either (no session, no CSRF check).
    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/plain/form"),
        None,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// CSRF
// ---------------------------------------------------------------------------------------

async fn cross_site_unsafe_requests_get_403_without_reaching_upstream(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (cookie, _) = new_session(&proxy).await;
    let before = app.count();
    let own = format!("https://{}", proxy.host());
    let plain_http = format!("http://{}", proxy.host());
    let other_port = format!("https://localhost:{}", proxy.https_addr.port() ^ 1);

    for client in [proxy.client(), proxy.client_h1()] {
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for headers in [
                vec![("sec-fetch-site", "cross-site")],
                vec![("origin", "https://evil.example")],
                vec![("origin", "null")],
                // Same host, another scheme or port.
                vec![("origin", plain_http.as_str())],
                vec![("origin", other_port.as_str())],
                // Sec-Fetch-Site decides even when Origin looks like ours.
                vec![("sec-fetch-site", "cross-site"), ("origin", own.as_str())],
            ] {
                let reply = send(
                    &client,
                    method.clone(),
                    &proxy.url("/form"),
                    Some(&cookie),
                    &headers,
                )
                .await;
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{method} with {headers:?}"
                );
            }
        }
    }
    assert_eq!(
        app.count(),
        before,
        "a refused request reached the upstream"
    );
}

async fn same_origin_unsafe_requests_and_cross_site_gets_are_allowed(store: Store) {
    let (app, proxy) = default_proxy_on(&store).await;
    let (cookie, id) = new_session(&proxy).await;
    let origin = format!("https://{}", proxy.host());

    for client in [proxy.client(), proxy.client_h1()] {
        for headers in [
            vec![("origin", origin.as_str())],
            vec![
                ("sec-fetch-site", "same-origin"),
                ("origin", origin.as_str()),
            ],
            vec![("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "none")],
            vec![],
        ] {
            for method in [Method::POST, Method::DELETE] {
                let reply = send(
                    &client,
                    method.clone(),
                    &proxy.url("/form"),
                    Some(&cookie),
                    &headers,
                )
                .await;
                assert_eq!(reply.status, StatusCode::OK, "{method} with {headers:?}");
                assert_eq!(reply.id(), id);
                assert_eq!(app.last().method, method);
            }
        }

        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let response = client
                .request(method.clone(), proxy.url("/page"))
                .header("cookie", format!("{COOKIE}={cookie}"))
                .header("sec-fetch-site", "cross-site")
                .header("origin", "https://evil.example")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{method} cross-site");
            assert_eq!(app.last().method, method);
        }
    }
}

async fn csrf_false_route_allows_cross_site_posts(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(&app.server(), "", "csrf = false", ""))
        .await;

    let reply = send(
        &proxy.client(),
        Method::POST,
        &proxy.url("/webhook"),
        None,
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.id();
}

// ---------------------------------------------------------------------------------------
// The memory store's bound
// ---------------------------------------------------------------------------------------

async fn max_sessions_bounds_the_store_and_never_evicts_a_logged_in_session(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(&app.server(), "max_sessions = 50", "", ""))
        .await;
    let user_cookie = login(&proxy, None, "nina", "admin").await.cookie();
    let user_id = get(&proxy, "/", Some(&user_cookie)).await.id();

    // A flood of cookie-less requests (each starts a session).
    let mut anonymous = Vec::new();
    for _ in 0..300 {
        let reply = get(&proxy, "/", None).await;
        anonymous.push((reply.cookie(), reply.id()));
    }

    // The logged-in session survives, with its user.
    let reply = get(&proxy, "/", Some(&user_cookie)).await;
    assert_eq!(reply.id(), user_id);
    assert_eq!(reply.user().as_deref(), Some("nina"));
    assert!(reply.our_set_cookie().is_none());

    // At most 49 of the 300 anonymous sessions can still be live (an evicted session
    // never comes back, so re-checking one by one cannot overcount), and early ones
    // were evicted.
    let mut live = 0usize;
    let mut early_evicted = 0usize;
    for (i, (cookie, id)) in anonymous.iter().enumerate() {
        let reply = get(&proxy, "/", Some(cookie)).await;
        if reply.id() == *id {
            live += 1;
        } else if i < 50 {
            early_evicted += 1;
        }
    }
    assert!(
        live <= 49,
        "{live} anonymous sessions survived in a store bounded to 50 (with one user)"
    );
    assert!(
        early_evicted > 0,
        "none of the first 50 anonymous sessions was evicted"
    );

    // Still there after all that churn.
    let reply = get(&proxy, "/", Some(&user_cookie)).await;
    assert_eq!(reply.id(), user_id);
    assert_eq!(reply.user().as_deref(), Some("nina"));
}

async fn concurrent_flood_never_grows_the_store_beyond_max_sessions(store: Store) {
    let app = App::start().await;
    let proxy = store
        .start(config(&app.server(), "max_sessions = 50", "", ""))
        .await;
    let client = proxy.client();
    let url = proxy.url("/");

    // 3000 cookie-less requests, 100 at a time.
    let mut anonymous = Vec::new();
    for _batch in 0..30 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let client = client.clone();
            let url = url.clone();
            tasks.spawn(async move {
                let reply = send(&client, Method::GET, &url, None, &[]).await;
                (reply.cookie(), reply.id())
            });
        }
        while let Some(pair) = tasks.join_next().await {
            anonymous.push(pair.unwrap());
        }
    }

    // Every session live now was in the store when the flood ended (an evicted session
    // never comes back; a re-check that starts a new session can only evict others, so
    // this undercounts). Newest first: the likeliest survivors.
    let mut live = 0usize;
    for (cookie, id) in anonymous.iter().rev() {
        if get(&proxy, "/", Some(cookie)).await.id() == *id {
            live += 1;
        }
    }
    assert!(
        live <= 50,
        "{live} sessions were live at once in a store bounded to max_sessions = 50"
    );
}

async fn logout_endpoint_location_is_a_valid_uri_reference(store: Store) {
    let (_app, proxy) = default_proxy_on(&store).await;
    for (next, decoded) in [("/a%20b", "/a b"), ("/%C3%BC", "/ü"), ("/a+b", "/a b")] {
        let reply = send(
            &proxy.client(),
            Method::POST,
            &proxy.url(&format!("/.cloakroom/logout?next={next}")),
            None,
            &[],
        )
        .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER);
        let location = reply.headers.get("location").expect("Location");
        let location = location.to_str().unwrap_or_else(|_| {
            panic!("next={next}: Location holds non-ASCII bytes: {location:?}")
        });
        assert!(
            location
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'<' && b != b'>'),
            "next={next}: Location {location:?} is not a URI-reference"
        );
        // It still names the same path.
        assert_eq!(
            form_decode(&format!("x={location}"))[0].1,
            decoded,
            "next={next}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Every store
// ---------------------------------------------------------------------------------------

/// Runs each named test above as `#[tokio::test]` on `Store::$store()`.
macro_rules! on_store {
    ($store:ident: $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test(Store::$store().await).await;
            }
        )*
    };
}

/// The tests that hold for every store, run in a module per store (`memory::…`,
/// `cookie::…`, `redis::…`, `postgres::…`), as tower-sessions' `route_tests!` does.
macro_rules! every_store {
    ($store:ident) => {
        on_store!(
            $store:
        first_request_gets_host_prefixed_lax_session_cookie_without_domain_or_max_age,
        same_site_strict_is_configurable,
        persistent_cookie_has_max_age_of_absolute_timeout,
        five_hundred_fresh_requests_get_distinct_cookies_and_public_ids_unrelated_to_them,
        public_id_reaches_upstream_from_the_first_request_and_stays_stable,
        spoofed_session_headers_are_stripped_for_an_anonymous_session,
        spoofed_session_headers_are_stripped_for_a_logged_in_session,
        own_cookie_is_removed_from_the_cookie_header_sent_upstream,
        http2_cookie_split_across_several_headers_still_finds_the_session,
        logout_endpoint_refuses_other_origin_next_targets,
        logout_endpoint_get_is_405_and_keeps_the_session,
        logout_endpoint_refuses_a_cross_site_post,
        control_headers_never_reach_the_client_on_a_session_false_route,
        control_headers_are_stripped_from_an_upstream_500_response,
        tampered_cookie_starts_a_fresh_session,
        garbage_and_empty_cookie_values_start_a_fresh_session,
        idle_timeout_expires_an_unused_session_and_use_keeps_it_alive,
        absolute_timeout_is_not_extended_by_use,
        absolute_timeout_restarts_at_login,
        require_user_answers_401_without_a_user_and_passes_with_one,
        require_user_redirects_get_to_login_url_with_next,
        session_false_route_sets_no_cookie_injects_nothing_and_strips_spoofed_headers,
        cross_site_unsafe_requests_get_403_without_reaching_upstream,
        same_origin_unsafe_requests_and_cross_site_gets_are_allowed,
        csrf_false_route_allows_cross_site_posts,
        logout_endpoint_location_is_a_valid_uri_reference
        );
    };
}

/// The tests that need the session kept server-side, run on every store but the sealed
/// cookie: there an old copy of the cookie stays valid until it expires (login, a role
/// change and logout cannot revoke it), a data change reissues the cookie, and the
/// cookie holds the sealed session rather than a sealed token.
macro_rules! server_side_stores {
    ($store:ident) => {
        on_store!(
            $store:
            configured_inject_names_are_stripped_from_clients_and_used_for_the_session,
            login_regenerates_the_cookie_keeps_the_public_id_and_the_old_cookie_turns_anonymous,
            changing_roles_alone_regenerates_and_keeps_the_user,
            session_data_set_delete_round_trip,
            logout_header_destroys_the_session_and_expires_the_cookie,
            logout_endpoint_post_redirects_to_next_expires_the_cookie_and_destroys_the_session,
            cookie_sealed_for_another_cookie_name_is_refused,
        );
    };
}

mod memory {
    use super::*;
    every_store!(memory);
    server_side_stores!(memory);
    // The memory store's own bound (`max_sessions`) exists only here.
    on_store!(memory: max_sessions_bounds_the_store_and_never_evicts_a_logged_in_session);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_flood_never_grows_the_store_beyond_max_sessions() {
        super::concurrent_flood_never_grows_the_store_beyond_max_sessions(Store::memory().await)
            .await;
    }
}

mod cookie {
    use super::*;
    // Not `server_side_stores!`: see there why those cannot hold for a sealed cookie.
    every_store!(cookie);
}

mod redis {
    use super::*;
    every_store!(redis);
    server_side_stores!(redis);
}

mod postgres {
    use super::*;
    every_store!(postgres);
    server_side_stores!(postgres);
}

mod memcached {
    use super::*;
    every_store!(memcached);
    server_side_stores!(memcached);
}
