//! The optional plain-HTTP listener: every request gets `308 Permanent Redirect` to the
//! same host and path on the https listener. Nothing is proxied over plain HTTP.
//! The one exception: ACME http-01 validations, `GET /.well-known/acme-challenge/{token}`
//! for a token of an order in progress, are answered with its key authorization.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::shutdown::Signal;
use crate::tls::acme::{Challenges, HTTP_01_PREFIX};

use crate::proxy::ResponseBody;
use crate::router::normalize_host;

/// Serves redirects on `listener` to the https port `https_port` until `stop` is raised.
pub(crate) async fn serve(
    listener: TcpListener,
    https_port: u16,
    stop: Arc<Signal>,
    challenges: Arc<Challenges>,
) {
    let answer = move |request: Request<Incoming>| {
        let response =
            acme_answer(&request, &challenges).unwrap_or_else(|| redirect(&request, https_port));
        std::future::ready(response)
    };
    crate::plain_http::serve(listener, "http", answer, stop.wait()).await;
}

/// The http-01 key authorization for a pending token (RFC 8555 §8.3).
fn acme_answer(
    request: &Request<Incoming>,
    challenges: &Challenges,
) -> Option<Response<ResponseBody>> {
    let token = request.uri().path().strip_prefix(HTTP_01_PREFIX)?;
    let key_authorization = challenges.http(token)?;
    let mut response = Response::new(ResponseBody::full(key_authorization));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(response)
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
