//! `POST /reload`: exactly what SIGHUP does (re-read the config file and the
//! certificates, validate everything, swap it in whole). 200 with the new generation
//! once it is live; 422 with every error (`file:line:col: key: message`) when the file
//! was refused; 409 naming each key when the file changes a setting that takes effect
//! only at start (restart to apply it); 500 when the reload task itself failed. The
//! running config stays on any refusal.

use http::{Response, StatusCode};

use super::text;
use crate::proxy::ResponseBody;
use crate::state::{AppState, ReloadError};

/// `POST /reload`.
pub(super) async fn post(state: &AppState) -> Response<ResponseBody> {
    match crate::reload_now(state).await {
        Ok(generation) => text(
            StatusCode::OK,
            format!("reloaded: generation {generation} is live\n"),
        ),
        Err(error @ ReloadError::Config(_)) => text(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, the running configuration stays:\n{error}\n"),
        ),
        Err(error @ ReloadError::NeedsRestart(_)) => text(
            StatusCode::CONFLICT,
            format!("reload refused, the running configuration stays:\n{error}\n"),
        ),
        Err(error @ ReloadError::Task(_)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed, the running configuration stays: {error}\n"),
        ),
    }
}
