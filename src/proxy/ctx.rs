//! [`Ctx`]: what every phase of the request path reads. A file of its own so the phases
//! in other files (`oidc.rs`) take it without importing the pipeline that calls them.

use std::sync::Arc;

use crate::conn::ConnCtx;
use crate::state::{AppState, Runtime};

/// What every phase reads: the process state, the request's runtime snapshot (loaded
/// once, kept to the end) and its client connection.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a Arc<AppState>,
    pub(crate) rt: &'a Runtime,
    pub(crate) conn: &'a Arc<ConnCtx>,
}
