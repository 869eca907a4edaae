//! Connections to PostgreSQL: one deadpool pool per thread that runs store calls, whose
//! connections carry every statement of the store already prepared, and the TLS setup
//! for `sslmode=require`.
//!
//! Invariants:
//! - A connection's socket and its driver task live on the runtime that made it: a
//!   request worker's own event loop, or the main runtime (schema, sweep, probe). Each
//!   thread takes connections only from its own pool ([`Pool::get`]), so a worker never
//!   polls a socket registered with another worker's reactor (every readiness event
//!   would cross threads), as the Redis store's per-thread links. When a worker's
//!   runtime ends at shutdown its connections close, and recycling drops them.
//! - `session.postgres.pool` stays the limit of the whole process, shared by the
//!   threads' pools (not split): a connection holds one of `pool` slots for its life.
//!   A thread that needs a connection when every slot is taken first closes an idle
//!   connection of another thread (a closed one first), then waits for a slot within
//!   the operation's deadline, as it waited for a busy pool before. With `workers = 1`
//!   that is the one pool it always was, plus the main runtime's for the background work.
//! - Statements are prepared once per connection, pipelined, when it is made; the
//!   request path then sends one Bind/Execute per operation (no parse, no lookup).
//! - A connection whose driver has ended is never handed out again (recycle checks).
//! - After any connection broke (the server restarted, most likely), every connection
//!   made before that is checked with a round trip before its next use (the pool's
//!   epoch moved on), so a retry gets one that answers, or a new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use dashmap::DashMap;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket, Statement};

use super::error::PgError;
use super::schema::Sql;
use crate::config::PostgresConfig;
use crate::session::StoreError;

/// The threads' pools, by thread.
type Pools = DashMap<ThreadId, managed::Pool<Manager>>;

/// The store's connections: one deadpool pool per thread, under one process-wide limit
/// (see the module header).
#[derive(Debug)]
pub(crate) struct Pool {
    pools: Arc<Pools>,
    connector: Connector,
    sql: Arc<Sql>,
    /// Moves on when a connection breaks; older connections are checked before use.
    epoch: Arc<AtomicU64>,
    /// `session.postgres.pool` slots; each open connection holds one.
    slots: Arc<Semaphore>,
    size: usize,
    timeout: Duration,
}

impl Pool {
    /// At most `size` connections in all, each made or checked within `timeout`.
    pub(crate) fn new(connector: Connector, sql: Arc<Sql>, size: usize, timeout: Duration) -> Pool {
        Pool {
            pools: Arc::new(DashMap::new()),
            connector,
            sql,
            epoch: Arc::new(AtomicU64::new(0)),
            slots: Arc::new(Semaphore::new(size)),
            size,
            timeout,
        }
    }

    /// A connection of this thread's pool (made on this thread's runtime when none is
    /// idle).
    pub(crate) async fn get(&self) -> Result<Object<Manager>, PoolError<PgError>> {
        self.mine()?.get().await
    }

    /// This thread's pool, made on its first use.
    fn mine(&self) -> Result<managed::Pool<Manager>, PoolError<PgError>> {
        let thread = std::thread::current().id();
        if let Some(pool) = self.pools.get(&thread) {
            return Ok(pool.clone());
        }
        let manager = Manager {
            connector: self.connector.clone(),
            sql: self.sql.clone(),
            epoch: self.epoch.clone(),
            slots: self.slots.clone(),
            peers: Arc::downgrade(&self.pools),
            thread,
        };
        let pool = managed::Pool::builder(manager)
            .max_size(self.size)
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .build()
            .map_err(|_| PoolError::Closed)?;
        self.pools.insert(thread, pool.clone());
        Ok(pool)
    }

    /// A connection broke: every connection made before now, in every thread's pool,
    /// answers a round trip before it is handed out again.
    pub(crate) fn connection_broke(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }
}

/// One pooled connection and its prepared statements.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) st: Statements,
    /// The pool's epoch when this connection was made or last checked.
    epoch: u64,
    /// Its place under `session.postgres.pool`, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

/// Every statement the store runs, prepared on one connection.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) load: Statement,
    pub(crate) insert: Statement,
    pub(crate) save: Statement,
    pub(crate) regenerate: Statement,
    pub(crate) destroy: Statement,
    pub(crate) destroy_user: Statement,
    pub(crate) destroy_public: Statement,
    pub(crate) list_user: Statement,
    pub(crate) count: Statement,
    pub(crate) sweep_lock: Statement,
    pub(crate) sweep: Statement,
}

impl Statements {
    /// Prepares them all, pipelined (one round trip's worth of waiting).
    async fn prepare(client: &Client, sql: &Sql) -> Result<Statements, tokio_postgres::Error> {
        let (load, insert, save, regenerate, destroy, destroy_user) = tokio::try_join!(
            client.prepare(&sql.load),
            client.prepare(&sql.insert),
            client.prepare(&sql.save),
            client.prepare(&sql.regenerate),
            client.prepare(&sql.destroy),
            client.prepare(&sql.destroy_user),
        )?;
        let (destroy_public, list_user, count, sweep_lock, sweep) = tokio::try_join!(
            client.prepare(&sql.destroy_public),
            client.prepare(&sql.list_user),
            client.prepare(&sql.count),
            client.prepare(&sql.sweep_lock),
            client.prepare(&sql.sweep),
        )?;
        Ok(Statements {
            load,
            insert,
            save,
            regenerate,
            destroy,
            destroy_user,
            destroy_public,
            list_user,
            count,
            sweep_lock,
            sweep,
        })
    }
}

/// How the store reaches the database.
#[derive(Clone)]
pub(crate) struct Connector {
    config: tokio_postgres::Config,
    /// `Some` when the URL says `sslmode=require`.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Where connections are driven when the caller is on no runtime.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("Connector")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// From the validated settings; reads `sslrootcert` when one is named.
    pub(crate) async fn new(config: &PostgresConfig) -> Result<Connector, StoreError> {
        let mut pg: tokio_postgres::Config = config
            .url
            .0
            .parse()
            .map_err(|e| StoreError::backend("parse session.postgres.url", e))?;
        pg.connect_timeout(config.timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("cloakroom");
        }
        let tls = match pg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(tls_connector(config).await?),
            _ => None,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| StoreError::backend("connect", format!("no async runtime: {e}")))?;
        Ok(Connector {
            config: pg,
            tls,
            runtime,
        })
    }

    /// A new connection, driven on the caller's runtime (see the module header).
    pub(crate) async fn connect(&self) -> Result<Client, PgError> {
        let (tx, rx) = oneshot::channel();
        let config = self.config.clone();
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime.clone());
        match self.tls.clone() {
            Some(tls) => runtime.spawn(drive(config, tls, tx)),
            None => runtime.spawn(drive(config, NoTls, tx)),
        };
        rx.await.map_err(|_| PgError::Gone)?
    }
}

/// Connects and, once the client is handed over, drives the connection until the
/// client is dropped or the server goes away.
async fn drive<T>(
    config: tokio_postgres::Config,
    tls: T,
    reply: oneshot::Sender<Result<Client, PgError>>,
) where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    match config.connect(tls).await {
        Ok((client, connection)) => {
            if reply.send(Ok(client)).is_ok() {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "session database connection ended");
                }
            }
        }
        Err(error) => {
            let _ = reply.send(Err(PgError::Driver(error)));
        }
    }
}

/// The rustls client config for `sslmode=require`: the server's certificate must
/// chain to `sslrootcert` when given, else to the web PKI roots, and name the host.
async fn tls_connector(
    config: &PostgresConfig,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.root_cert {
        Some(path) => {
            let pem = tokio::fs::read(path).await.map_err(|e| {
                StoreError::backend("connect", format!("sslrootcert {}: {e}", path.display()))
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::backend("connect", format!("sslrootcert {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::backend("connect", format!("sslrootcert {}: {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(crate::tls::crypto::provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::backend("TLS setup", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(client))
}

/// Makes and checks the connections of one thread's pool.
#[derive(Debug)]
pub(crate) struct Manager {
    connector: Connector,
    sql: Arc<Sql>,
    /// Shared by every thread's pool (see [`Pool::connection_broke`]).
    epoch: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
    /// Every thread's pool, to close an idle connection of another thread when all
    /// slots are taken (weak: the pools hold their managers).
    peers: Weak<Pools>,
    thread: ThreadId,
}

/// How often a thread that found every slot taken looks again for an idle connection
/// of another thread to close (idle connections hold slots without a waiter to tell).
const SLOT_RECHECK: Duration = Duration::from_millis(5);

impl Manager {
    /// A slot for a new connection: a free one, or one freed by closing an idle
    /// connection of another thread, or the first one given back. The pool's
    /// `create_timeout` bounds the wait.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, PgError> {
        loop {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => return Ok(slot),
                Err(TryAcquireError::Closed) => return Err(PgError::Gone),
                Err(TryAcquireError::NoPermits) => {}
            }
            self.close_idle_elsewhere();
            let wait = self.slots.clone().acquire_owned();
            match tokio::time::timeout(SLOT_RECHECK, wait).await {
                Ok(Ok(slot)) => return Ok(slot),
                Ok(Err(_)) => return Err(PgError::Gone),
                Err(_) => {}
            }
        }
    }

    /// Closes connections of other threads' pools that hold a slot for nothing: every
    /// closed one, else one idle one.
    fn close_idle_elsewhere(&self) {
        let Some(peers) = self.peers.upgrade() else {
            return;
        };
        let others: Vec<managed::Pool<Manager>> = peers
            .iter()
            .filter(|entry| *entry.key() != self.thread)
            .map(|entry| entry.value().clone())
            .collect();
        drop(peers);
        for pool in &others {
            pool.retain(|conn, _| !conn.client.is_closed());
        }
        if self.slots.available_permits() > 0 {
            return;
        }
        for pool in &others {
            let mut closed = false;
            pool.retain(|_, _| std::mem::replace(&mut closed, true));
            if closed {
                return;
            }
        }
    }
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = PgError;

    async fn create(&self) -> Result<Conn, PgError> {
        let slot = self.slot().await?;
        let epoch = self.epoch.load(Ordering::Relaxed);
        let client = self.connector.connect().await?;
        // Boxed: the preparing future is large (eleven statements in flight), and it
        // would otherwise be part of every `Pool::get` future on the request path.
        let st = Box::pin(Statements::prepare(&client, &self.sql)).await?;
        Ok(Conn {
            client,
            st,
            epoch,
            _slot: slot,
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<PgError> {
        // A cheap check (no round trip): a connection whose driver saw it die is
        // dropped here. One that dies in use fails that operation, which is retried
        // once on another connection (`Shared::run`).
        if conn.client.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        // Since this one was last used another connection broke: the server may have
        // restarted under both, so this one must answer before it is handed out.
        let epoch = self.epoch.load(Ordering::Relaxed);
        if conn.epoch != epoch {
            conn.client
                .check_connection()
                .await
                .map_err(|e| RecycleError::Backend(PgError::Driver(e)))?;
            conn.epoch = epoch;
        }
        Ok(())
    }
}
