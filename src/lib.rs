//! cloakroom: a TLS-terminating reverse proxy that gives unmodified legacy web apps
//! hardened session cookies, server-side sessions, sticky affinity and identity headers.
//!
//! The binary (`main.rs`) parses the command line, binds the sockets and wires signals to
//! a [`Handle`]; [`run`] does the rest. Tests call [`run`] directly on ephemeral ports.
//!
//! Request path: TLS ([`tls`]) → accept ([`listener`]) → route ([`router`]) → session →
//! affinity → inject → upstream ([`upstream`]) → control headers → cookie, in
//! `proxy::pipeline`.

pub mod admin;
pub mod anomaly;
pub mod assertion;
pub mod clock;
pub mod config;
mod conn;
pub mod demo;
pub mod error_chain;
pub mod health;
pub mod inject;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod oidc;
mod plain_http;
pub mod proxy;
pub mod random;
pub mod rate_limit;
pub mod redirect;
pub mod router;
pub mod session;
mod shutdown;
pub mod state;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use config::Config;
pub use state::{AppState, ReloadError};
pub use tls::CertTable;

/// The bound sockets `run` serves on. The caller binds them, so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    pub https: TcpListener,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let https = listener::bind_https(config.listen.https).map_err(|e| {
            let addr = config.listen.https;
            std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
        })?;
        Ok(Listeners {
            https,
            http: match config.listen.http {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
            admin: match config.listen.admin {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            },
        })
    }
}

/// What a [`Handle`] asks of a running proxy.
#[derive(Debug)]
enum Command {
    Reload(oneshot::Sender<Result<u64, ReloadError>>),
    Shutdown,
}

/// Controls a running proxy. Dropping every handle shuts it down.
#[derive(Debug, Clone)]
pub struct Handle(mpsc::UnboundedSender<Command>);

/// The receiving side of a [`Handle`], given to [`run`], and the clock the proxy
/// reads session time from.
#[derive(Debug)]
pub struct Commands(mpsc::UnboundedReceiver<Command>, clock::Clock);

/// A handle and the commands it sends; the proxy uses the system clock.
pub fn control() -> (Handle, Commands) {
    control_with_clock(clock::Clock::system())
}

/// Like [`control`], with the proxy reading session time from `clock` (tests pass a
/// [`clock::Clock::manual`] one and advance it instead of sleeping).
pub fn control_with_clock(clock: clock::Clock) -> (Handle, Commands) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Handle(tx), Commands(rx, clock))
}

impl Handle {
    /// Reloads the config file and certificates; returns the new generation or why the
    /// running config was kept.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Command::Reload(tx))
            .map_err(|_| ReloadError::Task("the proxy is not running".into()))?;
        rx.await
            .map_err(|_| ReloadError::Task("the proxy stopped during reload".into()))?
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        let _ = self.0.send(Command::Shutdown);
    }
}

/// Locks `mutex`, recovering from poisoning: what we keep under locks (connection
/// pools, probe counters, waker lists) stays valid even if a holder panicked, and the
/// request path must not fail because of it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("session store setup failed: {0}")]
    Store(#[from] session::StoreError),
    #[error("{0}")]
    Random(#[from] random::RandomError),
    #[error("listener setup failed: {0}")]
    Listener(#[source] std::io::Error),
}

/// Serves `listeners` with `config` until a shutdown command (or every handle dropped),
/// then stops accepting, lets in-flight requests finish within
/// `timeouts.shutdown_grace`, and returns.
pub async fn run(
    config: Config,
    certs: CertTable,
    listeners: Listeners,
    mut commands: Commands,
) -> Result<(), RunError> {
    let max_connections = config.limits.max_connections;
    let max_header_bytes = config.limits.max_header_bytes;
    let opened = session::store::open(&config.session).await?;
    let state = AppState::new(config, certs, opened.sessions.clone(), commands.1.clone())?;
    let acme = state.runtime().config.tls.acme.clone();
    let tls_alpn = acme
        .as_ref()
        .is_some_and(|a| a.challenge == config::AcmeChallenge::TlsAlpn01);
    let tls = TlsAcceptor::from(tls::server_config(state.certs.clone(), tls_alpn)?);
    // ACME: the cached certificate is served before the listeners start.
    let acme = match acme {
        Some(acme) => Some(
            tls::acme::Manager::start(
                acme,
                state.certs.clone(),
                opened.sessions.kv.clone(),
                state.metrics.clone(),
            )
            .await,
        ),
        None => None,
    };
    let cut = Arc::new(shutdown::Signal::default());
    let open = state.metrics.open_connections.clone();
    let https_port = listeners
        .https
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(443);
    let workers = state.runtime().config.listen.worker_count();

    let acceptor = listener::Acceptor {
        state: state.clone(),
        tls,
        builders: Arc::new(listener::HttpBuilders::new(max_header_bytes)),
        permits: Arc::new(Semaphore::new(max_connections)),
        cut: cut.clone(),
        open: open.clone(),
    };
    let https = listener::worker_listeners(listeners.https, workers).map_err(RunError::Listener)?;
    let mut worker_threads = Vec::with_capacity(workers);
    for (index, listener) in https.into_iter().enumerate() {
        let acceptor = acceptor.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cloakroom-w{index}"))
            .spawn(move || listener::worker(listener, acceptor))
            .map_err(RunError::Listener)?;
        worker_threads.push(thread);
    }
    drop(acceptor);

    let mut accept_loops = JoinSet::new();
    let mut admin_loop = JoinSet::new();
    let admin_stop = Arc::new(shutdown::Signal::default());
    if let Some(http) = listeners.http {
        let challenges = state.certs.challenges().clone();
        accept_loops.spawn(redirect::serve(
            http,
            https_port,
            state.stop.clone(),
            challenges,
        ));
    }
    if let Some(admin) = listeners.admin {
        // The admin listener outlives the drain, so probes see /readyz fail meanwhile.
        admin_loop.spawn(admin::serve(admin, state.clone(), admin_stop.clone()));
    }
    let mut background = JoinSet::new();
    background.spawn(health::run(state.clone()));
    if let Some(acme) = acme {
        background.spawn(acme.run(state.stop.clone()));
    }
    if let Some(oidc) = state.runtime().oidc.clone() {
        background.spawn(oidc.warm_up(state.stop.clone()));
    }
    if let Some(sweep) = state.sweep.clone() {
        background.spawn(sweep_sessions(state.clone(), sweep));
    }
    if let Some(snapshots) = opened.snapshots.clone() {
        let watched = state.clone();
        background.spawn(snapshots.run(state.stop.clone(), move || watched.runtime().expiry));
    }
    let limits_of = state.clone();
    background.spawn(rate_limit::sweep(
        move || limits_of.runtime().rate_limits.clone(),
        state.stop.clone(),
    ));
    for warning in &state.runtime().config.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(generation = 1, workers, "cloakroom is serving");

    while let Some(command) = commands.0.recv().await {
        match command {
            Command::Reload(reply) => {
                let _ = reply.send(reload_now(&state).await);
            }
            Command::Shutdown => break,
        }
    }

    state.begin_shutdown();
    let grace = state.runtime().config.timeouts.shutdown_grace;
    while accept_loops.join_next().await.is_some() {}
    tracing::info!(
        connections = open.load(Ordering::Relaxed),
        ?grace,
        "shutting down: finishing in-flight requests"
    );
    let finished = wait_until_closed(&open, grace).await;
    if !finished {
        tracing::warn!(
            ?grace,
            connections = open.load(Ordering::Relaxed),
            "shutdown grace period over; cutting the remaining connections"
        );
        cut.raise();
        wait_until_closed(&open, std::time::Duration::from_secs(1)).await;
    }
    // The workers end once their connections are gone; joining blocks, so do it off
    // this runtime.
    let _ = tokio::task::spawn_blocking(move || {
        for thread in worker_threads {
            let _ = thread.join();
        }
    })
    .await;
    admin_stop.raise();
    while admin_loop.join_next().await.is_some() {}
    background.shutdown().await;
    if let Some(snapshots) = opened.snapshots {
        // After the last connection: nothing changes the sessions any more.
        snapshots.save_in_background(state.runtime().expiry).await;
    }
    Ok(())
}

/// Reloads the configuration (SIGHUP, `Handle::reload` and `POST /reload` all come
/// here), one reload at a time; logs and counts the result.
pub(crate) async fn reload_now(state: &AppState) -> Result<u64, ReloadError> {
    let _one_at_a_time = state.reload_lock.lock().await;
    let result = state.reload().await;
    state.metrics.reloaded(
        result
            .as_ref()
            .copied()
            .map_err(|e| error_chain::display_chain(e)),
    );
    match &result {
        Ok(generation) => tracing::info!(generation, "configuration reloaded"),
        Err(error) => tracing::warn!("reload refused, keeping the running configuration:\n{error}"),
    }
    result
}

/// Waits until no client connection is open, or `within` passed; true when none is.
async fn wait_until_closed(open: &AtomicUsize, within: std::time::Duration) -> bool {
    // `within` comes from the config: a deadline past the clock's range is never reached.
    let deadline = tokio::time::Instant::now().checked_add(within);
    while open.load(Ordering::Relaxed) > 0 {
        if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// Lets the server-side session store remove expired sessions in the background (the
/// memory store's reaper, PostgreSQL's sweep); off the request threads, which run their
/// own event loops. The sealed backend has nothing to sweep.
async fn sweep_sessions(state: Arc<AppState>, store: Arc<dyn session::Sweep>) {
    let stop = state.stop.clone();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        let expiry = state.runtime().expiry;
        match store.sweep(state.clock.now_ms(), expiry).await {
            Ok(0) => {}
            Ok(removed) => {
                state.metrics.session_ended("expired", removed as u64);
                tracing::debug!(removed, "expired sessions removed");
            }
            Err(error) => tracing::warn!(%error, "session sweep failed"),
        }
    }
}
