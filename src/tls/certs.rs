//! Reading PEM certificate chains and private keys into rustls `CertifiedKey`s.
//!
//! Accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys. Errors name the config key and the
//! file, and say what was found instead of what was expected.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::TlsError;
use crate::config::{CertPaths, TlsConfig};

/// Certificates by SNI: exact names, `*.suffix` wildcards, and the default.
#[derive(Debug)]
pub struct CertTable {
    /// `tls.cert`/`tls.key`; absent when `[tls.acme]` provides every certificate.
    pub(crate) default: Option<Arc<CertifiedKey>>,
    /// Lower-case exact hostnames.
    pub(crate) exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", key)`, longest suffix first.
    pub(crate) wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertTable {
    /// The certificate for `sni` (already lower-case), or the default (if any).
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(key) = self.exact.get(name) {
                return Some(key.clone());
            }
            for (suffix, key) in &self.wildcard {
                // `*.example.com` covers exactly one more label.
                if let Some(head) = name.strip_suffix(suffix.as_str()) {
                    if !head.is_empty() && !head.contains('.') {
                        return Some(key.clone());
                    }
                }
            }
        }
        self.default.clone()
    }
}

/// Loads every certificate the config names. Blocking file IO.
pub fn load_cert_table(tls: &TlsConfig) -> Result<CertTable, TlsError> {
    let provider = super::crypto::provider();
    let default = match &tls.default {
        Some(paths) => Some(load_pair(&provider, paths, "tls")?),
        None => None,
    };
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        let key = load_pair(&provider, &sni.certs, &format!("tls.sni[{i}]"))?;
        match sni.hostname.strip_prefix('*') {
            Some(suffix) => wildcard.push((suffix.to_string(), key)),
            None => {
                exact.insert(sni.hostname.clone(), key);
            }
        }
    }
    wildcard.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    Ok(CertTable {
        default,
        exact,
        wildcard,
    })
}

fn load_pair(
    provider: &CryptoProvider,
    paths: &CertPaths,
    prefix: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_key = format!("{prefix}.cert");
    let key_key = format!("{prefix}.key");
    let pem_err = |key: &str, path: &std::path::Path, reason: String| TlsError::Pem {
        key: key.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|e| pem_err(&cert_key, &paths.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&cert_key, &paths.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_err(
            &cert_key,
            &paths.cert,
            "no CERTIFICATE block found; expected a PEM chain (leaf first)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|e| {
        pem_err(
            &key_key,
            &paths.key,
            format!("{e}; expected a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        )
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
            key: key_key.clone(),
            source,
        })?;
    Ok(Arc::new(certified))
}
