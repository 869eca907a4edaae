//! Shared state of a running proxy and its immutable per-generation [`Runtime`].
//!
//! A request loads the runtime once (`AppState::runtime`) and uses that snapshot to the
//! end, even if a reload swaps in a new one meanwhile. A reload builds the next runtime
//! whole (config, certificates, routes, pools) off the runtime threads and swaps it in
//! with one store; on any error the running one stays.
//!
//! What is fixed at start stays fixed: the session backend ([`SessionBackend`]) and
//! every other restart-only setting ([`RestartOnly`]). A reload that changes one of
//! them is refused whole ([`ReloadError::NeedsRestart`]), so the running config never
//! claims a store, listener or limit the process does not have.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::assertion::Assertions;
use crate::clock::Clock;
use crate::config::{Config, ConfigError, ConfigErrors, RestartOnly, StoreKind};
use crate::inject::InjectRules;
use crate::metrics::{route_label, Metrics, RequestMetrics};
use crate::random::{random_bytes, RandomError};
use crate::rate_limit::RateLimits;
use crate::router::Router;
use crate::session::store::SealedCodec;
use crate::session::{CookieCodec, Expiry, SessionBackend, SessionIndex, Sessions, Sweep};
use crate::shutdown::Signal;
use crate::tls::{load_cert_table, CertResolver, CertTable, TlsError};
use crate::upstream::{BackendRegistry, UpstreamPool};

/// One config generation, built whole and never mutated.
#[derive(Debug)]
pub struct Runtime {
    /// 1 for the config the proxy started with, +1 per successful reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub(crate) router: Router,
    /// Indexed like `config.upstreams`.
    pub(crate) upstreams: Vec<Arc<UpstreamPool>>,
    /// Finds our cookie, MACs and opens tokens, writes `Set-Cookie`.
    pub(crate) cookie: CookieCodec,
    /// Seals the whole session into the cookie's value, with this generation's secret
    /// ring (rotation is reloadable). Used only when the backend fixed at start is
    /// [`SessionBackend::Sealed`]; whether sessions are sealed is never read from here.
    pub(crate) sealed: SealedCodec,
    pub(crate) expiry: Expiry,
    pub(crate) inject: InjectRules,
    /// Pre-resolved metric handles; `None` without an admin listener (nothing reads them).
    pub(crate) metrics: Option<RequestMetrics>,
    /// Each route as logs and metrics name it (`host/path`), indexed like `config.routes`.
    pub(crate) route_names: Vec<Arc<str>>,
    /// The identity assertion signer (`inject.assertion`); `None` = off.
    pub(crate) assertions: Option<Arc<Assertions>>,
    /// The rate limiters (shared with the next generation while the rates stay).
    pub(crate) rate_limits: Arc<RateLimits>,
    /// The OIDC relying party (`[oidc]`); kept by the next generation while the table
    /// stays the same, so its discovery cache survives reloads.
    pub(crate) oidc: Option<Arc<crate::oidc::Oidc>>,
}

/// State shared by every connection of the process.
#[derive(Debug)]
pub struct AppState {
    runtime: ArcSwap<Runtime>,
    pub(crate) certs: Arc<CertResolver>,
    backends: BackendRegistry,
    /// Where sessions live: decided once at start, never by a reload. The request
    /// path's side of it.
    pub(crate) backend: SessionBackend,
    /// The admin side of the backend (list, end by user or id, count); `None` when
    /// sessions are not kept server-side (the admin API answers 501).
    pub(crate) index: Option<Arc<dyn SessionIndex>>,
    /// The upkeep side (expired sessions removed in the background); `None` when the
    /// backend needs none.
    pub(crate) sweep: Option<Arc<dyn Sweep>>,
    /// Small values with a TTL where the sessions are (OIDC logins in progress, the
    /// back-channel replay guard and `sid` index).
    pub(crate) kv: Arc<dyn crate::session::store::KeyValue>,
    /// The restart-only settings the process started with; a reload that changes
    /// one is refused.
    restart_only: RestartOnly,
    /// The cookie MAC key when `session.secret` is not set: random per start, kept
    /// across reloads so cookies stay valid.
    fallback_secret: [u8; 32],
    /// The assertion key (PKCS#8) when `inject.assertion_key` is empty: generated at
    /// start, kept across reloads, known to this instance only.
    fallback_assertion_key: Vec<u8>,
    /// Raised when shutdown begins: accept loops stop, connections finish gracefully,
    /// background tasks end, `/readyz` fails.
    pub(crate) stop: Arc<Signal>,
    /// Every metric of the process; kept across reloads.
    pub(crate) metrics: Arc<Metrics>,
    /// Numbers connections for `X-Request-Id`.
    pub(crate) request_ids: crate::conn::RequestIds,
    /// Held while a reload runs: SIGHUP and `POST /reload` never interleave.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// Whether request metrics are counted: the proxy started with an admin listener.
    count_metrics: bool,
    /// Where the request path reads session time (`now`) from: the system clock, or a
    /// manual one a test advances.
    pub(crate) clock: Clock,
}

/// Why a reload was refused. The running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The file is valid but changes keys that take effect only at start (each named,
    /// with its position in the file).
    #[error("{0}")]
    NeedsRestart(ConfigErrors),
    #[error("the reload task failed: {0}")]
    Task(String),
}

impl AppState {
    /// State for `config` with its certificates already loaded.
    /// `sessions` is opened by the caller (see `session::store::open`); `clock` is what
    /// the request path reads session time from. Fails only when the OS random
    /// generator does (the per-start secrets).
    pub fn new(
        config: Config,
        certs: CertTable,
        sessions: Sessions,
        clock: Clock,
    ) -> Result<Arc<AppState>, RandomError> {
        let backends = BackendRegistry::default();
        let resolver = Arc::new(CertResolver::new(certs));
        let fallback_secret = random_bytes::<32>()?;
        let metrics = Arc::new(Metrics::new());
        let count_metrics = config.listen.admin.is_some();
        let restart_only = RestartOnly::of(&config);
        let fallback_assertion_key = crate::assertion::generate_key().map_err(|_| RandomError)?;
        let runtime = build_runtime(
            &backends,
            Arc::new(config),
            1,
            &fallback_secret,
            count_metrics.then_some(&metrics),
            &fallback_assertion_key,
        );
        Ok(Arc::new(AppState {
            runtime: ArcSwap::from_pointee(runtime),
            certs: resolver,
            backends,
            backend: sessions.backend,
            index: sessions.index,
            sweep: sessions.sweep,
            kv: sessions.kv,
            restart_only,
            fallback_secret,
            fallback_assertion_key,
            stop: Arc::default(),
            metrics,
            request_ids: crate::conn::RequestIds::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            count_metrics,
            clock,
        }))
    }

    /// The current snapshot; call once per request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Re-reads the config file and certificates and swaps them in. Returns the new
    /// generation, or why nothing changed.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let current = self.runtime();
        let path: PathBuf = current.config.source.clone();
        let loaded = tokio::task::spawn_blocking(move || load_with_certs(&path))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        let (config, certs) = loaded;
        let changed = self.restart_only.changes(&config);
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(ConfigErrors(changed)));
        }
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        let mut next = build_runtime(
            &self.backends,
            Arc::new(config),
            current.generation + 1,
            &self.fallback_secret,
            self.count_metrics.then_some(&self.metrics),
            &self.fallback_assertion_key,
        );
        if next.rate_limits.rates() == current.rate_limits.rates() {
            // Same rates: keep counting where the running limiters are.
            next.rate_limits = current.rate_limits.clone();
        }
        if next.config.oidc == current.config.oidc {
            next.oidc = current.oidc.clone();
        }
        let generation = next.generation;
        // Certificates first: a request on the new routes may arrive on a new handshake.
        self.certs.swap(certs);
        self.runtime.store(Arc::new(next));
        Ok(generation)
    }

    /// Begins shutdown (see [`AppState::stop`]).
    pub fn begin_shutdown(&self) {
        self.stop.raise();
    }
}

/// Loads a config and its certificates: blocking, for start-up and `spawn_blocking`.
pub fn load_with_certs(path: &std::path::Path) -> Result<(Config, CertTable), ConfigErrors> {
    let config = Config::load(path)?;
    check_supported(&config).map_err(|e| ConfigErrors(vec![e]))?;
    let certs = load_certs(&config).map_err(|e| ConfigErrors(vec![e]))?;
    Ok((config, certs))
}

/// Settings the contract names that this build does not serve yet: refused up front,
/// never silently ignored.
fn check_supported(config: &Config) -> Result<(), ConfigError> {
    match config.session.store {
        StoreKind::Memory
        | StoreKind::Redis(_)
        | StoreKind::Cookie
        | StoreKind::Postgres(_)
        | StoreKind::Memcached(_) => Ok(()),
    }
}

/// Loads the certificates `config` names; errors point at the config key's line.
pub fn load_certs(config: &Config) -> Result<CertTable, ConfigError> {
    load_cert_table(&config.tls).map_err(|e: TlsError| {
        let key = e.key().to_string();
        config.error_at(&key, e.to_string())
    })
}

fn build_runtime(
    backends: &BackendRegistry,
    config: Arc<Config>,
    generation: u64,
    fallback_secret: &[u8; 32],
    metrics: Option<&Arc<Metrics>>,
    fallback_assertion_key: &[u8],
) -> Runtime {
    let current = config
        .session
        .secret
        .as_ref()
        .map_or(&fallback_secret[..], |s| &s.0[..]);
    let secrets: Vec<&[u8]> = std::iter::once(current)
        .chain(config.session.previous_secrets.iter().map(|s| &s.0[..]))
        .collect();
    Runtime {
        generation,
        router: Router::new(&config.routes),
        upstreams: backends.build(&config.upstreams),
        cookie: CookieCodec::new(&config.session, &secrets),
        sealed: SealedCodec::new(&config.session.cookie, &secrets),
        expiry: Expiry::of(&config.session),
        metrics: metrics.map(|m| RequestMetrics::new(m, &config)),
        route_names: config
            .routes
            .iter()
            .map(|r| route_label(r).into())
            .collect(),
        inject: InjectRules::new(&config.inject, &config.control).with_security(&config.security),
        assertions: assertions(&config, fallback_assertion_key),
        rate_limits: Arc::new(RateLimits::new(config.security.rates)),
        oidc: config.oidc.as_ref().and_then(|settings| {
            crate::oidc::Oidc::new(settings)
                .map_err(|error| tracing::error!(%error, "[oidc] is off: {error}"))
                .ok()
                .map(Arc::new)
        }),
        config,
    }
}

/// The assertion signer of `config`, if `inject.assertion` is on. The key was checked
/// when the config was validated, so a failure here is logged and leaves it off (fail
/// closed: no identity is asserted rather than one signed with an unknown key).
fn assertions(config: &Config, generated: &[u8]) -> Option<Arc<Assertions>> {
    let settings = config.security.assertion.as_ref()?;
    if settings.key.is_none() {
        tracing::info!(
            "inject.assertion: no assertion_key set, signing with a key generated at start; \
             it is known to this instance only and changes at restart (set assertion_key \
             to share one among instances)"
        );
    }
    match Assertions::new(settings, generated) {
        Ok(signer) => Some(Arc::new(signer)),
        Err(error) => {
            tracing::error!(%error, "identity assertions are off");
            None
        }
    }
}
