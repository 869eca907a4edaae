//! The serde mirror of `[session]` and the stores' own tables, `[session.redis]`,
//! `[session.memcached]` and `[session.postgres]` (part of `raw.rs`, split out by concern; no logic).

use serde::Deserialize;

/// `same_site`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(in crate::config) enum RawSameSite {
    Strict,
    Lax,
    None,
}

/// `store`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(in crate::config) enum RawStore {
    Memory,
    Redis,
    Cookie,
    Postgres,
    Memcached,
}

/// `[session]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawSession {
    #[serde(default = "default_cookie")]
    pub(in crate::config) cookie: String,
    #[serde(default = "default_same_site")]
    pub(in crate::config) same_site: RawSameSite,
    #[serde(default = "super::default_true")]
    pub(in crate::config) secure: bool,
    #[serde(default)]
    pub(in crate::config) persistent: bool,
    #[serde(default = "default_idle_timeout")]
    pub(in crate::config) idle_timeout: String,
    #[serde(default = "default_absolute_timeout")]
    pub(in crate::config) absolute_timeout: String,
    #[serde(default = "default_store")]
    pub(in crate::config) store: RawStore,
    pub(in crate::config) secret: Option<String>,
    #[serde(default = "default_max_sessions")]
    pub(in crate::config) max_sessions: u64,
    #[serde(default)]
    pub(in crate::config) redis: RawRedis,
    #[serde(default)]
    pub(in crate::config) previous_secrets: Vec<String>,
    /// `""` = off.
    #[serde(default)]
    pub(in crate::config) persist: String,
    #[serde(default = "default_persist_interval")]
    pub(in crate::config) persist_interval: String,
    /// Absent = 10 % of `idle_timeout`.
    pub(in crate::config) touch_interval: Option<String>,
    #[serde(default = "default_anomaly")]
    pub(in crate::config) anomaly: RawAnomaly,
    #[serde(default)]
    pub(in crate::config) postgres: RawPostgres,
    #[serde(default)]
    pub(in crate::config) memcached: RawMemcached,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            cookie: default_cookie(),
            same_site: default_same_site(),
            secure: true,
            persistent: false,
            idle_timeout: default_idle_timeout(),
            absolute_timeout: default_absolute_timeout(),
            store: default_store(),
            secret: None,
            max_sessions: default_max_sessions(),
            redis: RawRedis::default(),
            previous_secrets: Vec::new(),
            persist: String::new(),
            persist_interval: default_persist_interval(),
            touch_interval: None,
            anomaly: default_anomaly(),
            postgres: RawPostgres::default(),
            memcached: RawMemcached::default(),
        }
    }
}

/// `session.anomaly`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(in crate::config) enum RawAnomaly {
    Off,
    Flag,
    End,
}

fn default_anomaly() -> RawAnomaly {
    RawAnomaly::Flag
}

fn default_cookie() -> String {
    "__Host-cloakroom".to_owned()
}

fn default_same_site() -> RawSameSite {
    RawSameSite::Lax
}

fn default_idle_timeout() -> String {
    "30m".to_owned()
}

fn default_absolute_timeout() -> String {
    "12h".to_owned()
}

fn default_persist_interval() -> String {
    "30s".to_owned()
}

fn default_store() -> RawStore {
    RawStore::Memory
}

fn default_max_sessions() -> u64 {
    1_000_000
}

/// `[session.redis]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawRedis {
    #[serde(default = "default_redis_url")]
    pub(in crate::config) url: String,
    #[serde(default = "default_redis_prefix")]
    pub(in crate::config) prefix: String,
    #[serde(default = "default_redis_timeout")]
    pub(in crate::config) timeout: String,
    /// Redis Cluster seed nodes; non-empty = Cluster mode (instead of `url`).
    #[serde(default)]
    pub(in crate::config) urls: Vec<String>,
    /// PEM file of the authorities a `rediss://` server's certificate may chain to;
    /// `""` = the system's.
    #[serde(default)]
    pub(in crate::config) ca: String,
    /// Redis Sentinel nodes; non-empty = Sentinel mode (instead of `url`/`urls`).
    #[serde(default)]
    pub(in crate::config) sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (required with `sentinels`).
    #[serde(default)]
    pub(in crate::config) sentinel_master: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: default_redis_url(),
            prefix: default_redis_prefix(),
            timeout: default_redis_timeout(),
            urls: Vec::new(),
            ca: String::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
        }
    }
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/0".to_owned()
}

fn default_redis_prefix() -> String {
    "cloakroom:".to_owned()
}

fn default_redis_timeout() -> String {
    "250ms".to_owned()
}

/// `[session.postgres]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawPostgres {
    #[serde(default = "default_postgres_url")]
    pub(in crate::config) url: String,
    #[serde(default = "default_postgres_table")]
    pub(in crate::config) table: String,
    #[serde(default = "default_postgres_pool")]
    pub(in crate::config) pool: u64,
    #[serde(default = "default_postgres_timeout")]
    pub(in crate::config) timeout: String,
}

impl Default for RawPostgres {
    fn default() -> Self {
        RawPostgres {
            url: default_postgres_url(),
            table: default_postgres_table(),
            pool: default_postgres_pool(),
            timeout: default_postgres_timeout(),
        }
    }
}

fn default_postgres_url() -> String {
    "postgres://cloakroom@127.0.0.1:5432/cloakroom".to_owned()
}

fn default_postgres_table() -> String {
    "cloakroom_sessions".to_owned()
}

fn default_postgres_pool() -> u64 {
    16
}

fn default_postgres_timeout() -> String {
    "500ms".to_owned()
}

/// `[session.memcached]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawMemcached {
    #[serde(default = "default_memcached_servers")]
    pub(in crate::config) servers: Vec<String>,
    #[serde(default = "default_redis_prefix")]
    pub(in crate::config) prefix: String,
    #[serde(default = "default_redis_timeout")]
    pub(in crate::config) timeout: String,
}

impl Default for RawMemcached {
    fn default() -> Self {
        RawMemcached {
            servers: default_memcached_servers(),
            prefix: default_redis_prefix(),
            timeout: default_redis_timeout(),
        }
    }
}

fn default_memcached_servers() -> Vec<String> {
    vec!["127.0.0.1:11211".to_owned()]
}
