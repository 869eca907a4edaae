//! Validation of `[tls.acme]`: a known challenge (and `listen.http` for `http-01`),
//! the names to certify (given, or every exact route host), a writable `cache`
//! folder (created when missing) and a loadable `ca` root.
//!
//! Part of the `Validator` in `validate.rs`, split out by section; it runs after the
//! routes because its default `domains` are theirs.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::super::raw::RawAcme;
use super::super::{AcmeChallenge, AcmeConfig, HostPattern, ListenConfig, RouteConfig};
use super::checks::hostname;
use super::Validator;

impl Validator<'_> {
    pub(super) fn acme(
        &mut self,
        raw: RawAcme,
        listen: Option<&ListenConfig>,
        routes: Option<&[RouteConfig]>,
    ) -> Option<AcmeConfig> {
        let directory = self.acme_directory(&raw.directory);
        let challenge = match raw.challenge.as_str() {
            "tls-alpn-01" => Some(AcmeChallenge::TlsAlpn01),
            "http-01" => {
                if listen.is_some_and(|l| l.http.is_none()) {
                    self.error(
                        "tls.acme.challenge",
                        "\"http-01\" is answered on the plain-HTTP listener; set listen.http \
                         (the CA connects to port 80) or use \"tls-alpn-01\"",
                    );
                }
                Some(AcmeChallenge::Http01)
            }
            other => {
                self.error(
                    "tls.acme.challenge",
                    format!(
                        "\"{other}\" is not a challenge cloakroom answers; use \"tls-alpn-01\" \
                         (on the https listener) or \"http-01\" (on listen.http)"
                    ),
                );
                None
            }
        };
        let domains = self.acme_domains(raw.domains, routes);
        let cache = self.acme_cache(&raw.cache);
        let ca = if raw.ca.trim().is_empty() {
            Some(None)
        } else {
            self.acme_ca(&raw.ca).map(Some)
        };
        let renew_before = self.duration("tls.acme.renew_before", &raw.renew_before);
        let email = raw.email.trim().to_owned();
        if email.contains(char::is_whitespace) || (!email.is_empty() && !email.contains('@')) {
            self.error(
                "tls.acme.email",
                format!("\"{email}\" is not an e-mail address; write it like \"ops@example.com\""),
            );
        }
        Some(AcmeConfig {
            directory: directory?,
            email,
            domains: domains?,
            challenge: challenge?,
            cache: cache?,
            ca: ca?,
            renew_before: renew_before?,
        })
    }

    fn acme_directory(&mut self, value: &str) -> Option<String> {
        let value = value.trim();
        let ok = value
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|uri| uri.scheme_str() == Some("https") && uri.host().is_some());
        if !ok {
            self.error(
                "tls.acme.directory",
                format!(
                    "\"{value}\" is not an https URL; use e.g. Let's Encrypt's staging directory \
                     \"https://acme-staging-v02.api.letsencrypt.org/directory\""
                ),
            );
            return None;
        }
        Some(value.to_owned())
    }

    fn acme_domains(
        &mut self,
        given: Option<Vec<String>>,
        routes: Option<&[RouteConfig]>,
    ) -> Option<Vec<String>> {
        let key = "tls.acme.domains";
        let domains: Vec<String> = match given {
            Some(given) => {
                let mut out = Vec::new();
                for (i, name) in given.iter().enumerate() {
                    match hostname(name) {
                        Ok(name) if name.contains('.') && !name.contains(':') => {
                            if !out.contains(&name) {
                                out.push(name);
                            }
                        }
                        Ok(name) => self.error(
                            &format!("{key}[{i}]"),
                            format!(
                                "\"{name}\" is not a DNS name a CA certifies; give a full name \
                                 like \"app.example.com\""
                            ),
                        ),
                        Err(message) => self.error(&format!("{key}[{i}]"), message),
                    }
                }
                out
            }
            None => {
                let mut out: Vec<String> = Vec::new();
                for route in routes? {
                    if let Some(HostPattern::Exact(host)) = &route.host {
                        if !out.contains(host) {
                            out.push(host.clone());
                        }
                    }
                }
                out
            }
        };
        if domains.is_empty() {
            self.error(
                key,
                "no names to certify: list them (domains = [\"app.example.com\"]) or give \
                 routes an exact host",
            );
            return None;
        }
        Some(domains)
    }

    /// The cache folder, created when missing (mode 0700) and checked writable.
    fn acme_cache(&mut self, value: &str) -> Option<PathBuf> {
        let joined = self.base.join(value.trim());
        let path = std::path::absolute(&joined).unwrap_or(joined);
        let result = writable_dir(&path).map_err(|e| {
            format!(
                "\"{}\" is not a writable folder: {e}; the account key and certificates are kept \
                 there (relative paths start at the configuration file's folder)",
                path.display()
            )
        });
        self.check("tls.acme.cache", result).map(|()| path)
    }

    fn acme_ca(&mut self, value: &str) -> Option<PathBuf> {
        let path = self.readable_file("tls.acme.ca", value)?;
        let loaded = CertificateDer::pem_file_iter(&path)
            .map_err(|e| e.to_string())
            .and_then(|mut certs| match certs.next() {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("no CERTIFICATE block found".to_owned()),
            });
        let result = loaded.map_err(|e| {
            format!(
                "\"{}\": {e}; expected the PEM root certificate of the ACME server",
                path.display()
            )
        });
        self.check("tls.acme.ca", result).map(|()| path)
    }
}

fn writable_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let probe = path.join(format!(".cloakroom-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}
