//! Validation of `[oidc]` and of the routes' `login = "oidc"` and `allow_*` keys: the
//! issuer is https (or http on loopback with `allow_http_loopback`), the client id and
//! the claims are named, the `ca` bundle loads. No network IO: discovery happens when
//! the proxy runs.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern.

use super::super::raw::{RawOidc, RawRoute};
use super::super::{Allow, OidcConfig, Secret};
use super::Validator;

impl Validator<'_> {
    pub(super) fn oidc(&mut self, raw: RawOidc) -> Option<OidcConfig> {
        let errors = self.errors.len();
        let issuer = raw.issuer.trim().to_owned();
        if let Err(message) = issuer_ok(&issuer, raw.allow_http_loopback) {
            self.error("oidc.issuer", message);
        }
        if raw.client_id.trim().is_empty() {
            self.error(
                "oidc.client_id",
                "the client id the provider gave this application is required, \
                 e.g. client_id = \"cloakroom\"",
            );
        }
        let client_secret = match raw.client_secret {
            Some(secret) if secret.is_empty() => {
                self.error(
                    "oidc.client_secret",
                    "is empty; remove the key for a public client (PKCE alone) or set the \
                     secret, e.g. \"${OIDC_CLIENT_SECRET}\"",
                );
                None
            }
            Some(secret) => Some(Secret(secret.into_bytes())),
            None => None,
        };
        let mut scopes: Vec<String> = vec!["openid".to_owned()];
        for (i, scope) in raw.scopes.iter().enumerate() {
            let ok = !scope.is_empty()
                && scope
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok {
                self.error(
                    &format!("oidc.scopes[{i}]"),
                    format!("\"{scope}\" is not a scope (printable ASCII, no spaces)"),
                );
            } else if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
        if raw.user_claim.trim().is_empty() {
            self.error(
                "oidc.user_claim",
                "name the claim that becomes the user, e.g. \"sub\", \"email\" or \
                 \"preferred_username\"",
            );
        }
        let roles_claim = (!raw.roles_claim.trim().is_empty()).then(|| raw.roles_claim.clone());
        let ca = if raw.ca.is_empty() {
            None
        } else {
            let path = self.readable_file("oidc.ca", &raw.ca);
            if let Some(path) = &path {
                if let Err(message) = pem_roots(path) {
                    self.error("oidc.ca", message);
                }
            }
            path
        };
        if self.errors.len() != errors {
            return None;
        }
        Some(OidcConfig {
            issuer,
            client_id: raw.client_id.trim().to_owned(),
            client_secret,
            scopes,
            user_claim: raw.user_claim.trim().to_owned(),
            roles_claim,
            ca,
            allow_http_loopback: raw.allow_http_loopback,
            logout_at_idp: raw.logout_at_idp,
        })
    }

    /// `routes[i].login`: `"oidc"` (with `[oidc]` and `session = true`) or absent.
    pub(super) fn route_login(&mut self, prefix: &str, route: &RawRoute, oidc_on: bool) -> bool {
        let Some(login) = &route.login else {
            return false;
        };
        let key = format!("{prefix}.login");
        if login != "oidc" {
            self.error(
                &key,
                format!("\"{login}\" is not a login kind; the only one is \"oidc\""),
            );
            return false;
        }
        if !oidc_on {
            self.error(
                &key,
                "login = \"oidc\" needs an [oidc] table (issuer, client_id); add one or \
                 remove this key",
            );
        }
        if !route.session {
            self.error(
                &key,
                "login = \"oidc\" needs session = true (the login lives in the session)",
            );
        }
        if route.login_url.is_some() {
            self.error(
                &key,
                "a route has either login = \"oidc\" or login_url, not both; remove one",
            );
        }
        true
    }

    /// `routes[i].allow_users`, `allow_domains`, `allow_roles`.
    pub(super) fn route_allow(&mut self, prefix: &str, route: &RawRoute) -> Allow {
        let lists = [
            ("allow_users", &route.allow_users),
            ("allow_domains", &route.allow_domains),
            ("allow_roles", &route.allow_roles),
        ];
        for (name, list) in lists {
            for (i, item) in list.iter().enumerate() {
                if item.trim().is_empty() || item.contains(',') {
                    self.error(
                        &format!("{prefix}.{name}[{i}]"),
                        format!("\"{item}\" must be a non-empty name without commas"),
                    );
                }
            }
        }
        let allow = Allow {
            users: route.allow_users.clone(),
            domains: route
                .allow_domains
                .iter()
                .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                .collect(),
            roles: route.allow_roles.clone(),
        };
        if allow.any() && !route.session {
            self.error(
                &format!("{prefix}.session"),
                "allow_* lists need session = true (there is no user without a session)",
            );
        }
        allow
    }
}

/// The issuer must be an absolute https URL (http only on loopback, when allowed),
/// without query or fragment.
fn issuer_ok(issuer: &str, http_loopback: bool) -> Result<(), String> {
    if issuer.is_empty() {
        return Err("the provider's issuer URL is required, e.g. \
                    issuer = \"https://idp.example.com/realms/main\""
            .into());
    }
    let uri: http::Uri = issuer
        .parse()
        .map_err(|_| format!("\"{issuer}\" is not a URL"))?;
    let host = uri.host().unwrap_or_default();
    if issuer.contains(['?', '#']) {
        return Err(format!("\"{issuer}\" must not have a query or fragment"));
    }
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if http_loopback && is_loopback(host) => Ok(()),
        Some("http") if is_loopback(host) => Err(format!(
            "\"{issuer}\" is http://; set allow_http_loopback = true (tests only) or use https"
        )),
        _ => Err(format!(
            "\"{issuer}\" must be an https:// URL (the tokens' trust starts at its TLS)"
        )),
    }
}

/// `localhost`, `127.0.0.0/8`, `[::1]`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The certificates of a PEM bundle (at least one).
fn pem_roots(path: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("\"{}\" is not a PEM bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "\"{}\" holds no CERTIFICATE; give the PEM of the CA that signed the provider's \
             certificate",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_rules() {
        assert!(issuer_ok("https://idp.example.com/realms/x", false).is_ok());
        assert!(issuer_ok("http://idp.example.com", true).is_err());
        assert!(issuer_ok("http://127.0.0.1:9000", false).is_err());
        assert!(issuer_ok("http://127.0.0.1:9000", true).is_ok());
        assert!(issuer_ok("http://localhost:9000", true).is_ok());
        assert!(issuer_ok("https://idp.example.com/?x=1", false).is_err());
        assert!(issuer_ok("", false).is_err());
        assert!(issuer_ok("idp.example.com", false).is_err());
    }

    #[test]
    fn allow_lists() {
        let allow = Allow {
            users: vec!["bob".into()],
            domains: vec!["example.com".into()],
            roles: vec!["admin".into()],
        };
        assert!(allow.permits("bob", None));
        assert!(allow.permits("ann@Example.com", None));
        assert!(!allow.permits("ann@example.com.evil", None));
        assert!(allow.permits("eve", Some("user, admin")));
        assert!(!allow.permits("eve", Some("user,administrator")));
        assert!(Allow::default().permits("anyone", None));
    }
}
