//! A one-shot signal that many connection tasks wait on: raised once at shutdown
//! (stop accepting, finish gracefully) and once when the grace period ends (cut).
//!
//! Every client connection polls its signals each time its task wakes, so waiting must
//! be nearly free: a poll is one atomic load and a waker identity check. A waker is
//! registered under a lock only when a connection first waits or moves to another task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// A flag raised once, with the wakers of those waiting for it.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
}

impl Signal {
    /// Raises the signal and wakes every waiter.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *crate::lock(&self.waiters));
        for waker in waiters.into_values() {
            waker.wake();
        }
    }

    /// Whether the signal was raised.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal is raised.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            signal: self,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    fn register(&self, id: u64, waker: &Waker) {
        crate::lock(&self.waiters).insert(id, waker.clone());
    }

    fn unregister(&self, id: u64) {
        crate::lock(&self.waiters).remove(&id);
    }
}

/// Waits for a [`Signal`]; see [`Signal::wait`].
#[derive(Debug)]
pub(crate) struct Wait<'a> {
    signal: &'a Signal,
    id: u64,
    registered: Option<Waker>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_raised() {
            return Poll::Ready(());
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.signal.register(self.id, cx.waker());
            self.registered = Some(cx.waker().clone());
            // Raised between the check and the registration: do not miss it.
            if self.signal.is_raised() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.signal.unregister(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_when_raised_and_late_waiters_return_at_once() {
        let signal = Arc::new(Signal::default());
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let signal = signal.clone();
                tokio::spawn(async move { signal.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        signal.raise();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .unwrap()
                .unwrap();
        }
        signal.wait().await;
        assert!(signal.waiters.lock().unwrap().is_empty());
    }
}
