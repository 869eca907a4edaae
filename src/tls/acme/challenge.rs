//! The answers to ACME challenges while an order is in progress: the tls-alpn-01
//! certificate of each name (served by the resolver for the ALPN `acme-tls/1`,
//! RFC 8737) and the http-01 key authorization of each token (served on
//! `listen.http` at `/.well-known/acme-challenge/{token}`, RFC 8555 §8.3).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of tls-alpn-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of http-01 answers.
pub const HTTP_01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Challenge answers by name (tls-alpn-01) and by token (http-01).
#[derive(Debug, Default)]
pub struct Challenges {
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    http: Mutex<HashMap<String, String>>,
}

impl Challenges {
    /// The tls-alpn-01 certificate for `name`, while its validation is pending.
    pub fn tls_alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        crate::lock(&self.tls_alpn).get(name).cloned()
    }

    /// The key authorization to answer for an http-01 `token`.
    pub fn http(&self, token: &str) -> Option<String> {
        crate::lock(&self.http).get(token).cloned()
    }

    /// Publishes the tls-alpn-01 answer for `name`: a self-signed certificate for it
    /// carrying the `acmeIdentifier` extension with the SHA-256 `digest` of the key
    /// authorization.
    pub(super) fn add_tls_alpn(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        if digest.len() != 32 {
            return Err("the key authorization digest is not SHA-256".to_owned());
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki,
        // which refuses the critical acmeIdentifier extension it does not know.
        let signing_key = crate::tls::crypto::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        crate::lock(&self.tls_alpn).insert(name.to_owned(), Arc::new(certified));
        Ok(())
    }

    /// Publishes the http-01 answer for `token`.
    pub(super) fn add_http(&self, token: &str, key_authorization: &str) {
        crate::lock(&self.http).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Withdraws the answers of a finished order.
    pub(super) fn remove(&self, names: &[String], tokens: &[String]) {
        let mut tls_alpn = crate::lock(&self.tls_alpn);
        for name in names {
            tls_alpn.remove(name);
        }
        drop(tls_alpn);
        let mut http = crate::lock(&self.http);
        for token in tokens {
            http.remove(token);
        }
    }
}
