//! Certificate selection by SNI, swappable at reload without touching the listener.
//!
//! Three sources, in order: the tls-alpn-01 challenge certificate when the client's
//! ALPN is exactly `acme-tls/1` (an ACME CA validating us, RFC 8737); the ACME
//! certificate of the name; the file certificates (`[tls]`, `[[tls.sni]]`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::acme::{Challenges, ACME_TLS_ALPN};
use super::CertTable;

/// Picks the certificate for each handshake from the current [`CertTable`].
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    /// ACME certificates by lower-case name; one `Arc` per certificate.
    acme: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// The tls-alpn-01 and http-01 answers of orders in progress.
    challenges: Arc<Challenges>,
    /// Unix seconds of the last "no certificate" warning (one per 10 s at most).
    warned: AtomicU64,
}

impl CertResolver {
    /// A resolver serving `table`.
    pub fn new(table: CertTable) -> Self {
        CertResolver {
            table: ArcSwap::from_pointee(table),
            acme: ArcSwap::default(),
            challenges: Arc::default(),
            warned: AtomicU64::new(0),
        }
    }

    /// Replaces the table; handshakes after this see the new certificates.
    pub fn swap(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    /// Serves `key` for each of `names` from the next handshake on (an ACME certificate
    /// arrived or was renewed); connections already open keep theirs.
    pub fn install_acme(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.acme.rcu(|current| {
            let mut next = HashMap::clone(current);
            for name in names {
                next.insert(name.clone(), key.clone());
            }
            next
        });
    }

    /// The ACME certificate currently served for `name`.
    pub fn acme_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.acme.load().get(name).cloned()
    }

    /// The answers of ACME challenges, shared with the http-01 listener.
    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            if let Some(key) = self.acme.load().get(name) {
                return Some(key.clone());
            }
        }
        self.table.load().pick(sni)
    }

    fn warn_missing(&self, sni: Option<&str>) {
        let now = crate::clock::unix_ms() / 1000;
        let last = self.warned.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                sni = sni.unwrap_or("(none)"),
                "TLS handshake refused: no certificate for this name yet (the ACME order has \
                 not completed; see the acme log lines) and no tls.cert default"
            );
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands us the SNI as a validated DNS name; compare case-insensitively.
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let mut alpn = hello.alpn().into_iter().flatten();
        if let (Some(ACME_TLS_ALPN), None) = (alpn.next(), alpn.next()) {
            return sni.and_then(|name| self.challenges.tls_alpn(&name));
        }
        let chosen = self.choose(sni.as_deref());
        if chosen.is_none() {
            self.warn_missing(sni.as_deref());
        }
        chosen
    }
}

impl CertResolver {
    /// True when the certificate chosen for `sni` also serves `host`, i.e. a request for
    /// `host` arriving on that TLS connection is not misdirected (RFC 9110 §15.5.20).
    /// Both names are lower-case.
    pub fn covers(&self, sni: &str, host: &str) -> bool {
        if sni == host {
            return true;
        }
        match (self.choose(Some(sni)), self.choose(Some(host))) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
            _ => false,
        }
    }
}
