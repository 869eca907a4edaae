//! The one accept loop for the small plain-HTTP/1.1 endpoints: the 308 redirect
//! listener, the admin listener and the demo apps. It owns its connections (a
//! `JoinSet`: they end when the loop does), gives every client 10 s to send a request
//! head, and answers each request with the caller's async `answer` function.
//!
//! It is not the proxy's accept loop ([`crate::listener`]): no TLS, no connection limit,
//! no per-connection deadlines beyond the request head. Nothing here may be reached by
//! proxied traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The client must send its request head within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors, …) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listener` until `stop` resolves: every request is answered by `answer`.
/// `what` names the listener in logs (`listener = "admin"`). Open connections are
/// dropped when the loop ends.
pub(crate) async fn serve<A, Fut, B>(
    listener: TcpListener,
    what: &'static str,
    answer: A,
    stop: impl Future<Output = ()>,
) where
    A: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let answer = Arc::new(answer);
    // Owns the connection tasks: dropping it when the loop ends aborts them.
    let mut conns = JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, what, answer.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, listener = what, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one HTTP/1.1 connection (keep-alive) with `answer`.
async fn serve_connection<A, Fut, B>(
    stream: tokio::net::TcpStream,
    what: &'static str,
    answer: Arc<A>,
) where
    A: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Nagle only delays small answers; failing to disable it is harmless.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let response = answer(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%error, listener = what, "plain-HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::ResponseBody;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn answers_each_request_and_stops_accepting_when_stopped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let answer = |request: Request<Incoming>| async move {
            let path = request.uri().path().to_owned();
            Response::new(ResponseBody::full(format!("you asked for {path}")))
        };
        let task = tokio::spawn(serve(listener, "test", answer, async {
            let _ = stopped.await;
        }));
        for path in ["/a", "/b/c"] {
            let response = get(addr, path).await;
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(
                response.ends_with(&format!("you asked for {path}")),
                "{response}"
            );
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
