//! The session admin API (JSON):
//! - `GET /sessions?user=NAME`: the user's live sessions (`id` = public id, `user`,
//!   `roles`, `created`, `last_seen` in unix milliseconds);
//! - `DELETE /sessions?user=NAME`: log the user out everywhere (every session of theirs
//!   in the store, so on every replica that shares it);
//! - `DELETE /sessions/{public_id}`: end one session;
//! - `GET /sessions/count`: sessions in the store.
//!
//! Every store call runs under a deadline. With the sealed backend (`store = "cookie"`,
//! nothing kept server-side) every path answers 501 with the reason.

use http::{Response, StatusCode};
use serde_json::json;

use super::{json, STORE_DEADLINE};
use crate::inject::percent_decode;
use crate::metrics::StoreOp;
use crate::proxy::ResponseBody;
use crate::session::store::SessionInfo;
use crate::session::{PublicId, SessionBackend, StoreError};
use crate::state::AppState;

/// Runs an admin store call under the deadline; `Err` is the response to send.
async fn call<T>(
    state: &AppState,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, Response<ResponseBody>> {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(STORE_DEADLINE, op).await;
    let ok = matches!(result, Ok(Ok(_)));
    state
        .metrics
        .store
        .record(StoreOp::Admin, started.elapsed(), ok);
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(store_error(&error)),
        Err(_) => Err(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "the session store did not answer in time" }),
        )),
    }
}

/// The answer of every path with the sealed backend, which keeps nothing server-side.
fn not_kept() -> Response<ResponseBody> {
    json(
        StatusCode::NOT_IMPLEMENTED,
        &json!({
            "error": format!("not supported by this session store: {}", SessionBackend::NOT_KEPT)
        }),
    )
}

/// The answer for a store error.
fn store_error(error: &StoreError) -> Response<ResponseBody> {
    let status = match error {
        StoreError::Timeout | StoreError::Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Full => StatusCode::INSUFFICIENT_STORAGE,
    };
    json(
        status,
        &json!({ "error": crate::error_chain::display_chain(error) }),
    )
}

/// The `user` query parameter, percent-decoded; `None` when missing or empty.
fn user_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("user="))
        .and_then(|raw| percent_decode(&raw.replace('+', " ")))
        .filter(|user| !user.is_empty())
}

/// The answer when `?user=` is missing.
fn missing_user() -> Response<ResponseBody> {
    json(
        StatusCode::BAD_REQUEST,
        &json!({ "error": "name the user: ?user=NAME" }),
    )
}

fn describe(info: &SessionInfo) -> serde_json::Value {
    json!({
        "id": info.public_id.encode(),
        "user": info.user,
        "roles": info
            .roles
            .as_deref()
            .map(|r| r.split(',').map(str::trim).filter(|r| !r.is_empty()).collect::<Vec<_>>())
            .unwrap_or_default(),
        "created": info.created,
        "last_seen": info.last_seen,
    })
}

/// The error text of an admin answer that is not a success (for the status page).
fn why(response: &Response<ResponseBody>) -> String {
    match response.status() {
        StatusCode::NOT_IMPLEMENTED => {
            format!(
                "not supported by this session store: {}",
                SessionBackend::NOT_KEPT
            )
        }
        StatusCode::SERVICE_UNAVAILABLE => "the session store did not answer".to_string(),
        status => format!("the session store refused ({status})"),
    }
}

/// The live sessions of `user` (the status page's search; same call as `GET /sessions`).
pub(super) async fn listed(state: &AppState, user: &str) -> Result<Vec<SessionInfo>, String> {
    let Some(store) = &state.index else {
        return Err(why(&not_kept()));
    };
    let expiry = state.runtime().expiry;
    call(state, store.list_user(user, state.clock.now_ms(), expiry))
        .await
        .map_err(|r| why(&r))
}

/// Ends every session of `user`, as `DELETE /sessions?user=` does; how many ended.
pub(super) async fn ended_user(state: &AppState, user: &str) -> Result<usize, String> {
    let answer = end_user_inner(state, user).await;
    answer.map_err(|r| why(&r))
}

/// Ends the session with public id `id`, as `DELETE /sessions/{id}` does; whether
/// it was live.
pub(super) async fn ended_one(state: &AppState, id: &str) -> Result<bool, String> {
    match end_one_inner(state, id).await {
        Ok(ended) => Ok(ended),
        Err(response) if response.status() == StatusCode::BAD_REQUEST => {
            Err("not a session id".to_string())
        }
        Err(response) => Err(why(&response)),
    }
}

/// `GET /sessions?user=NAME`.
pub(super) async fn list(state: &AppState, query: &str) -> Response<ResponseBody> {
    let Some(user) = user_param(query) else {
        return missing_user();
    };
    let Some(store) = &state.index else {
        return not_kept();
    };
    let expiry = state.runtime().expiry;
    match call(state, store.list_user(&user, state.clock.now_ms(), expiry)).await {
        Ok(sessions) => json(
            StatusCode::OK,
            &serde_json::Value::Array(sessions.iter().map(describe).collect()),
        ),
        Err(response) => response,
    }
}

/// `DELETE /sessions?user=NAME`: log the user out everywhere.
pub(super) async fn end_user(state: &AppState, query: &str) -> Response<ResponseBody> {
    let Some(user) = user_param(query) else {
        return missing_user();
    };
    match end_user_inner(state, &user).await {
        Ok(ended) => json(StatusCode::OK, &json!({ "user": user, "ended": ended })),
        Err(response) => response,
    }
}

async fn end_user_inner(state: &AppState, user: &str) -> Result<usize, Response<ResponseBody>> {
    let Some(store) = &state.index else {
        return Err(not_kept());
    };
    let ended = call(state, store.destroy_user(user)).await?;
    state.metrics.session_ended("admin", ended as u64);
    tracing::info!(user, ended, "admin: user logged out everywhere");
    Ok(ended)
}

/// `DELETE /sessions/{public_id}`.
pub(super) async fn end_one(state: &AppState, id: &str) -> Response<ResponseBody> {
    match end_one_inner(state, id).await {
        Ok(true) => json(StatusCode::OK, &json!({ "id": id, "ended": 1 })),
        Ok(false) => json(
            StatusCode::NOT_FOUND,
            &json!({ "error": "no such session", "id": id }),
        ),
        Err(response) => response,
    }
}

async fn end_one_inner(state: &AppState, id: &str) -> Result<bool, Response<ResponseBody>> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id)
        .ok()
        .and_then(|bytes| <[u8; 16]>::try_from(bytes).ok());
    let Some(bytes) = decoded else {
        return Err(json(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "not a session id (22 base64url characters, as in X-Session-Id)" }),
        ));
    };
    let Some(store) = &state.index else {
        return Err(not_kept());
    };
    let ended = call(state, store.destroy_public(&PublicId(bytes))).await?;
    if ended {
        state.metrics.session_ended("admin", 1);
        tracing::info!(session = id, "admin: session ended");
    }
    Ok(ended)
}

/// `GET /sessions/count`.
pub(super) async fn count(state: &AppState) -> Response<ResponseBody> {
    let Some(store) = &state.index else {
        return not_kept();
    };
    match call(state, store.count()).await {
        Ok(count) => json(StatusCode::OK, &json!({ "count": count })),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_parameter_is_decoded_and_required() {
        assert_eq!(user_param("user=alice").unwrap(), "alice");
        assert_eq!(user_param("x=1&user=a%40b.c").unwrap(), "a@b.c");
        assert_eq!(user_param("user=ann+lee").unwrap(), "ann lee");
        assert!(user_param("").is_none());
        assert!(user_param("user=").is_none());
    }
}
