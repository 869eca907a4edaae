//! Idle keep-alive connections of one server, kept per thread: a connection goes back to
//! the list of the thread that used it, and is taken out only by that thread.
//!
//! Why per thread: each proxy worker runs an event loop of its own (see
//! `listener::worker`), and a socket is registered with the reactor of the runtime that
//! made it. A connection made on worker A and then taken by worker B would have every
//! readiness event of B's requests delivered by A's reactor and handed across threads
//! (the hop the per-thread Redis links avoid too). So each thread has its own list, found
//! by its `ThreadId` in a copy-on-write vector (`arc-swap`: a load writes no shared cache
//! line), and locks only its own list (uncontended, except by [`IdleLists::clear`]).
//!
//! Limits: at most [`MAX_IDLE_PER_THREAD`] idle connections per server **per worker**
//! (as nginx's `keepalive` is per worker process); with `workers = 1` that is the
//! process-wide limit it always was.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::client::Conn;

/// Most idle connections kept per server and thread.
pub(crate) const MAX_IDLE_PER_THREAD: usize = 256;

/// An idle pooled connection and when it went idle.
#[derive(Debug)]
struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// One thread's idle connections, most recently used last.
#[derive(Debug)]
struct ThreadList {
    thread: ThreadId,
    conns: Mutex<Vec<IdleConn>>,
}

/// The idle connections of one server, one list per thread.
#[derive(Debug, Default)]
pub(crate) struct IdleLists {
    lists: ArcSwap<Vec<Arc<ThreadList>>>,
}

impl IdleLists {
    /// Runs `f` on this thread's list (made on first use).
    fn with_mine<R>(&self, f: impl FnOnce(&mut Vec<IdleConn>) -> R) -> R {
        let thread = std::thread::current().id();
        let lists = self.lists.load();
        if let Some(list) = lists.iter().find(|l| l.thread == thread) {
            return f(&mut crate::lock(&list.conns));
        }
        drop(lists);
        let mine = Arc::new(ThreadList {
            thread,
            conns: Mutex::new(Vec::new()),
        });
        // Only this thread adds its own entry, so no other entry for it can appear
        // meanwhile; `rcu` retries if another thread added one of its own.
        self.lists.rcu(|lists| {
            let mut next = Vec::with_capacity(lists.len() + 1);
            next.extend(lists.iter().cloned());
            next.push(mine.clone());
            next
        });
        let result = f(&mut crate::lock(&mine.conns));
        result
    }

    /// The most recently used idle connection of this thread that is still open and
    /// idle for less than `pool_idle`; older or closed ones are dropped on the way.
    pub(crate) fn take(&self, pool_idle: Duration) -> Option<Conn> {
        self.with_mine(|idle| {
            while let Some(entry) = idle.pop() {
                if !entry.conn.is_closed() && entry.since.elapsed() < pool_idle {
                    return Some(entry.conn);
                }
            }
            None
        })
    }

    /// Keeps `conn` for this thread's next request to the server; the oldest one goes
    /// when the list is full.
    pub(crate) fn put(&self, conn: Conn) {
        self.with_mine(|idle| {
            if idle.len() >= MAX_IDLE_PER_THREAD {
                idle.remove(0);
            }
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        });
    }

    /// Drops every thread's idle connections (the server was marked down).
    pub(crate) fn clear(&self) {
        for list in self.lists.load().iter() {
            crate::lock(&list.conns).clear();
        }
    }

    /// Idle connections kept, over all threads.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lists
            .load()
            .iter()
            .map(|l| crate::lock(&l.conns).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::upstream::body::RequestBody;
    use crate::upstream::client::{self, Deadlines};
    use crate::upstream::BackendState;

    #[test]
    fn lists_start_empty_and_clear_is_harmless() {
        let lists = IdleLists::default();
        assert!(lists.take(Duration::from_secs(30)).is_none());
        lists.clear();
        assert_eq!(lists.len(), 0);
    }

    /// A keep-alive HTTP/1.1 server on its own thread that counts the connections it
    /// accepted.
    fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut seen = Vec::new();
                        loop {
                            let Ok(n) = stream.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                seen.drain(..end + 4);
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
        });
        (addr, accepted)
    }

    /// A worker-like runtime on this thread.
    fn worker_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// One GET on `state` from `runtime` (of this thread), its body read to the end (so
    /// the connection goes back to this thread's list).
    fn get_on_this_thread(runtime: &tokio::runtime::Runtime, state: &Arc<BackendState>) {
        runtime.block_on(async {
            let request = http::Request::builder()
                .uri("/")
                .header("host", "upstream")
                .body(RequestBody::Empty)
                .unwrap();
            let deadlines = Deadlines {
                connect: Duration::from_secs(5),
                response: Duration::from_secs(5),
                pool_idle: Duration::from_secs(30),
            };
            let response = client::send(state, request, deadlines, false)
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        });
    }

    #[test]
    fn a_connection_is_reused_only_by_the_thread_that_pooled_it() {
        let (addr, accepted) = upstream();
        let state = Arc::new(BackendState::new(addr));
        let runtime = worker_runtime();
        get_on_this_thread(&runtime, &state);
        get_on_this_thread(&runtime, &state);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "this thread reuses its connection"
        );
        assert_eq!(state.idle.len(), 1);

        let other = state.clone();
        std::thread::spawn(move || {
            let runtime = worker_runtime();
            get_on_this_thread(&runtime, &other);
            get_on_this_thread(&runtime, &other);
        })
        .join()
        .unwrap();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "another thread does not take this thread's idle connection, and reuses its own"
        );
        assert_eq!(state.idle.len(), 2, "one idle connection per thread");

        state.idle.clear();
        assert_eq!(
            state.idle.len(),
            0,
            "marking the server down empties every list"
        );
    }
}
