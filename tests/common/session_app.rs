//! A small upstream app that drives sessions by path, for tests of the session
//! protocol seen from outside (metrics, admin API, logs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A small app that drives sessions by path: `/login?user=NAME`, `/logout`,
/// `/logout-everywhere`, `/healthz` (200 or 503 by its switch); anything else answers
/// with the `X-Session-User` it received (or `anon`).
pub struct App {
    pub addr: SocketAddr,
    pub healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let switch = healthy.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let switch = switch.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |r| app(r, switch.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            healthy,
            task,
        }
    }
}

async fn app(
    request: Request<Incoming>,
    healthy: Arc<AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let user = request
        .headers()
        .get("x-session-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anon")
        .to_string();
    let mut response = Response::new(Full::new(Bytes::from(user)));
    let headers = response.headers_mut();
    match path.as_str() {
        "/login" => {
            let name = query.strip_prefix("user=").unwrap_or("someone");
            headers.insert("x-session-set-user", name.parse().unwrap());
        }
        "/logout" => {
            headers.insert("x-session-logout", "1".parse().unwrap());
        }
        "/logout-everywhere" => {
            headers.insert("x-session-logout", "everywhere".parse().unwrap());
        }
        "/healthz" if !healthy.load(Ordering::Relaxed) => {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        _ => {}
    }
    Ok(response)
}
