//! Certificate selection by SNI, swappable at reload without touching the listener.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::CertTable;

/// Picks the certificate for each handshake from the current [`CertTable`].
#[derive(Debug)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
}

impl CertResolver {
    /// A resolver serving `table`.
    pub fn new(table: CertTable) -> Self {
        CertResolver {
            table: ArcSwap::from_pointee(table),
        }
    }

    /// Replaces the table; handshakes after this see the new certificates.
    pub fn swap(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands us the SNI as a validated DNS name; compare case-insensitively.
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        Some(self.table.load().pick(sni.as_deref()))
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
        let table = self.table.load();
        Arc::ptr_eq(&table.pick(Some(sni)), &table.pick(Some(host)))
    }
}
