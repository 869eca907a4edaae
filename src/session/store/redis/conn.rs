//! The connection to Redis: one multiplexed connection to a standalone server (a
//! `ConnectionManager`, which reconnects by itself), to the master the sentinels name
//! (Sentinel mode, [`super::sentinel`]), or a Redis Cluster connection (which follows
//! slot moves and reconnects by itself), TLS through rustls for `rediss://`, and every
//! command bounded by `session.redis.timeout`.
//!
//! Each thread that runs store calls gets its own connection, made on first use from
//! that thread's runtime: the proxy's workers each run an event loop of their own, and a
//! connection driven by the worker that uses it costs no cross-thread wake-up per
//! command. Measured with `bench/stores.sh` (sticky keep-alive job, `workers = 1`, on a
//! busy 2-core machine): proxy CPU per request 1.7× the memory store's with one
//! connection driven by the main thread, 1.24–1.36× with this.
//!
//! Broken links and the "known down" flag (issue 15). After Redis restarts or fails
//! over, every worker's link still holds the dead socket until its next command fails.
//! That failure says nothing about the store, only about the link:
//! - A command whose link broke (an error the client answers by reconnecting:
//!   [`RedisError::is_unrecoverable_error`]) is sent once more, on the connection the
//!   client made in its place. Every command the store sends may be sent twice (see
//!   the reasoning per operation in the parent module's header).
//! - The store-wide flag that makes session routes answer 503 at once
//!   (`SessionStore::known_down`) is raised only by a fresh connection's view: the
//!   retried command failing too (a new connection was refused or broke), or a probe
//!   (a `PING` on a connection of its own) that gets no answer after a command timed
//!   out or was abandoned at the caller's deadline. Any answered command lowers it.
//!
//! The request path pays one atomic load for the flag; the retry and the probe run
//! only after a failure.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, RedisError, ScriptInvocation, TlsCertificates,
};

use super::sentinel::Sentinels;
use crate::config::RedisConfig;
use crate::session::StoreError;

/// The connection, standalone or Cluster. Cloning either is cheap (an `Arc` or a
/// channel sender); a command needs `&mut`, so each call works on a clone.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How to make a [`Link`] (clients are cheap to clone and hold no connection).
enum Factory {
    Single(redis::Client, ConnectionManagerConfig),
    Cluster(redis::cluster::ClusterClient, redis::cluster::ClusterConfig),
    /// The master the sentinels name, reached like a standalone server.
    Sentinel(Box<Sentinels>, ConnectionManagerConfig),
}

impl Factory {
    /// The generation of the server links are made for: links of an older one are
    /// replaced (Sentinel after a failover; always 0 otherwise).
    fn generation(&self) -> u64 {
        match self {
            Factory::Sentinel(sentinels, _) => sentinels.generation(),
            _ => 0,
        }
    }

    /// A new link, connecting lazily, driven by the current runtime, with the
    /// generation it was made for.
    async fn make(&self) -> Result<(u64, Link), RedisError> {
        Ok(match self {
            Factory::Single(client, config) => (
                0,
                Link::Single(ConnectionManager::new_lazy_with_config(
                    client.clone(),
                    config.clone(),
                )?),
            ),
            Factory::Cluster(client, config) => (
                0,
                Link::Cluster(client.get_pending_async_connection_with_config(config.clone())),
            ),
            Factory::Sentinel(sentinels, config) => {
                let (generation, client) = sentinels.master().await?;
                (
                    generation,
                    Link::Single(ConnectionManager::new_lazy_with_config(
                        client,
                        config.clone(),
                    )?),
                )
            }
        })
    }

    /// `PING` on a connection made for it alone (closed when this returns): whether
    /// the store answers, whatever state the workers' links are in.
    async fn ping_fresh(&self, connect: Duration, timeout: Duration) -> Result<(), RedisError> {
        match self {
            Factory::Single(client, _) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut conn).await
            }
            Factory::Cluster(client, config) => {
                let mut conn = client
                    .get_async_connection_with_config(config.clone())
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut conn).await
            }
            Factory::Sentinel(sentinels, _) => {
                // Asks the sentinels afresh: a probe after a failover finds the new master.
                let (_, client) = sentinels.ask().await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("PING").query_async::<()>(&mut conn).await
            }
        }
    }
}

/// What every thread's link shares: how to make connections, and the store's health.
struct Shared {
    factory: Factory,
    /// The per-command deadline.
    timeout: Duration,
    /// The deadline of a new connection (a TLS handshake included).
    connect: Duration,
    /// Known down: the last fresh look at the store found it not answering.
    down: AtomicBool,
    /// A probe is running (at most one at a time).
    probing: AtomicBool,
}

impl Shared {
    /// Lowers the flag after an answer (a plain load while it is down: this runs
    /// after every command).
    fn mark_up(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again");
        }
    }

    /// Raises the flag: a fresh connection found no answer. The text names the kind of
    /// failure only (never a key, a value or the URL).
    fn mark_down(&self, why: &dyn std::fmt::Debug) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = ?why, "redis is not answering; session routes answer 503 until it does");
        }
    }

    /// A command timed out or was abandoned: starts a probe on the current runtime
    /// unless one is running. The probe ends by itself within `connect + timeout`, so
    /// it needs no owner; it holds the shared state alive until then.
    fn suspect(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Arc::clone(self).probe());
            }
            Err(_) => self.probing.store(false, Ordering::Release),
        }
    }

    /// One `PING` on a fresh connection; sets the flag from its outcome.
    async fn probe(self: Arc<Self>) {
        // Lowers `probing` however the task ends (a worker runtime that shuts down
        // drops it mid-way).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.probing);
        let ping = self.factory.ping_fresh(self.connect, self.timeout);
        match tokio::time::timeout(self.connect + self.timeout, ping).await {
            Ok(Ok(())) => self.mark_up(),
            Ok(Err(error)) => self.mark_down(&error.kind()),
            Err(_) => self.mark_down(&"no answer within the timeout"),
        }
    }
}

/// A bounded, self-healing connection to Redis (one per thread that uses it, with the
/// generation of the server it was made for).
pub(super) struct Connection {
    shared: Arc<Shared>,
    links: DashMap<std::thread::ThreadId, (u64, Link)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never shown.
        f.debug_struct("Connection")
            .field(
                "mode",
                &match self.shared.factory {
                    Factory::Single(..) => "standalone",
                    Factory::Cluster(..) => "cluster",
                    Factory::Sentinel(..) => "sentinel",
                },
            )
            .field("links", &self.links.len())
            .field("timeout", &self.shared.timeout)
            .field("down", &self.shared.down.load(Ordering::Relaxed))
            .finish()
    }
}

/// Starts a probe if a command is abandoned before it ends (the caller's deadline
/// passed first): a command that never answered says the store may be hung.
struct Abandoned<'a> {
    shared: &'a Arc<Shared>,
    ended: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.suspect();
        }
    }
}

/// Turns a client error into a store error, keeping timeouts apart. The text names the
/// kind of failure only (never a key, a value or the URL).
fn classify(error: &RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::backend("redis command", format!("{:?}", error.kind()))
    }
}

/// Whether the link that ran a command broke (the client drops that connection and
/// makes a new one for the next command): a dead socket, a refused reconnect.
fn link_broke(error: &RedisError) -> bool {
    error.is_unrecoverable_error()
}

/// Whether a server refused a write as a replica: a master demoted by a failover.
fn read_only(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    )
}

impl Connection {
    /// Sets up the connection without waiting for Redis: the proxy starts (not ready)
    /// while Redis is down and connects once it is up. `ca` is a PEM bundle of the
    /// authorities a `rediss://` server's certificate may chain to (`None`: the
    /// system's).
    pub(super) fn open(
        config: &RedisConfig,
        ca: Option<Vec<u8>>,
    ) -> Result<Connection, StoreError> {
        let timeout = config.timeout;
        // Connecting includes a TLS handshake; give it more room than one command, but
        // a request still gives up at `timeout`.
        let connect = (timeout * 4).max(Duration::from_secs(1));
        let setup = |e: RedisError| {
            StoreError::backend(
                "redis connection setup",
                format!("cannot set up the connection: {:?}", e.kind()),
            )
        };
        let tls = || TlsCertificates {
            client_tls: None,
            root_cert: ca.clone(),
        };
        let manager = || {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(connect))
                // One attempt per reconnect, no backoff inside the client: a command
                // that finds its link broken is retried once on the new connection
                // (see the module header), and that retry must see a refusal at once,
                // not after a round of waits. A failed reconnect is started again by
                // the next command, so recovery never stops.
                .set_number_of_retries(0)
        };
        let factory = if let Some(sentinel) = &config.sentinel {
            let sentinels = Sentinels::new(sentinel, ca.clone(), connect).map_err(setup)?;
            Factory::Sentinel(Box::new(sentinels), manager())
        } else if config.urls.is_empty() {
            let client = if ca.is_some() {
                redis::Client::build_with_tls(config.url.as_str(), tls())
            } else {
                redis::Client::open(config.url.as_str())
            }
            .map_err(setup)?;
            Factory::Single(client, manager())
        } else {
            let mut builder = ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
                .connection_timeout(connect)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(20)
                .max_retry_wait(200);
            if ca.is_some() {
                builder = builder.certs(tls());
            }
            let client = builder.build().map_err(setup)?;
            let cluster = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(connect)
                .set_response_timeout(timeout);
            Factory::Cluster(client, cluster)
        };
        Ok(Connection {
            shared: Arc::new(Shared {
                factory,
                timeout,
                connect,
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
            links: DashMap::new(),
        })
    }

    /// The per-command deadline.
    pub(super) fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Whether the store was last seen not answering on a fresh connection (Redis down,
    /// refusing or hung).
    pub(super) fn known_down(&self) -> bool {
        self.shared.down.load(Ordering::Relaxed)
    }

    /// This thread's link, made on its first call (so driven by this thread's runtime)
    /// and again when the server it was made for is no longer the one to use.
    async fn link(&self) -> Result<Link, RedisError> {
        let thread = std::thread::current().id();
        let generation = self.shared.factory.generation();
        if let Some(entry) = self.links.get(&thread) {
            if entry.0 == generation {
                return Ok(entry.1.clone());
            }
        }
        let (generation, link) = self.shared.factory.make().await?;
        self.links.insert(thread, (generation, link.clone()));
        Ok(link)
    }

    /// Runs `send` on this thread's link; when the link broke, once more on the
    /// connection the client made in its place. Then records what the outcome says
    /// about the store (see the module header).
    async fn run<T, F, Fut>(&self, send: F) -> Result<T, StoreError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut watch = Abandoned {
            shared: &self.shared,
            ended: false,
        };
        let mut result = match self.link().await {
            Ok(link) => send(link).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            let sentinels = match &self.shared.factory {
                Factory::Sentinel(sentinels, _) => Some(sentinels),
                _ => None,
            };
            let demoted = sentinels.is_some() && read_only(error);
            if link_broke(error) || demoted {
                tracing::debug!(error = ?error.kind(), "a redis link broke; sending once more on a new connection");
                if let Some(sentinels) = sentinels {
                    // The master may have moved: the new link goes where the sentinels
                    // say now (their failure leaves the last answer in place).
                    if let Err(error) = sentinels.ask().await {
                        tracing::debug!(error = ?error.kind(), "the redis sentinels did not answer");
                    }
                }
                result = match self.link().await {
                    Ok(link) => send(link).await,
                    Err(error) => Err(error),
                };
            }
        }
        watch.ended = true;
        match result {
            Ok(value) => {
                self.shared.mark_up();
                Ok(value)
            }
            Err(error) => {
                match error.kind() {
                    // A server-side answer (a script error, a wrong type): Redis is up.
                    redis::ErrorKind::Server(_) => {}
                    // The retry's new connection broke or was refused too.
                    _ if link_broke(&error) => self.shared.mark_down(&error.kind()),
                    // A timeout or another failure of this link: ask a fresh one.
                    _ => self.shared.suspect(),
                }
                Err(classify(&error))
            }
        }
    }

    /// Runs one command.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.run(|link| async move {
            match link {
                Link::Single(mut c) => cmd.query_async(&mut c).await,
                Link::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        })
        .await
    }

    /// Runs a Lua script (EVALSHA, loading it once when the server does not know it).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(|link| async move {
            match link {
                Link::Single(mut c) => invocation.invoke_async(&mut c).await,
                Link::Cluster(mut c) => invocation.invoke_async(&mut c).await,
            }
        })
        .await
    }

    /// The addresses of the Cluster's primaries (`None` for a standalone server), for
    /// commands that must visit every node (`SCAN`).
    pub(super) async fn primaries(&self) -> Result<Option<Vec<(String, u16)>>, StoreError> {
        let Factory::Cluster(..) = &self.shared.factory else {
            return Ok(None);
        };
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(Some(parse_primaries(&nodes)))
    }

    /// Runs one command on the node at `host:port` (Cluster only; a standalone server
    /// runs it as usual).
    pub(super) async fn query_on<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        host: &str,
        port: u16,
    ) -> Result<T, StoreError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        self.run(|link| async move {
            match link {
                Link::Single(mut c) => cmd.query_async(&mut c).await,
                Link::Cluster(mut c) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port,
                    });
                    c.route_command(cmd.clone(), routing)
                        .await
                        .and_then(|v| T::from_redis_value(v).map_err(RedisError::from))
                }
            }
        })
        .await
    }
}

/// `host:port` of every primary in `CLUSTER NODES` output (lines like
/// `id 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460`).
fn parse_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            let address = address.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let text = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b 127.0.0.1:7001@17001 slave a 0 0 1 connected\n\
                    c 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-16383\n\
                    d 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(
            parse_primaries(text),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7002)
            ]
        );
    }
}
