//! A small upstream app that drives sessions by path, for tests of the session
//! protocol seen from outside (metrics, admin API, logs): the shared [`MockUpstream`]
//! in [`Mode::Sessions`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{MockUpstream, Mode};

/// Drives sessions by path: `/login?user=NAME`, `/logout`, `/logout-everywhere`,
/// `/healthz` (200 or 503 by its switch); anything else answers with the
/// `X-Session-User` it received (or `anon`). Derefs to its [`MockUpstream`].
pub struct App {
    upstream: MockUpstream,
    /// What `/healthz` answers: 200 while true, 503 while false.
    pub healthy: Arc<AtomicBool>,
}

impl std::ops::Deref for App {
    type Target = MockUpstream;

    fn deref(&self) -> &MockUpstream {
        &self.upstream
    }
}

impl App {
    pub async fn start() -> App {
        let upstream = MockUpstream::start_with("app", Mode::Sessions).await;
        let healthy = upstream.health_switch();
        App { upstream, healthy }
    }
}
