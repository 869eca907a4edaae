//! The wall clock the request path reads session time from (`AppState::clock`).
//!
//! In production it is the system clock. A test can start the proxy with a
//! [`Clock::manual`] clock and [`Clock::advance`] it, so session expiry is tested
//! without sleeping. A manual clock is the system clock plus an offset that only grows:
//! time still passes on its own, and a jump forward is one atomic add.
//!
//! Reading it costs what [`unix_ms`] costs, plus one branch and, for a manual
//! clock only, one relaxed atomic load: no dyn call, no lock, no allocation.
//!
//! This module imports nothing from the crate, so any layer may use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where "now" comes from. Cloning shares a manual clock's offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None` = the system clock; `Some` = the system clock plus this many ms.
    offset: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock (the default).
    pub fn system() -> Clock {
        Clock { offset: None }
    }

    /// The system clock plus an offset that starts at zero and grows with
    /// [`Clock::advance`]. For tests.
    pub fn manual() -> Clock {
        Clock {
            offset: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock (and every clone of it) forward by `by`; a no-op on the
    /// system clock, which no one may move.
    pub fn advance(&self, by: Duration) {
        if let Some(offset) = &self.offset {
            let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            offset.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Unix milliseconds now, as this clock tells it.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        let system = unix_ms();
        match &self.offset {
            None => system,
            Some(offset) => system.saturating_add(offset.load(Ordering::Relaxed)),
        }
    }
}

/// Unix milliseconds now, from the system clock (what [`Clock::system`] reads; for
/// code that holds no [`Clock`]: snapshots, store-level tools).
#[inline]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_jumps_forward_for_every_clone_and_the_system_clock_does_not_move() {
        let manual = Clock::manual();
        let shared = manual.clone();
        let before = manual.now_ms();
        shared.advance(Duration::from_secs(3600));
        let after = manual.now_ms();
        assert!(after >= before + 3_600_000, "{before} → {after}");

        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!(system.now_ms() < after);
    }
}
