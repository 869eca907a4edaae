//! The hijack-signal stage (`session.anomaly`): bind a new session to its client's
//! fingerprints, compare a returning session's with this request's, and flag or end it.
//!
//! A warning names the session by its public id, never its cookie.

use http::header::{HeaderMap, USER_AGENT};

use std::sync::atomic::Ordering;

use super::error::ProxyError;
use super::session::{store_call, Handle, SessionCtx};
use crate::anomaly::{self, Anomaly};
use crate::config::AnomalyMode;
use crate::conn::ConnCtx;
use crate::metrics::StoreOp;
use crate::session::{random_bytes, PublicId, Session, SessionBackend};
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
    conn: &ConnCtx,
    now: u64,
) -> Result<Option<Anomaly>, ProxyError> {
    let mode = rt.config.security.anomaly;
    if mode == AnomalyMode::Off {
        return Ok(None);
    }
    let current = anomaly::origin_cached(&conn.agents, headers.get(USER_AGENT), ip);
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
    if mode == AnomalyMode::Flag {
        // Every request is flagged to the upstream; the log warns once per session and
        // connection, so a hijacked session does not flood it at request rate.
        let id = ctx.session.public_id.0;
        let key = u64::from_le_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]]);
        if conn.flagged.swap(key, Ordering::Relaxed) != key {
            warn_anomaly(&ctx.session.public_id, change, "flag");
        }
        return Ok(Some(change));
    }
    warn_anomaly(&ctx.session.public_id, change, "end");
    // `end`: as a logout; the request goes on with a fresh anonymous session.
    // A sealed session has nothing on the server: the fresh session's cookie replaces it.
    if let (SessionBackend::Server(store), Handle::Stored(token)) = (&state.backend, &ctx.handle) {
        store_call(rt, StoreOp::Destroy, store.destroy(token)).await?;
    }
    state.metrics.session_ended("anomaly", 1);
    let mut fresh = Session::new(PublicId(random_bytes()?), now);
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

/// The warning for a session used by another client (its public id, never its cookie).
fn warn_anomaly(public_id: &PublicId, change: Anomaly, action: &'static str) {
    tracing::warn!(
        session = %public_id.encode(),
        user_agent_changed = change.agent,
        network_changed = change.network,
        action,
        "session used by another client family or network"
    );
}
