//! The connection to Redis: one multiplexed connection to a standalone server (a
//! `ConnectionManager`, which reconnects by itself) or a Redis Cluster connection
//! (which follows slot moves and reconnects by itself), TLS through rustls for
//! `rediss://`, and every command bounded by `session.redis.timeout`.
//!
//! Each thread that runs store calls gets its own connection, made on first use from
//! that thread's runtime: the proxy's workers each run an event loop of their own, and a
//! connection driven by the worker that uses it costs no cross-thread wake-up per
//! command. Measured with `bench/stores.sh` (sticky keep-alive job, `workers = 1`, on a
//! busy 2-core machine): proxy CPU per request 1.7× the memory store's with one
//! connection driven by the main thread, 1.24–1.36× with this.
//!
//! It also keeps a cheap "known down" flag: raised by any failed command, lowered by any
//! answered one, so the request path can refuse a new session before it forwards the
//! request (see `SessionStore::known_down`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, TlsCertificates};

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
}

impl Factory {
    /// A new link, connecting lazily, driven by the current runtime.
    fn make(&self) -> Result<Link, RedisError> {
        Ok(match self {
            Factory::Single(client, config) => Link::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            ),
            Factory::Cluster(client, config) => {
                Link::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
        })
    }
}

/// A bounded, self-healing connection to Redis (one per thread that uses it).
pub(super) struct Connection {
    factory: Factory,
    links: DashMap<std::thread::ThreadId, Link>,
    timeout: Duration,
    down: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never shown.
        f.debug_struct("Connection")
            .field(
                "mode",
                &match self.factory {
                    Factory::Single(..) => "standalone",
                    Factory::Cluster(..) => "cluster",
                },
            )
            .field("links", &self.links.len())
            .field("timeout", &self.timeout)
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish()
    }
}

/// Raises the "known down" flag if a command is abandoned before it ends (the caller's
/// deadline passed first): a command that never answered counts as a failure.
struct Abandoned<'a> {
    down: &'a AtomicBool,
    ended: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.down.store(true, Ordering::Relaxed);
        }
    }
}

/// Turns a client error into a store error, keeping timeouts apart. The text names the
/// kind of failure only (never a key, a value or the URL).
fn classify(error: &RedisError) -> StoreError {
    if error.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Backend(format!("redis: {:?}", error.kind()))
    }
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
            StoreError::Backend(format!(
                "redis: cannot set up the connection: {:?}",
                e.kind()
            ))
        };
        let tls = || TlsCertificates {
            client_tls: None,
            root_cert: ca.clone(),
        };
        let factory = if config.urls.is_empty() {
            let client = if ca.is_some() {
                redis::Client::build_with_tls(config.url.as_str(), tls())
            } else {
                redis::Client::open(config.url.as_str())
            }
            .map_err(setup)?;
            let manager = ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(connect))
                // A few quick retries per reconnect; when they are spent, the next
                // command starts another round, so recovery never stops.
                .set_number_of_retries(3)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            Factory::Single(client, manager)
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
            factory,
            links: DashMap::new(),
            timeout,
            down: AtomicBool::new(false),
        })
    }

    /// The per-command deadline.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last command failed (Redis down, refusing or hung).
    pub(super) fn known_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// This thread's link, made on its first call (so driven by this thread's runtime).
    fn link(&self) -> Result<Link, RedisError> {
        let thread = std::thread::current().id();
        if let Some(link) = self.links.get(&thread) {
            return Ok(link.clone());
        }
        let link = self.factory.make()?;
        self.links.insert(thread, link.clone());
        Ok(link)
    }

    /// Watches one command (see [`Abandoned`]).
    fn watch(&self) -> Abandoned<'_> {
        Abandoned {
            down: &self.down,
            ended: false,
        }
    }

    /// Records how a command ended.
    fn settle<T>(&self, result: Result<T, RedisError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                if self.down.load(Ordering::Relaxed) {
                    self.down.store(false, Ordering::Relaxed);
                    tracing::info!("redis answers again");
                }
                Ok(value)
            }
            Err(error) => {
                // A server-side answer (a script error, a wrong type) means Redis is up.
                if !matches!(error.kind(), redis::ErrorKind::Server(_))
                    && !self.down.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(error = ?error.kind(), "redis is not answering; session routes answer 503 until it does");
                }
                Err(classify(&error))
            }
        }
    }

    /// Runs one command.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut watch = self.watch();
        let result = match self.link() {
            Ok(Link::Single(mut c)) => cmd.query_async(&mut c).await,
            Ok(Link::Cluster(mut c)) => cmd.query_async(&mut c).await,
            Err(error) => Err(error),
        };
        watch.ended = true;
        self.settle(result)
    }

    /// Runs a Lua script (EVALSHA, loading it once when the server does not know it).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut watch = self.watch();
        let result = match self.link() {
            Ok(Link::Single(mut c)) => invocation.invoke_async(&mut c).await,
            Ok(Link::Cluster(mut c)) => invocation.invoke_async(&mut c).await,
            Err(error) => Err(error),
        };
        watch.ended = true;
        self.settle(result)
    }

    /// The addresses of the Cluster's primaries (`None` for a standalone server), for
    /// commands that must visit every node (`SCAN`).
    pub(super) async fn primaries(&self) -> Result<Option<Vec<(String, u16)>>, StoreError> {
        let Factory::Cluster(..) = &self.factory else {
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
        let result = match self.link() {
            Err(error) => Err(error),
            Ok(Link::Single(mut c)) => cmd.query_async(&mut c).await,
            Ok(Link::Cluster(mut c)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port,
                });
                c.route_command(cmd.clone(), routing)
                    .await
                    .and_then(|v| T::from_redis_value(v).map_err(RedisError::from))
            }
        };
        self.settle(result)
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
