//! Validated configuration: the typed form of `proxy.toml`.
//!
//! `load` reads the file, interpolates `${ENV}` values, deserialises it into the serde
//! mirror in [`raw`], and turns that into the types below in [`validate`]. Every later
//! stage trusts these values: addresses are parsed, durations are `Duration`s, header
//! names are `HeaderName`s, routes point at existing upstreams by index.
//!
//! Nothing here does network IO. Loading reads files (config, and in `check` the
//! certificates), so call it at start-up or from `spawn_blocking`.

mod error;
mod interpolate;
mod locate;
mod raw;
mod restart;
mod security;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use error::{ConfigError, ConfigErrors};
pub use restart::RestartOnly;
pub use security::{AnomalyMode, AssertionConfig, Rate, RateLimitsConfig, SecurityConfig};

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (used for reload and in error messages).
    pub source: PathBuf,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub timeouts: TimeoutsConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub inject: InjectConfig,
    pub control: ControlConfig,
    pub log: LogConfig,
    /// In file order; `RouteConfig::upstream` indexes into this.
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// The text `source` held when this was loaded, for [`Config::error_at`]. Its `Debug`
    /// is redacted: the text may hold secrets.
    pub(crate) text: locate::SourceText,
    /// Settings that are legal but probably not meant: `check` prints them, the proxy
    /// logs them at start and reload.
    pub warnings: Vec<ConfigError>,
    /// Header hygiene, rate limits, assertion, hijack signals, HSTS (keys of several
    /// sections, gathered).
    pub security: SecurityConfig,
    /// `[oidc]`: the built-in login; `None` = off.
    pub oidc: Option<OidcConfig>,
}

/// `[oidc]`: the OpenID Connect provider the built-in login uses.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcConfig {
    /// Exactly as the provider names itself (no trailing-slash games).
    pub issuer: String,
    pub client_id: String,
    /// `None`: a public client (PKCE alone).
    pub client_secret: Option<Secret>,
    /// Always starts with `openid`.
    pub scopes: Vec<String>,
    pub user_claim: String,
    /// `None`: no roles from the provider.
    pub roles_claim: Option<String>,
    /// Extra PEM roots trusted for the provider, loaded at validation.
    pub ca: Option<PathBuf>,
    pub allow_http_loopback: bool,
    pub logout_at_idp: bool,
}

/// `[listen]`
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub https: SocketAddr,
    /// Plain HTTP listener that answers 308 to the https origin.
    pub http: Option<SocketAddr>,
    /// Admin listener (plain HTTP).
    pub admin: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` we extend instead of replacing (`trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Threads that accept and serve https connections, each with its own event loop
    /// (`workers`; 0 = one per core). A connection stays on the thread that accepted it.
    pub workers: usize,
    /// `admin_token`: the admin paths (all but `/healthz`, `/readyz`) need
    /// `Authorization: Bearer <token>`. Required when `admin` is not on loopback.
    pub admin_token: Option<Secret>,
}

impl ListenConfig {
    /// `workers`, with 0 resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// A PEM certificate chain and its private key, as paths resolved against the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[tls]` and `[[tls.sni]]`
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `tls.cert`/`tls.key`; optional with `[tls.acme]`.
    pub default: Option<CertPaths>,
    /// `[tls.acme]`: certificates obtained from an ACME CA.
    pub acme: Option<AcmeConfig>,
    /// Lower-cased hostnames (exact, or `*.example.com`) with their certificates.
    pub sni: Vec<SniConfig>,
}

/// `[tls.acme]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The directory URL of the CA.
    pub directory: String,
    /// The account's contact (`mailto:` is added); empty = none.
    pub email: String,
    /// Lower-case names certified together in one certificate.
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    /// Folder of the account key, certificates and keys (absolute).
    pub cache: PathBuf,
    /// A PEM root trusted for the directory instead of the public roots (test CAs).
    pub ca: Option<PathBuf>,
    pub renew_before: Duration,
}

/// `tls.acme.challenge`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// Answered on the https listener (ALPN `acme-tls/1`).
    TlsAlpn01,
    /// Answered on `listen.http` at `/.well-known/acme-challenge/{token}`.
    Http01,
}

/// One `[[tls.sni]]` entry.
#[derive(Debug, Clone)]
pub struct SniConfig {
    /// Lower-case; exact or starting with `*.`.
    pub hostname: String,
    pub certs: CertPaths,
}

/// `[timeouts]`
#[derive(Debug, Clone)]
pub struct TimeoutsConfig {
    /// TCP connect to an upstream server. Default 2s.
    pub connect: Duration,
    /// The client must send its request head within this. Default 10s.
    pub header_read: Duration,
    /// TLS handshake deadline (`tls_handshake`). Default 10s.
    pub tls_handshake: Duration,
    /// Upstream must answer (response head) within this. Default 30s.
    pub upstream: Duration,
    /// Keep-alive idle on a client connection. Default 60s.
    pub client_idle: Duration,
    /// Keep-alive idle of pooled upstream connections (`upstream_idle`). Default 30s.
    pub upstream_idle: Duration,
    /// How long in-flight requests may run after SIGTERM. Default 30s.
    pub shutdown_grace: Duration,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is
    /// closed; `header_read` and `client_idle` stop applying at the upgrade. Default 1h.
    pub tunnel_idle: Duration,
}

/// `[limits]`
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Request head larger than this: 431. Default 16384; at least 8192 (hyper's minimum buffer).
    pub max_header_bytes: usize,
    /// Request body larger than this: 413. Default 10 MiB.
    pub max_body_bytes: u64,
    /// Concurrent client connections. Default 10000.
    pub max_connections: usize,
}

/// `same_site` of the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Where sessions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis(RedisConfig),
    Cookie,
    Postgres(PostgresConfig),
    Memcached(MemcachedConfig),
}

/// `[session.memcached]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedConfig {
    /// `host:port` of each server, as written (consistent hashing keys on these
    /// names, so every instance must spell them alike; their order does not matter).
    pub servers: Vec<String>,
    /// Prepended to every key (no whitespace or control characters).
    pub prefix: String,
    /// Deadline of one store operation (default 250 ms); past it a session route
    /// answers 503.
    pub timeout: Duration,
}

/// `[session.redis]`
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS); may hold a password, so `Debug` hides it.
    pub url: String,
    pub prefix: String,
    /// Deadline of one store operation (default 250 ms); past it a session route
    /// answers 503.
    pub timeout: Duration,
    /// Redis Cluster seed nodes (`urls`); non-empty = Cluster mode, `url` unused.
    pub urls: Vec<String>,
    /// PEM authorities for `rediss://` (`ca`); `None` = the system's.
    pub ca: Option<PathBuf>,
    /// Redis Sentinel (`sentinels` + `sentinel_master`); `Some` = Sentinel mode, `url`
    /// and `urls` unused.
    pub sentinel: Option<SentinelConfig>,
}

/// `session.redis.sentinels` and `sentinel_master`: where to ask which server is the
/// master. The database, user and password of the sentinel URLs (the same on every
/// entry) are used for the sentinels and for the master; `rediss://` means TLS to both.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `redis://` or `rediss://` URLs of the sentinels (may hold a password).
    pub urls: Vec<String>,
    /// The monitored master's name.
    pub master: String,
}

/// A Redis URL with its password replaced, for `Debug`.
fn hide_password(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_auth, rest)) => {
            let scheme = scheme_auth.split("://").next().unwrap_or_default();
            format!("{scheme}://<redacted>@{rest}")
        }
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|u| hide_password(u))
                    .collect::<Vec<_>>(),
            )
            .field("master", &self.master)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = hide_password;
        f.debug_struct("RedisConfig")
            .field("url", &hide(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field(
                "urls",
                &self.urls.iter().map(|u| hide(u)).collect::<Vec<_>>(),
            )
            .field("ca", &self.ca)
            .field("sentinel", &self.sentinel)
            .finish()
    }
}

/// `[session.postgres]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL, `${ENV}` already expanded (it may hold a password: its
    /// `Debug` is redacted). Parsed and checked by validation; `sslrootcert` removed.
    pub url: PostgresUrl,
    /// `sslmode=require`: the PEM file of the CA that signs the server's certificate
    /// (the URL's `sslrootcert`, relative to the config file); `None` = the built-in
    /// web PKI roots.
    pub root_cert: Option<PathBuf>,
    /// The sessions table, optionally schema-qualified (`schema.table`); a plain SQL
    /// identifier (checked), so it is written into statements unquoted.
    pub table: String,
    /// Connections in the pool (default 16).
    pub pool: usize,
    /// Deadline of one store operation (default 500 ms); past it a session route
    /// answers 503.
    pub timeout: Duration,
}

/// A PostgreSQL URL; `Debug` never shows it (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(pub String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresUrl(<redacted>)")
    }
}

/// A secret value whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[session]`
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Cookie name; a valid RFC 6265 token. Default `__Host-cloakroom`.
    pub cookie: String,
    pub same_site: SameSite,
    /// `Secure` attribute (`secure`, default true; must be true for `__Host-` and `same_site = "none"`).
    pub secure: bool,
    /// true: `Max-Age = absolute_timeout`; false: browser-session cookie.
    pub persistent: bool,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub store: StoreKind,
    /// None: a random secret per start (memory store only).
    pub secret: Option<Secret>,
    /// Bound of the memory store. Default 1_000_000.
    pub max_sessions: usize,
    /// Older secrets still accepted for existing cookies (rotation); new cookies use
    /// `secret`.
    pub previous_secrets: Vec<Secret>,
    /// Memory store: the snapshot file (`None` = off).
    pub persist: Option<PathBuf>,
    /// Memory store: how often the snapshot is written (and always at shutdown).
    pub persist_interval: Duration,
    /// A session's use is recorded (and a sealed cookie re-issued) at most this often.
    pub touch_interval: Duration,
}

impl SessionConfig {
    /// Deadline of one store operation.
    pub fn store_timeout(&self) -> Duration {
        match &self.store {
            StoreKind::Redis(redis) => redis.timeout,
            StoreKind::Memcached(memcached) => memcached.timeout,
            // The store applies `timeout` itself (and marks the database down when it
            // passes); this outer bound is a backstop a little later.
            StoreKind::Postgres(postgres) => {
                postgres.timeout.saturating_add(Duration::from_millis(100))
            }
            // In-process stores answer at once; the bound only guards against a bug.
            StoreKind::Memory | StoreKind::Cookie => Duration::from_secs(2),
        }
    }
}

/// `[inject]`: the request headers the upstream receives. `None` = not sent.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub id: Option<HeaderName>,
    pub user: Option<HeaderName>,
    pub roles: Option<HeaderName>,
    pub data: Option<HeaderName>,
    pub assertion: Option<HeaderName>,
}

/// `[control]`: response headers an upstream may send; never forwarded to the client.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub set_user: HeaderName,
    pub set_roles: HeaderName,
    pub set_data: HeaderName,
    pub logout: HeaderName,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// One info line per request (`access`, default true).
    pub access: bool,
    /// `format`: how every log line is written (takes effect at start).
    pub format: LogFormat,
}

/// `[log] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// `balance`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Random,
}

/// `affinity`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Sticky,
    Hash,
    None,
}

/// `on_pinned_down`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPinnedDown {
    Repin,
    Fail,
}

/// One upstream server: `"127.0.0.1:9001"` or `{ addr = "...", weight = 2, drain = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// As written (`host:port`); the stable identity of the server across reloads.
    pub name: String,
    /// Resolved at load time.
    pub addr: SocketAddr,
    /// Default 1; 1..=1000.
    pub weight: u32,
    /// No new sessions are pinned here; pinned ones stay.
    pub drain: bool,
}

/// `[upstreams.NAME.health]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a server down (`fall`, default 2).
    pub fall: u32,
    /// Consecutive passes that mark it up again (`rise`, default 2).
    pub rise: u32,
}

/// `[upstreams.NAME]`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerConfig>,
    pub balance: Balance,
    pub affinity: Affinity,
    pub on_pinned_down: OnPinnedDown,
    pub health: Option<HealthConfig>,
}

/// A route's host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Lower-case host without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com` (lower-case): matches any host ending in it.
    Suffix(String),
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Starts with `/`.
    pub path: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub session: bool,
    pub csrf: bool,
    pub require_user: bool,
    pub login_url: Option<String>,
    /// `login = "oidc"`: requests without a user start the built-in login.
    pub login_oidc: bool,
    /// `allow_users`, `allow_domains`, `allow_roles`: with a user, anyone matching none
    /// of them gets 403 (all empty = any user).
    pub allow: Allow,
    /// Overrides `timeouts.upstream`.
    pub timeout: Option<Duration>,
}

/// A route's `allow_*` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    pub users: Vec<String>,
    /// Lower-case, without `@`.
    pub domains: Vec<String>,
    pub roles: Vec<String>,
}

impl Allow {
    /// Whether any list is set.
    pub fn any(&self) -> bool {
        !(self.users.is_empty() && self.domains.is_empty() && self.roles.is_empty())
    }

    /// Whether `user` with `roles` (comma-separated) may pass: allowed when no list is
    /// set, else when one entry of any list matches.
    pub fn permits(&self, user: &str, roles: Option<&str>) -> bool {
        if !self.any() {
            return true;
        }
        if self.users.iter().any(|u| u == user) {
            return true;
        }
        if let Some((_, domain)) = user.rsplit_once('@') {
            if self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                return true;
            }
        }
        roles.is_some_and(|roles| {
            roles
                .split(',')
                .map(str::trim)
                .any(|r| self.roles.iter().any(|a| a == r))
        })
    }
}

impl Config {
    /// Reads, interpolates, parses and validates `path`. Does not load certificates.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        validate::load(path)
    }

    /// Parses and validates `text` as if it were the file `path` (relative paths resolve
    /// against `path`'s folder). `env` looks up `${VAR}`.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        validate::parse(path, text, env)
    }
}
