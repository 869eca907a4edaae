//! The connections to the Memcached servers: for each worker thread and each server,
//! one pipelined link ([`wire::Link`]) made on that thread's first call, so the worker
//! that uses a connection drives it (as the Redis store's links are kept); every call
//! bounded by `session.memcached.timeout`.
//!
//! Broken links and "known down", per server, as for Redis (issue 15):
//! - A call whose link broke (the server restarted, a reset) is sent once more on a new
//!   connection. Every command the store sends may run twice with the same outcome for
//!   its caller (see the parent module's header).
//! - A server is marked down only by a fresh connection's view: a new connection
//!   refused or not made in time, or a probe (`mn` on a connection of its own) that
//!   gets no answer after a call timed out or was abandoned at the caller's deadline.
//!   Any answer marks it up again.
//!
//! The store as a whole is "known down" when every server is; a request path then asks
//! [`Servers::ping`] before it starts a new session. New sessions avoid a server known
//! down (the store draws another token), so one dead server costs only the sessions it
//! held.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;

use super::leftovers::Leftovers;
use super::ring::Ring;
use super::wire::{self, Link, LinkError, Reply};
use crate::config::MemcachedConfig;
use crate::session::StoreError;

/// One configured server and what is known of it.
struct Server {
    /// `host:port` as configured (never logged with a key).
    address: String,
    down: AtomicBool,
    probing: AtomicBool,
}

/// What every thread's links share.
struct Shared {
    servers: Vec<Server>,
    /// Servers marked down.
    down: AtomicUsize,
    /// The per-call deadline.
    timeout: Duration,
    /// The deadline of a new connection.
    connect: Duration,
    /// Deletes waiting for their server to answer again.
    leftovers: Leftovers,
}

impl Shared {
    fn server(&self, index: usize) -> Option<&Server> {
        self.servers.get(index)
    }

    fn mark_up(&self, index: usize) {
        let Some(server) = self.server(index) else {
            return;
        };
        if server.down.load(Ordering::Relaxed) && server.down.swap(false, Ordering::Relaxed) {
            self.down.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(server = %server.address, "memcached server answers again");
        }
    }

    /// Server `index` answered: if deletes wait for it, send them from a task of their
    /// own (it ends by itself within `connect + timeout`, like the probe; one at a time).
    fn answered(self: &Arc<Self>, index: usize) {
        self.mark_up(index);
        if !self.leftovers.any() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(self);
            runtime.spawn(async move {
                if let Some(server) = shared.server(index) {
                    shared
                        .leftovers
                        .flush(index, &server.address, shared.connect, shared.timeout)
                        .await;
                }
            });
        }
    }

    fn mark_down(&self, index: usize, why: LinkError) {
        let Some(server) = self.server(index) else {
            return;
        };
        if !server.down.swap(true, Ordering::Relaxed) {
            self.down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                server = %server.address,
                error = %why,
                "memcached server is not answering; the sessions it holds answer 503 until it does"
            );
        }
    }

    /// A call to `index` timed out or was abandoned: probe it on a fresh connection
    /// unless a probe runs. The probe ends by itself within `connect + timeout`, so it
    /// needs no owner; it holds the shared state alive until then.
    fn suspect(self: &Arc<Self>, index: usize) {
        let Some(server) = self.server(index) else {
            return;
        };
        if server.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Arc::clone(self).probe(index));
            }
            Err(_) => server.probing.store(false, Ordering::Release),
        }
    }

    async fn probe(self: Arc<Self>, index: usize) {
        let Some(server) = self.server(index) else {
            return;
        };
        // Lowers `probing` however the task ends.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&server.probing);
        let probe = wire::probe(&server.address, self.connect);
        match tokio::time::timeout(self.connect + self.timeout, probe).await {
            Ok(Ok(())) => self.mark_up(index),
            Ok(Err(error)) => self.mark_down(index, error),
            Err(_) => self.mark_down(index, LinkError::ConnectTimeout),
        }
    }
}

/// Starts a probe if a call is dropped before it ends (the caller's deadline passed).
struct Abandoned<'a> {
    shared: &'a Arc<Shared>,
    server: usize,
    ended: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.suspect(self.server);
        }
    }
}

/// The servers, their ring, and each thread's links.
pub(super) struct Servers {
    shared: Arc<Shared>,
    ring: Ring,
    links: DashMap<(std::thread::ThreadId, usize), Link>,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers")
            .field(
                "servers",
                &self
                    .shared
                    .servers
                    .iter()
                    .map(|s| s.address.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("links", &self.links.len())
            .field("down", &self.shared.down.load(Ordering::Relaxed))
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

/// The text of a failed call: the kind of failure and the server, never a key.
fn failure(op: &'static str, address: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::backend(op, format!("memcached {address}: {error}"))
}

impl Servers {
    /// Sets up the servers of `config` without connecting (links are made on first
    /// use, so the proxy starts while Memcached is down).
    pub(super) fn new(config: &MemcachedConfig) -> Servers {
        let timeout = config.timeout;
        let connect = (timeout * 4).max(Duration::from_secs(1));
        Servers {
            shared: Arc::new(Shared {
                servers: config
                    .servers
                    .iter()
                    .map(|address| Server {
                        address: address.clone(),
                        down: AtomicBool::new(false),
                        probing: AtomicBool::new(false),
                    })
                    .collect(),
                down: AtomicUsize::new(0),
                timeout,
                connect,
                leftovers: Leftovers::default(),
            }),
            ring: Ring::new(&config.servers),
            links: DashMap::new(),
        }
    }

    /// How many servers there are.
    pub(super) fn len(&self) -> usize {
        self.shared.servers.len()
    }

    /// The server that holds `key`.
    pub(super) fn server_of(&self, key: &str) -> usize {
        self.ring.server(key)
    }

    /// Whether server `index` was last seen not answering.
    pub(super) fn is_down(&self, index: usize) -> bool {
        self.shared
            .server(index)
            .is_some_and(|s| s.down.load(Ordering::Relaxed))
    }

    /// Whether every server was last seen not answering.
    pub(super) fn all_down(&self) -> bool {
        self.shared.down.load(Ordering::Relaxed) >= self.shared.servers.len()
    }

    /// This thread's link to server `index`, made if it has none or its old one ended.
    fn link(&self, index: usize) -> Option<Link> {
        let key = (std::thread::current().id(), index);
        if let Some(link) = self.links.get(&key) {
            if !link.is_closed() {
                return Some(link.clone());
            }
        }
        let server = self.shared.server(index)?;
        let link = Link::open(server.address.clone(), self.shared.connect);
        self.links.insert(key, link.clone());
        Some(link)
    }

    /// Sends `request` to the server that holds `key`.
    pub(super) async fn call(
        &self,
        op: &'static str,
        key: &str,
        request: Bytes,
    ) -> Result<Reply, StoreError> {
        self.call_on(op, self.server_of(key), request).await
    }

    /// Sends `request` to server `index`, once more on a new connection when its link
    /// broke, within the deadline; records what the outcome says about the server.
    pub(super) async fn call_on(
        &self,
        op: &'static str,
        index: usize,
        request: Bytes,
    ) -> Result<Reply, StoreError> {
        let Some(server) = self.shared.server(index) else {
            return Err(StoreError::backend(op, "no such memcached server"));
        };
        let mut watch = Abandoned {
            shared: &self.shared,
            server: index,
            ended: false,
        };
        let attempt = async {
            let link = self.link(index).ok_or(LinkError::ConnectTimeout)?;
            match link.call(request.clone()).await {
                Err(error) if !error.fresh() => {
                    tracing::debug!(server = %server.address, %error, "a memcached link broke; sending once more on a new connection");
                    let link = self.link(index).ok_or(LinkError::ConnectTimeout)?;
                    // Only a fresh connection's failure says the server is down.
                    link.call(request).await.map_err(|e| match e {
                        LinkError::Broken(kind) => LinkError::Connect(kind),
                        other => other,
                    })
                }
                other => other,
            }
        };
        let outcome = tokio::time::timeout(self.shared.timeout, attempt).await;
        watch.ended = true;
        match outcome {
            Ok(Ok(Reply::Refused(what))) => {
                self.shared.answered(index);
                Err(failure(
                    op,
                    &server.address,
                    format_args!("refused ({what})"),
                ))
            }
            Ok(Ok(reply)) => {
                self.shared.answered(index);
                Ok(reply)
            }
            Ok(Err(error)) => {
                self.shared.mark_down(index, error);
                Err(failure(op, &server.address, error))
            }
            Err(_) => {
                self.shared.suspect(index);
                Err(StoreError::Timeout)
            }
        }
    }

    /// Keeps the delete of `key` that failed, to retry when its server answers (see
    /// [`Leftovers`]); until then [`Servers::deferred`] says it is gone. `until`: unix
    /// ms when the item expires by itself.
    pub(super) fn defer_delete(&self, key: String, until: u64) {
        let server = self.server_of(&key);
        self.shared.leftovers.push(key, server, until);
    }

    /// Whether the delete of `key` waits for its server.
    pub(super) fn deferred(&self, key: &str) -> bool {
        self.shared.leftovers.holds(key)
    }

    /// `mn` to every server; `Ok` when at least one answers (a server that does not
    /// answer costs only its share of the sessions, see the module header).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let calls = (0..self.len()).map(|i| self.call_on("ping", i, wire::noop()));
        let results = futures_util::future::join_all(calls).await;
        let mut last = None;
        for result in results {
            match result {
                Ok(_) => return Ok(()),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or(StoreError::Timeout))
    }
}
