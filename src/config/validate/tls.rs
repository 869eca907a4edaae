//! Validation of `[tls]`: the default certificate and key and the `[[tls.sni]]`
//! entries (one per host name). The files are checked to be readable, not parsed: that
//! is the TLS module's job.
//!
//! Part of the `Validator` in `validate.rs`, split out by section.

use super::super::raw::RawTls;
use super::super::{CertPaths, SniConfig, TlsConfig};
use super::checks::sni_hostname;
use super::Validator;

impl Validator<'_> {
    pub(super) fn tls(&mut self, raw: Option<RawTls>, acme: bool) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.error(
                "tls",
                "missing; add a [tls] section with cert = \"certs/cert.pem\" and key = \"certs/key.pem\"",
            );
            return None;
        };
        let (cert, key) = match (&raw.cert, &raw.key) {
            (Some(cert), Some(key)) => (
                self.readable_file("tls.cert", cert).map(Some),
                self.readable_file("tls.key", key).map(Some),
            ),
            (None, None) if acme => (Some(None), Some(None)),
            (None, _) => {
                self.error(
                    "tls.cert",
                    "missing; name a PEM chain (cert = \"certs/cert.pem\") or add [tls.acme]",
                );
                (None, None)
            }
            (Some(_), None) => {
                self.error(
                    "tls.key",
                    "missing; name the PEM private key of tls.cert (key = \"certs/key.pem\")",
                );
                (None, None)
            }
        };
        let mut sni = Vec::new();
        let mut ok = true;
        for (i, entry) in raw.sni.iter().enumerate() {
            let prefix = format!("tls.sni[{i}]");
            let hostname = self.check(&format!("{prefix}.hostname"), sni_hostname(&entry.hostname));
            if let Some(name) = &hostname {
                let earlier = sni.iter().position(|s: &SniConfig| &s.hostname == name);
                if let Some(j) = earlier {
                    self.error(
                        &format!("{prefix}.hostname"),
                        format!("\"{name}\" is already tls.sni[{j}]; remove one of them"),
                    );
                }
            }
            let cert = self.readable_file(&format!("{prefix}.cert"), &entry.cert);
            let key = self.readable_file(&format!("{prefix}.key"), &entry.key);
            match (hostname, cert, key) {
                (Some(hostname), Some(cert), Some(key)) => sni.push(SniConfig {
                    hostname,
                    certs: CertPaths { cert, key },
                }),
                _ => ok = false,
            }
        }
        let default = match (cert?, key?) {
            (Some(cert), Some(key)) => Some(CertPaths { cert, key }),
            _ => None,
        };
        // `[tls.acme]` is validated after the routes (its default domains are theirs).
        ok.then_some(TlsConfig {
            default,
            acme: None,
            sni,
        })
    }
}
