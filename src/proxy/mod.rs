//! The request path: a per-connection hyper service whose handler cannot fail, wrapped
//! around the fallible phases in [`pipeline`] (its module doc is the map of the phases
//! and where each lives).
//!
//! The handler loads the runtime snapshot once, runs the phases, turns any
//! [`ProxyError`] into its response, finishes the response (`response_filter`) and
//! runs the `logging` phase.

mod access;
pub(crate) mod body;
mod control;
mod ctx;
mod endpoints;
mod error;
pub(crate) mod headers;
mod hijack;
mod oidc;
mod pipeline;
mod send;
mod session;
mod tunnel;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

pub use crate::upstream::body::RequestBody;
pub use body::ResponseBody;
pub use error::{Blame, ProxyError};

use crate::conn::ConnCtx;
use crate::state::AppState;
use access::{AccessRecord, RequestLine};
use ctx::Ctx;
use pipeline::Extras;

/// Serves one request; never fails.
pub(crate) async fn serve(
    state: Arc<AppState>,
    conn: Arc<ConnCtx>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let _busy = conn.activity.begin();
    let started = Instant::now();
    let runtime = state.runtime();
    let line = RequestLine::capture(&request, runtime.config.log.access);
    let trusted = runtime
        .config
        .listen
        .trusted_proxies
        .contains(&conn.peer.ip());
    let request_id =
        state
            .request_ids
            .for_request(request.headers(), trusted, conn.conn_no, &conn.requests);
    let mut access = AccessRecord {
        request_id: Some(request_id.clone()),
        ..AccessRecord::default()
    };
    let mut extras = Extras::default();
    let cx = Ctx {
        state: &state,
        rt: &runtime,
        conn: &conn,
    };
    let mut response = match pipeline::run(cx, request, &mut access, &mut extras).await {
        Ok(response) => response,
        Err(error) => {
            access.failed(&error, &conn);
            error.to_response()
        }
    };
    pipeline::response_filter(&runtime, &mut response, extras, request_id);
    access::logging(&runtime, &conn, &access, line, &response, started);
    Ok(response)
}
