//! `store = "redis"` under Redis Sentinel (`sentinels` + `sentinel_master`), with real
//! processes: a master, its replica and three sentinels (tests/common/sentinel.rs).
//! The master is killed while requests run: session routes answer 503 (never an
//! anonymous session for a logged-in cookie) until the sentinels promote the replica,
//! then recover by themselves, with every session that had reached the replica intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::sentinel::{SentinelGroup, MASTER};
use common::session_app::{get, login, App};
use common::TestProxy;
use reqwest::StatusCode;

const SECRET: &str = "0123456789abcdef0123456789abcdef-sentinel-test";

/// A proxy with two workers whose sessions live in the master the sentinels name.
async fn proxy(app: &App, group: &SentinelGroup) -> TestProxy {
    let sentinels: Vec<String> = group.urls().iter().map(|u| format!("\"{u}\"")).collect();
    TestProxy::builder()
        .listen("workers = 2")
        .config(format!(
            "[session]\nsecret = \"{SECRET}\"\nstore = \"redis\"\n\n\
             [session.redis]\nsentinels = [{}]\nsentinel_master = \"{MASTER}\"\n\
             timeout = \"250ms\"\n\n\
             [upstreams.app]\nservers = [\"{}\"]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
            sentinels.join(", "),
            app.addr
        ))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_answers_503_until_the_replica_is_promoted_then_sessions_are_back() {
    let mut group = SentinelGroup::start().await;
    let app = App::start().await;
    let proxy = proxy(&app, &group).await;
    let users = ["ada", "bob", "cyd", "dee", "eve"];
    let mut cookies = Vec::new();
    for user in users {
        cookies.push(login(&proxy, user).await);
    }
    for (user, cookie) in users.iter().zip(&cookies) {
        let reply = get(&proxy, "/", Some(cookie)).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, *user));
    }
    group.wait_replicated();
    let old_master = group.master.port;
    assert_eq!(group.named_master_port(), Some(old_master));

    group.master.kill();
    let killed = Instant::now();
    // Requests keep coming (one logged-in user after the other) until every user has
    // been served ten times in a row after the failover.
    let mut unavailable = 0;
    let mut first_ok_after_503: Option<Duration> = None;
    let mut streak = 0;
    let mut i = 0;
    while streak < 10 * users.len() {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "no recovery within 40 s of killing the master ({unavailable} answers 503)"
        );
        let k = i % users.len();
        i += 1;
        let reply = get(&proxy, "/", Some(&cookies[k])).await;
        match reply.status {
            StatusCode::OK => {
                assert_eq!(
                    reply.body, users[k],
                    "a logged-in cookie was served as another session: {reply:?}"
                );
                if unavailable > 0 && first_ok_after_503.is_none() {
                    first_ok_after_503 = Some(killed.elapsed());
                }
                streak += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                unavailable += 1;
                streak = 0;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a session route answered {other} during the failover: {reply:?}"),
        }
    }
    assert!(unavailable > 0, "the kill was never seen (no 503)");
    let promoted = group.named_master_port();
    assert_eq!(
        promoted,
        Some(group.replica.port),
        "the replica was not promoted"
    );
    eprintln!(
        "sentinel failover: session routes answered 503 ({unavailable} requests) for {:?} \
         after the master was killed, then served every session again",
        first_ok_after_503.unwrap_or_default()
    );

    // New sessions and logins work on the promoted master.
    let cookie = login(&proxy, "fay").await;
    let reply = get(&proxy, "/", Some(&cookie)).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "fay"));
}
