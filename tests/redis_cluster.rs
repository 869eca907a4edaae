//! The Redis store on a real Redis Cluster: 3 primaries on ephemeral ports, joined with
//! `redis-cli --cluster create`. Sessions land in many hash slots (and so on every
//! node); each session's own keys share one slot, so regeneration and logout stay
//! atomic scripts; the by-user index and the count reach across nodes. A proxy on the
//! cluster serves a login and a logout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloakroom::config::RedisConfig;
use cloakroom::session::{
    Expiry, Identity, PublicId, RedisStore, Session, SessionIndex, SessionStore,
};
use common::redis::RedisCluster;
use common::{MockUpstream, TestProxy};

const SECRET: &str = "0123456789abcdef0123456789abcdef-cluster-test";

const EXPIRY: Expiry = Expiry {
    idle_ms: 60_000,
    absolute_ms: 600_000,
    touch_ms: 0,
};

fn session(user: &str, at: u64) -> Session {
    let mut s = Session::new(PublicId(cloakroom::session::random_bytes().unwrap()), at);
    s.identity = Some(Arc::new(Identity {
        user: Some(user.into()),
        roles: None,
    }));
    s
}

/// A store on the cluster, opened from its seed nodes as the proxy opens it.
fn cluster_store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::open(
        &RedisConfig {
            url: String::new(),
            prefix: "cloakroom:".into(),
            timeout: Duration::from_secs(1),
            urls: cluster.urls(),
            ca: None,
            sentinel: None,
        },
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn cluster_store_spreads_sessions_over_nodes_and_keeps_each_one_atomic() {
    let cluster = RedisCluster::start().await;
    let store = cluster_store(&cluster);
    let now = cloakroom::session::now_ms();
    let mut tokens = Vec::new();
    for i in 0..24 {
        let s = session(if i % 2 == 0 { "ann" } else { "bob" }, now);
        let token = store.create(&s, EXPIRY).await.unwrap();
        tokens.push((token, s));
    }
    assert_eq!(store.count().await.unwrap(), 24);
    // Sessions sit on every node.
    for node in &cluster.nodes {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &node.port.to_string(), "dbsize"])
            .output()
            .unwrap();
        let keys: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(keys > 0, "node {} holds no key", node.port);
    }
    // Regenerate and save in the session's slot; the old token is dead.
    let (old, s) = tokens.pop().unwrap();
    let fresh = store.regenerate(&old, &s, EXPIRY).await.unwrap();
    assert!(store.load(&old, now, EXPIRY).await.unwrap().is_none());
    assert_eq!(
        store
            .load(&fresh, now, EXPIRY)
            .await
            .unwrap()
            .unwrap()
            .public_id,
        s.public_id
    );
    store.save(&fresh, &s, EXPIRY).await.unwrap();
    // The by-user index spans slots.
    assert_eq!(store.list_user("ann", now, EXPIRY).await.unwrap().len(), 12);
    assert_eq!(store.destroy_user("ann").await.unwrap(), 12);
    assert!(store.destroy_public(&s.public_id).await.unwrap());
    store.destroy(&tokens[1].0).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 10);
    for (token, s) in &tokens[3..] {
        let live = store.load(token, now, EXPIRY).await.unwrap().is_some();
        assert_eq!(live, s.user() == Some("bob"));
    }
}

#[tokio::test]
async fn a_proxy_on_a_cluster_serves_login_and_logout() {
    let cluster = RedisCluster::start().await;
    let upstream = MockUpstream::start("app").await;
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let proxy = TestProxy::builder()
        .config(format!(
            r#"
[session]
store = "redis"
secret = "{SECRET}"

[session.redis]
urls = [{}]

[upstreams.app]
servers = ["{}"]

[[routes]]
path = "/"
upstream = "app"
"#,
            urls.join(", "),
            upstream.server()
        ))
        .start()
        .await;
    let client = proxy.client_h1();
    let cookie_of = |response: &reqwest::Response| {
        response
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
    };
    let first = client.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let cookie = cookie_of(&first).unwrap();
    upstream.add_response_header("x-session-set-user", "ann");
    let login = client
        .get(proxy.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let logged_in = cookie_of(&login).unwrap();
    assert_ne!(logged_in, cookie);
    upstream.add_response_header("x-session-logout", "1");
    let out = client
        .get(proxy.url("/"))
        .header("cookie", &logged_in)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(
        upstream.last_request().one("x-session-user").as_deref(),
        Some("ann")
    );
    let store = cluster_store(&cluster);
    assert_eq!(
        store.count().await.unwrap(),
        0,
        "login replaced, logout ended"
    );
}
