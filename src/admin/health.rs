//! `/readyz`: whether this instance should get traffic. 503, with every reason on its
//! own line, during shutdown, while the session store does not answer, or while an
//! upstream that a route uses has no healthy server. `/healthz` (the process answers)
//! is answered in `admin::answer` without any check.

use std::fmt::Write as _;

use http::{Response, StatusCode};

use super::{text, STORE_DEADLINE};
use crate::proxy::ResponseBody;
use crate::state::AppState;

/// `GET /readyz`.
pub(super) async fn readyz(state: &AppState) -> Response<ResponseBody> {
    let mut reasons = String::new();
    if state.stop.is_raised() {
        reasons.push_str("stopping: shutdown in progress\n");
    }
    let runtime = state.runtime();
    // The sealed backend has no server to ask.
    let store = state.backend.store();
    if let Some(store) = store.filter(|_| runtime.config.routes.iter().any(|r| r.session)) {
        match tokio::time::timeout(STORE_DEADLINE, store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = writeln!(reasons, "session store unreachable: {error}");
            }
            Err(_) => reasons.push_str("session store unreachable: no answer in time\n"),
        }
    }
    for (index, pool) in runtime.upstreams.iter().enumerate() {
        let used = runtime.config.routes.iter().any(|r| r.upstream == index);
        if used && !pool.backends.iter().any(|b| b.state.is_healthy()) {
            let _ = writeln!(reasons, "upstream {}: no healthy server", pool.name);
        }
    }
    if reasons.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, reasons)
    }
}
