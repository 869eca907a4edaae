//! The session backends a test can put behind a [`TestProxy`]: the memory store, the
//! sealed cookie, a real `redis-server`, a real PostgreSQL and a real `memcached`
//! (started by the test, see [`super::redis`], [`super::postgres`] and
//! [`super::memcached`]). `tests/sessions.rs` runs its HTTP-level
//! suite once per [`Store`] through its `every_store!` macro, as
//! `tests/store_conformance.rs` does one level down.

use std::sync::Arc;

use super::memcached::MemcachedServer;
use super::postgres::{unique_table, PgCluster};
use super::redis::RedisServer;
use super::{TestProxy, TestProxyBuilder};

/// A 32-byte `session.secret` the stores that need one get when the test sets none.
const STORE_SECRET: &str = "0123456789abcdef0123456789abcdef-store-secret";

/// One session backend, with whatever server it needs (stopped on drop).
pub enum Store {
    /// `store = "memory"` (the default).
    Memory,
    /// `store = "cookie"`: the whole session sealed into the cookie.
    Cookie,
    /// `store = "redis"` on a server of its own.
    Redis(RedisServer),
    /// `store = "postgres"` in a table of its own on the binary's shared cluster.
    Postgres {
        cluster: Arc<PgCluster>,
        table: String,
    },
    /// `store = "memcached"` on a server of its own.
    Memcached(MemcachedServer),
}

impl Store {
    pub async fn memory() -> Store {
        Store::Memory
    }

    pub async fn cookie() -> Store {
        Store::Cookie
    }

    pub async fn redis() -> Store {
        Store::Redis(RedisServer::start().await)
    }

    pub async fn postgres() -> Store {
        let cluster = tokio::task::spawn_blocking(PgCluster::shared)
            .await
            .expect("the PostgreSQL cluster starts");
        Store::Postgres {
            cluster,
            table: unique_table("sessions_http"),
        }
    }

    pub async fn memcached() -> Store {
        Store::Memcached(MemcachedServer::start().await)
    }

    /// The `[session] store` value.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Cookie => "cookie",
            Store::Redis(_) => "redis",
            Store::Postgres { .. } => "postgres",
            Store::Memcached(_) => "memcached",
        }
    }

    /// `config` (which has a `[session]` table) with this store selected: `store`, a
    /// `secret` when the config sets none and the store needs one, and the store's own
    /// table at the end.
    pub fn apply(&self, config: &str) -> String {
        assert!(
            config.contains("[session]\n"),
            "the config needs a [session] table: {config}"
        );
        let mut keys = format!("store = \"{}\"\n", self.kind());
        if !matches!(self, Store::Memory) && !config.contains("secret = ") {
            keys.push_str(&format!("secret = \"{STORE_SECRET}\"\n"));
        }
        let table = match self {
            Store::Memory | Store::Cookie => String::new(),
            Store::Redis(server) => {
                format!(
                    "\n[session.redis]\nurl = \"{}\"\ntimeout = \"2s\"\n",
                    server.url()
                )
            }
            Store::Postgres { cluster, table } => format!(
                "\n[session.postgres]\nurl = \"{}\"\ntable = \"{table}\"\ntimeout = \"2s\"\n",
                cluster.url()
            ),
            Store::Memcached(server) => format!(
                "\n[session.memcached]\nservers = [\"{}\"]\ntimeout = \"2s\"\n",
                server.address()
            ),
        };
        let mut text = config.replacen("[session]\n", &format!("[session]\n{keys}"), 1);
        text.push_str(&table);
        text
    }

    /// A proxy builder for `config` with this store.
    pub fn builder(&self, config: &str) -> TestProxyBuilder {
        TestProxy::builder().config(self.apply(config))
    }

    /// A proxy for `config` with this store.
    pub async fn start(&self, config: String) -> TestProxy {
        self.builder(&config).start().await
    }
}
