//! The admin listener (plain HTTP, loopback by default; never on the https listener):
//! `/healthz` (the process is up) and `/readyz` (it accepts traffic; fails once
//! shutdown began). Metrics and session administration join here in later work.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::proxy::ResponseBody;
use crate::state::AppState;

/// Serves the admin endpoints until shutdown begins.
pub(crate) async fn serve(listener: TcpListener, state: Arc<AppState>) {
    let stop = state.stop.clone();
    let answer = move |request: &Request<Incoming>| answer(&state, request);
    crate::listener::serve_plain(listener, "admin", answer, stop).await;
}

fn answer(state: &AppState, request: &Request<Incoming>) -> Response<ResponseBody> {
    let (status, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/readyz" if state.stop.is_raised() => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        "/readyz" => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response
}
