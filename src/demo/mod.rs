//! The built-in demo upstream apps that `cloakroom --demo` starts beside the proxy.
//!
//! Each bound address is one "server" of a tiny legacy-style web app: it shows which server
//! answered, the identity headers the proxy injected, and forms that drive the proxy's control
//! headers (`X-Session-Set-User`, `X-Session-Set-Roles`, `X-Session-Set-Data`,
//! `X-Session-Logout`), so a newcomer can click through login, logout and affinity in a browser.
//!
//! This is demo code only and not security relevant: it trusts every header it receives (that
//! is the point of sitting behind the proxy), keeps no state beyond a request counter, and uses
//! the default header names of the contract's `[inject]` and `[control]` tables. It still
//! never panics on bad input: malformed forms get a 400 page, and every printed value is
//! HTML-escaped.

//!
//! Files: [`form`] (the `POST` forms and their control headers), [`page`] (the HTML),
//! [`cert`] (the self-signed certificate `--demo` makes when none exists).
//! Connections are accepted by the crate's one plain-HTTP loop (`plain_http`).

mod cert;
mod form;
mod page;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::shutdown::Signal;
pub use cert::{ensure_certificate, DemoCertError};
use form::{login, read_form, set_data};
use page::{error_page, html, index_html, see_other, set_header, Body, Server};

// Default name from the contract's `[control]` table.
const LOGOUT: HeaderName = HeaderName::from_static("x-session-logout");

/// Serves the demo app on each address until `shutdown` resolves.
///
/// Every address is bound before anything is served; the first bind error is returned (the
/// caller reports it with the address). Open connections are dropped at shutdown.
pub async fn serve<F>(addrs: Vec<SocketAddr>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await?);
    }
    serve_listeners(listeners, shutdown).await
}

/// Serves already-bound listeners until `shutdown` resolves (tests bind port 0 and use this).
async fn serve_listeners<F>(listeners: Vec<TcpListener>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(Signal::default());
    let mut loops = JoinSet::new();
    for listener in listeners {
        let server = Arc::new(Server {
            addr: listener.local_addr()?,
            hits: AtomicU64::new(0),
        });
        tracing::info!(addr = %server.addr, "demo app listening");
        let answer = move |req| handle(req, Arc::clone(&server));
        let stop = stop.clone();
        loops.spawn(async move {
            crate::plain_http::serve(listener, "demo", answer, stop.wait()).await;
        });
    }
    shutdown.await;
    // The accept loops end and drop their connections.
    stop.raise();
    while loops.join_next().await.is_some() {}
    Ok(())
}

/// Routes one request; cannot fail, every problem becomes an error page.
async fn handle(req: Request<Incoming>, server: Arc<Server>) -> Response<Body> {
    let hits = server.hits.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let mut resp = Response::new(Body::from("ok\n"));
            set_header(&mut resp, CONTENT_TYPE, "text/plain; charset=utf-8");
            set_header(&mut resp, CACHE_CONTROL, "no-store");
            resp
        }
        (&Method::GET | &Method::HEAD, _) => {
            let body = index_html(&server, hits, req.method(), req.uri(), req.headers());
            html(StatusCode::OK, &server, "cloakroom demo", &body)
        }
        (&Method::POST, "/login") => match read_form(req, &server).await {
            Ok(form) => login(&server, &form),
            Err(resp) => resp,
        },
        (&Method::POST, "/logout") => {
            let mut resp = see_other(&server);
            set_header(&mut resp, LOGOUT, "1");
            resp
        }
        (&Method::POST, "/data") => match read_form(req, &server).await {
            Ok(form) => set_data(&server, &form),
            Err(resp) => resp,
        },
        (&Method::POST, "/.cloakroom/logout") => error_page(
            StatusCode::NOT_FOUND,
            &server,
            "This path is answered by the cloakroom proxy itself; this request reached the \
             demo app directly. Open the demo through the proxy (https://localhost:8443).",
        ),
        (&Method::POST, _) => error_page(StatusCode::NOT_FOUND, &server, "No such form target."),
        _ => {
            let mut resp = error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                &server,
                "The demo app answers GET, HEAD and POST only.",
            );
            set_header(&mut resp, http::header::ALLOW, "GET, HEAD, POST");
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn roundtrip(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_pages_and_control_headers_on_each_listener() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_listeners(vec![first, second], async {
            let _ = stopped.await;
        }));

        for addr in [a, b] {
            let page = roundtrip(
                addr,
                "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
            assert!(page.contains(&format!("server {addr}")), "{page}");
            assert!(page.contains("action=/login"), "{page}");
        }

        let body = "user=alice&roles=admin%2C+dev";
        let login = roundtrip(
            a,
            &format!(
                "POST /login HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        let head = login.to_ascii_lowercase();
        assert!(login.starts_with("HTTP/1.1 303 See Other\r\n"), "{login}");
        assert!(head.contains("\r\nlocation: /\r\n"), "{login}");
        assert!(
            head.contains("\r\nx-session-set-user: alice\r\n"),
            "{login}"
        );
        assert!(
            head.contains("\r\nx-session-set-roles: admin,dev\r\n"),
            "{login}"
        );

        let bad = roundtrip(
            a,
            "POST /login HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nContent-Length: 5\r\n\r\nuser=",
        )
        .await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        assert!(
            !bad.to_ascii_lowercase().contains("x-session-set-user"),
            "{bad}"
        );

        let health = roundtrip(
            b,
            "GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn serve_reports_bind_errors() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let result = serve(vec![addr], std::future::pending()).await;
        assert!(result.is_err());
    }
}
