//! The hijack-signal stage (`session.anomaly`): bind a new session to its client's
//! fingerprints, compare a returning session's with this request's, and flag or end it.
//!
//! A warning names the session by its public id, never its cookie.

use http::header::{HeaderMap, USER_AGENT};

use super::session::{store_call, Handle, SessionCtx};
use super::ProxyError;
use crate::anomaly::{self, Anomaly};
use crate::config::AnomalyMode;
use crate::metrics::StoreOp;
use crate::session::{random_bytes, PublicId, Session};
use crate::state::{AppState, Runtime};

/// Checks the request's client against the session's recorded origin. Returns what to
/// tell the upstream (`flag`); with `end` a changed session is destroyed and `ctx`
/// becomes a fresh anonymous session bound to this client.
pub(crate) async fn check(
    state: &AppState,
    rt: &Runtime,
    ctx: &mut SessionCtx,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
    agents: &anomaly::AgentCache,
    now: u64,
) -> Result<Option<Anomaly>, ProxyError> {
    let mode = rt.config.security.anomaly;
    if mode == AnomalyMode::Off {
        return Ok(None);
    }
    let current = anomaly::origin_cached(agents, headers.get(USER_AGENT), ip);
    ctx.origin = Some(current);
    let existing = !matches!(ctx.handle, Handle::New);
    let Some(then) = ctx.session.origin.filter(|_| existing) else {
        // A new session, or one from before hijack signals: bind it to this client.
        ctx.origin_changed = existing;
        ctx.session.origin = Some(current);
        return Ok(None);
    };
    let change = anomaly::compare(then, current);
    if !change.any() {
        return Ok(None);
    }
    tracing::warn!(
        session = %ctx.session.public_id.encode(),
        user_agent_changed = change.agent,
        network_changed = change.network,
        action = if mode == AnomalyMode::End { "end" } else { "flag" },
        "session used by another client family or network"
    );
    if mode == AnomalyMode::Flag {
        return Ok(Some(change));
    }
    // `end`: as a logout; the request goes on with a fresh anonymous session.
    // A sealed session has nothing on the server: the fresh session's cookie replaces it.
    if let Handle::Stored(token) = &ctx.handle {
        store_call(rt, StoreOp::Destroy, state.store.destroy(token)).await?;
    }
    state.metrics.session_ended("anomaly", 1);
    let mut fresh = Session::new(PublicId(random_bytes().map_err(ProxyError::Store)?), now);
    fresh.origin = Some(current);
    *ctx = SessionCtx {
        handle: Handle::New,
        session: fresh,
        pin_changed: false,
        origin: Some(current),
        origin_changed: false,
    };
    Ok(None)
}
