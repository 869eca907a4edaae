//! The relying party's HTTP client to the provider: one short HTTP/1.1 exchange per
//! call (discovery, keys, token, userinfo), over rustls for `https://` (the web PKI
//! roots plus `oidc.ca`), plain TCP only for a loopback `http://` issuer the config
//! allowed. Every call is bounded by one deadline, connect included, and answers are
//! capped at [`MAX_BODY`]; nothing here retries (the caller decides).
//!
//! hyper's connection-level client is driven directly, as for upstreams: these calls
//! are rare (a login, a refresh), so there is no pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest answer read from the provider.
const MAX_BODY: usize = 1 << 20;

/// Why a call to the provider failed (never carries a token or secret).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("bad provider URL {0:?}")]
    Url(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Io(String),
    #[error("status {0}")]
    Status(StatusCode, Bytes),
}

/// One provider's client.
#[derive(Clone)]
pub(crate) struct Client {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A successful call's answer body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) body: Bytes,
}

impl Client {
    /// A client trusting the web PKI roots and the PEM bundle at `ca`.
    pub(crate) fn new(ca: Option<&std::path::Path>, timeout: Duration) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("oidc.ca {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("oidc.ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("oidc.ca {}: {e}", path.display()))?;
            }
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto::provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// `GET url` (with a bearer token when given).
    pub(crate) async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Answer, HttpError> {
        let auth = bearer.map(|token| format!("Bearer {token}"));
        self.call(Method::GET, url, None, auth).await
    }

    /// `POST url` with a form body and optional HTTP Basic credentials (already
    /// encoded).
    pub(crate) async fn post_form(
        &self,
        url: &str,
        form: String,
        basic: Option<&str>,
    ) -> Result<Answer, HttpError> {
        let auth = basic.map(|value| format!("Basic {value}"));
        self.call(Method::POST, url, Some(form), auth).await
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
        auth: Option<String>,
    ) -> Result<Answer, HttpError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, url, form, auth)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
        auth: Option<String>,
    ) -> Result<Answer, HttpError> {
        let uri: Uri = url.parse().map_err(|_| HttpError::Url(url.into()))?;
        let host = uri.host().ok_or_else(|| HttpError::Url(url.into()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(url.into())),
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "cloakroom-oidc");
        if let Some(authority) = uri.authority() {
            request = request.header(header::HOST, authority.as_str());
        }
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let body = match form {
            Some(form) => {
                request = request.header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                Full::new(Bytes::from(form))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|_| HttpError::Url(url.into()))?;
        if tls {
            let name =
                ServerName::try_from(bare.to_owned()).map_err(|_| HttpError::Url(url.into()))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| HttpError::Io(e.to_string()))?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn send<T>(io: TokioIo<T>, request: Request<Full<Bytes>>) -> Result<Answer, HttpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(HttpError::Status(status, body));
    }
    Ok(Answer { body })
}
