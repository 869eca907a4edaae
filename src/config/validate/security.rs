//! Validation of the security keys (`listen.drop_underscore_headers`, `limits.per_ip`,
//! `limits.per_session`, `limits.new_sessions_per_ip`, `inject.assertion*`,
//! `inject.anomaly`, `session.anomaly`, `tls.hsts`) into a [`SecurityConfig`].
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. Reads the assertion
//! key files (like the certificate checks do); no other IO.

use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderValue;
use rustls::pki_types::pem::{PemObject, SectionKind};

use super::super::raw::{RawAnomaly, RawConfig};
use super::super::{AnomalyMode, AssertionConfig, Rate, RateLimitsConfig, Secret, SecurityConfig};
use super::Validator;

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Shortest and longest `assertion_ttl`: under a few seconds clock skew between the
/// proxy and the app rejects tokens; over a day a leaked token lives too long.
const MIN_TTL: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

impl Validator<'_> {
    /// Every security key; `None` only after an error was recorded.
    pub(super) fn security(&mut self, raw: &RawConfig) -> Option<SecurityConfig> {
        let per_ip = self.rate("limits.per_ip", &raw.limits.per_ip);
        let per_session = self.rate("limits.per_session", &raw.limits.per_session);
        let new_sessions = self.rate(
            "limits.new_sessions_per_ip",
            &raw.limits.new_sessions_per_ip,
        );
        let assertion = self.assertion(raw);
        let anomaly_header = if raw.inject.anomaly.is_empty() {
            Some(None)
        } else {
            self.header("inject.anomaly", &raw.inject.anomaly, "X-Session-Anomaly")
                .map(Some)
        };
        if let Some(Some(name)) = &anomaly_header {
            let others = [
                ("inject.id", &raw.inject.id),
                ("inject.user", &raw.inject.user),
                ("inject.roles", &raw.inject.roles),
                ("inject.data", &raw.inject.data),
                ("inject.assertion", &raw.inject.assertion),
                ("control.set_user", &raw.control.set_user),
                ("control.set_roles", &raw.control.set_roles),
                ("control.set_data", &raw.control.set_data),
                ("control.logout", &raw.control.logout),
            ];
            if let Some((other, _)) = others
                .iter()
                .find(|(_, value)| value.eq_ignore_ascii_case(name.as_str()))
            {
                self.error(
                    "inject.anomaly",
                    format!("\"{name}\" is also {other}; each header name may have one use"),
                );
            }
        }
        let anomaly = match raw.session.anomaly {
            RawAnomaly::Off => AnomalyMode::Off,
            RawAnomaly::Flag => AnomalyMode::Flag,
            RawAnomaly::End => AnomalyMode::End,
        };
        let hsts = self.hsts(raw.tls.as_ref().map_or("", |t| t.hsts.as_str()));
        Some(SecurityConfig {
            drop_underscore_headers: raw.listen.drop_underscore_headers,
            rates: RateLimitsConfig {
                per_ip: per_ip?,
                per_session: per_session?,
                new_sessions_per_ip: new_sessions?,
            },
            assertion: assertion?,
            anomaly,
            anomaly_header: anomaly_header?,
            hsts: hsts?,
        })
    }

    /// `"off"`, `"N/s"` or `"N/m"`. Outer `None`: invalid (recorded).
    fn rate(&mut self, key: &str, value: &str) -> Option<Option<Rate>> {
        self.check(key, parse_rate(value))
    }

    /// `tls.hsts`: a `Strict-Transport-Security` value that starts with `max-age=N`.
    fn hsts(&mut self, value: &str) -> Option<Option<HeaderValue>> {
        let value = value.trim();
        if value.is_empty() {
            return Some(None);
        }
        let max_age = value
            .split(';')
            .next()
            .and_then(|first| first.trim().strip_prefix("max-age="))
            .and_then(|n| n.trim().parse::<u64>().ok());
        let result = match (max_age, HeaderValue::from_str(value)) {
            (Some(_), Ok(header)) => Ok(Some(header)),
            _ => Err(format!(
                "\"{value}\" is not a Strict-Transport-Security value; write it like \
                 \"max-age=31536000; includeSubDomains\" (or \"\" for none)"
            )),
        };
        self.check("tls.hsts", result)
    }

    /// `inject.assertion` with its key, previous keys and ttl. Outer `None`: invalid.
    fn assertion(&mut self, raw: &RawConfig) -> Option<Option<AssertionConfig>> {
        let inject = &raw.inject;
        let ttl = self.duration("inject.assertion_ttl", &inject.assertion_ttl);
        if let Some(ttl) = ttl {
            if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                self.error(
                    "inject.assertion_ttl",
                    format!(
                        "{} is out of range; use 5s to 24h (60s is a good default)",
                        humantime::format_duration(ttl)
                    ),
                );
            }
        }
        let key = if inject.assertion_key.trim().is_empty() {
            Some(None)
        } else {
            let text = self.pem_text("inject.assertion_key", &inject.assertion_key)?;
            self.check(
                "inject.assertion_key",
                private_key(&text).map(|(der, _)| Some(Secret(der))),
            )
        };
        let mut previous = Vec::new();
        for (i, value) in inject.assertion_previous_keys.iter().enumerate() {
            let key_path = format!("inject.assertion_previous_keys[{i}]");
            let Some(text) = self.pem_text(&key_path, value) else {
                continue;
            };
            if let Some(public) = self.check(&key_path, public_key(&text)) {
                previous.push(public);
            }
        }
        if inject.assertion.is_empty() {
            return Some(None);
        }
        let header = self.header("inject.assertion", &inject.assertion, "X-Session-Assertion")?;
        (previous.len() == inject.assertion_previous_keys.len()).then_some(())?;
        Some(Some(AssertionConfig {
            header,
            key: key?,
            previous_public_keys: previous,
            ttl: ttl?,
        }))
    }

    /// PEM text given inline, or read from a file relative to the config's folder.
    fn pem_text(&mut self, key: &str, value: &str) -> Option<String> {
        if value.trim_start().starts_with("-----BEGIN") {
            return Some(value.to_owned());
        }
        let path = self.base.join(value.trim());
        let result = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read \"{}\": {e}; give an Ed25519 PKCS#8 PEM key (text or a path; \
                 `openssl genpkey -algorithm ed25519` makes one)",
                path.display()
            )
        });
        self.check(key, result)
    }
}

/// `"off"`, `"N/s"` or `"N/m"` with N ≥ 1.
pub(in crate::config) fn parse_rate(value: &str) -> Result<Option<Rate>, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let help =
        || format!("\"{value}\" is not a rate; write it like \"100/s\" or \"6000/m\", or \"off\"");
    let (count, unit) = value.split_once('/').ok_or_else(help)?;
    let count: u32 = count.trim().parse().map_err(|_| help())?;
    let count = NonZeroU32::new(count).ok_or_else(|| {
        format!("\"{value}\" allows nothing; use at least \"1/m\", or \"off\" for no limit")
    })?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        _ => return Err(help()),
    };
    Ok(Some(Rate { count, per }))
}

/// The PKCS#8 DER and public key of an Ed25519 private key in PEM.
fn private_key(text: &str) -> Result<(Vec<u8>, [u8; 32]), String> {
    let der =
        rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).map_err(|_| {
            "no \"PRIVATE KEY\" (PKCS#8) PEM block found; make one with \
             `openssl genpkey -algorithm ed25519`"
                .to_owned()
        })?;
    let der = der.secret_pkcs8_der().to_vec();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| {
        "the key is not an Ed25519 key; assertions are signed with Ed25519 (EdDSA)".to_owned()
    })?;
    use ring::signature::KeyPair as _;
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| "the key's public half is not 32 bytes".to_owned())?;
    Ok((der, public))
}

/// The 32-byte public key of an Ed25519 key given as a private key or a
/// `PUBLIC KEY` (SPKI) PEM.
fn public_key(text: &str) -> Result<[u8; 32], String> {
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
        let Ok((kind, der)) = item else { break };
        if kind == SectionKind::PublicKey {
            return der
                .strip_prefix(&ED25519_SPKI_PREFIX[..])
                .and_then(|key| <[u8; 32]>::try_from(key).ok())
                .ok_or_else(|| "the PUBLIC KEY is not an Ed25519 key".to_owned());
        }
    }
    private_key(text).map(|(_, public)| public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        let rate = |n, s| {
            Some(Rate {
                count: NonZeroU32::new(n).unwrap(),
                per: Duration::from_secs(s),
            })
        };
        assert_eq!(parse_rate("off"), Ok(None));
        assert_eq!(parse_rate("100/s"), Ok(rate(100, 1)));
        assert_eq!(parse_rate(" 6000 / m "), Ok(rate(6000, 60)));
        for bad in ["0/s", "10/h", "ten/s", "10", "/s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
