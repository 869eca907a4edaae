//! TLS termination: the rustls `ServerConfig` and the hot-swappable certificate table.
//!
//! The `ServerConfig` is built once per process; a reload only swaps the certificate
//! table inside [`CertResolver`], so listeners and live connections are untouched.
//! Protocol versions are TLS 1.2 and 1.3 only; ALPN offers `h2` then `http/1.1`.
//! Loading PEM files reads the disk: call it at start-up or from `spawn_blocking`.

pub(crate) mod acme;
mod certs;
pub mod crypto;
mod resolver;

use std::sync::Arc;

use rustls::ServerConfig;

pub use certs::{load_cert_table, CertTable};
pub use resolver::CertResolver;

/// Why certificates could not be loaded. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{key}: {path}: {reason}")]
    Pem {
        /// The config key that named the file (`tls.cert`, `tls.sni[0].key`, ...).
        key: String,
        path: String,
        reason: String,
    },
    /// rustls refused the certificate/key pair.
    #[error("{key}: the certificate and key do not form a usable pair: {source}")]
    Pair {
        key: String,
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// The config key this error is about, so the caller can point at its line.
    pub fn key(&self) -> &str {
        match self {
            TlsError::Pem { key, .. } | TlsError::Pair { key, .. } => key,
        }
    }
}
/// Builds the process-wide rustls config around `resolver`. Every suite of the provider's
/// default provider is an AEAD (AES-GCM, ChaCha20-Poly1305) with ECDHE key exchange
/// under TLS 1.2 (pinned by a unit test); CBC, RSA key exchange and TLS < 1.2 are never
/// offered.
///
/// With `acme` (a `[tls.acme]` table answered by tls-alpn-01), `acme-tls/1` is accepted
/// after `h2` and `http/1.1`: only an ACME validator offers it, and alone (RFC 8737).
pub fn server_config(
    resolver: Arc<CertResolver>,
    acme: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
    }
    // Session resumption with tickets keeps reconnecting browsers cheap.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_tls_1_2_and_1_3_with_forward_secret_aead_suites() {
        let provider = super::crypto::provider();
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            let aead = name.contains("_GCM_") || name.contains("CHACHA20_POLY1305");
            let tls13 = name.starts_with("TLS13_");
            let ecdhe = name.starts_with("TLS_ECDHE_");
            assert!(aead && (tls13 || ecdhe), "weak suite {name}");
        }
    }
}
