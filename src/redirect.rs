//! The optional plain-HTTP listener: every request gets `308 Permanent Redirect` to the
//! same host and path on the https listener. Nothing is proxied over plain HTTP.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::shutdown::Signal;

use crate::proxy::ResponseBody;
use crate::router::normalize_host;

/// Serves redirects on `listener` to the https port `https_port` until `stop` is raised.
pub(crate) async fn serve(listener: TcpListener, https_port: u16, stop: Arc<Signal>) {
    let answer =
        move |request: Request<Incoming>| std::future::ready(redirect(&request, https_port));
    crate::plain_http::serve(listener, "http", answer, stop.wait()).await;
}

fn redirect(request: &Request<Incoming>, https_port: u16) -> Response<ResponseBody> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(normalize_host)
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        });
    let Some(host) = host else {
        let mut response = Response::new(ResponseBody::full("400 missing or bad Host\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut response = Response::new(ResponseBody::full("308 use https\n"));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
