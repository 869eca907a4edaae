//! How much Redis memory does one session take in the Redis store?
//!
//! Creates 100 000 sessions through `RedisStore` (as the proxy does at commit; 1 in 10
//! logged in, so the by-user index is in the figure too) on the Redis at `REDIS_URL`
//! (default `redis://127.0.0.1:6379`; use an empty server: it is flushed first) and
//! prints the growth of `used_memory` (`INFO memory`) per session.
//!
//! `REDIS_URL=redis://127.0.0.1:PORT cargo run --release --example redis_session_memory`

use std::sync::Arc;
use std::time::Duration;

use cloakroom::config::RedisConfig;
use cloakroom::session::{now_ms, Expiry, Identity, PublicId, RedisStore, Session, SessionStore};

const SESSIONS: usize = 100_000;
/// Creations in flight at once (the connection pipelines them).
const IN_FLIGHT: usize = 256;

async fn used_memory(client: &redis::Client) -> Result<u64, String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no used_memory in INFO memory".to_owned())
}

async fn measure(url: String) -> Result<(), String> {
    let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("FLUSHDB")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let config = RedisConfig {
        url,
        prefix: "cloakroom:".into(),
        timeout: Duration::from_secs(5),
        urls: Vec::new(),
        ca: None,
        sentinel: None,
    };
    let store = Arc::new(RedisStore::open(&config, None).map_err(|e| e.to_string())?);
    let expiry = Expiry::new(
        Duration::from_secs(30 * 60),
        Duration::from_secs(12 * 3600),
        Duration::from_secs(3 * 60),
    );
    let before = used_memory(&client).await?;
    let now = now_ms();
    let mut created = 0;
    while created < SESSIONS {
        let batch = IN_FLIGHT.min(SESSIONS - created);
        let creations = (0..batch).map(|i| {
            let store = store.clone();
            let n = created + i;
            async move {
                let id = cloakroom::session::random_bytes().map_err(|e| e.to_string())?;
                let mut session = Session::new(PublicId(id), now);
                if n % 10 == 0 {
                    session.identity = Some(Arc::new(Identity {
                        user: Some(format!("user{}", n / 10).into()),
                        roles: Some("staff".into()),
                    }));
                }
                store
                    .create(&session, expiry)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        });
        for result in futures_util::future::join_all(creations).await {
            result?;
        }
        created += batch;
    }
    let after = used_memory(&client).await?;
    let per = (after.saturating_sub(before)) as f64 / SESSIONS as f64;
    println!(
        "{SESSIONS} sessions (1 in 10 logged in): used_memory {before} -> {after} bytes, \
         {per:.0} bytes per session"
    );
    Ok(())
}

fn main() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(measure(url)) {
        eprintln!("redis_session_memory: {error}");
        std::process::exit(1);
    }
}
