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
    use super::*;

    #[test]
    fn lists_start_empty_and_clear_is_harmless() {
        let lists = IdleLists::default();
        assert!(lists.take(Duration::from_secs(30)).is_none());
        lists.clear();
        assert_eq!(lists.len(), 0);
    }
}
