//! Validation of the operations settings: `listen.admin_token` (required when the admin
//! listener is not on loopback: it can end every session and reload the config) and
//! `[log] format`.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No IO.

use std::net::SocketAddr;

use super::super::raw::RawLogFormat;
use super::super::{ConfigError, LogFormat, Secret};
use super::Validator;

/// Shortest admin token accepted, in bytes.
const MIN_TOKEN_BYTES: usize = 16;

impl Validator<'_> {
    /// `listen.admin_token`: `None` when empty. Refused: a short token, or none while
    /// `admin` listens beyond loopback.
    pub(super) fn admin_token(&mut self, admin: Option<SocketAddr>, token: &str) -> Option<Secret> {
        let token = token.trim();
        if token.is_empty() {
            if let Some(addr) = admin.filter(|a| !a.ip().is_loopback()) {
                // The key is missing: point at the `admin` line that needs it.
                let position = self.locator.position("listen.admin");
                let error = ConfigError::new(
                    self.file,
                    "listen.admin_token",
                    format!(
                        "required: listen.admin = \"{addr}\" is not a loopback address, and the \
                         admin paths can end sessions and reload the config; set \
                         admin_token = \"${{CLOAKROOM_ADMIN_TOKEN}}\" (at least \
                         {MIN_TOKEN_BYTES} random characters), or listen on 127.0.0.1"
                    ),
                )
                .at(position);
                self.errors.push(error);
            }
            return None;
        }
        if token.len() < MIN_TOKEN_BYTES {
            self.error(
                "listen.admin_token",
                format!(
                    "too short ({} bytes); use at least {MIN_TOKEN_BYTES} random characters, \
                     e.g. from `openssl rand -hex 32`",
                    token.len()
                ),
            );
            return None;
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.error(
                "listen.admin_token",
                "must be visible ASCII characters (it travels in an Authorization header)",
            );
            return None;
        }
        Some(Secret(token.as_bytes().to_vec()))
    }
}

/// `[log] format`.
pub(super) fn log_format(raw: RawLogFormat) -> LogFormat {
    match raw {
        RawLogFormat::Text => LogFormat::Text,
        RawLogFormat::Json => LogFormat::Json,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, LogFormat};

    fn parse(listen: &str, log: &str) -> Result<Config, String> {
        let text = format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n{listen}\n[tls]\ncert = \"Cargo.toml\"\nkey = \"Cargo.toml\"\n\
             [upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n[[routes]]\nupstream = \"app\"\n{log}\n"
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        Config::from_str_with_env(&path, &text, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let err = parse("admin = \"0.0.0.0:9901\"", "").unwrap_err();
        assert!(err.contains("listen.admin_token"), "{err}");
        assert!(err.contains("proxy.toml:3:"), "names the line: {err}");
        let ok = parse(
            "admin = \"0.0.0.0:9901\"\nadmin_token = \"0123456789abcdef0123\"",
            "",
        )
        .unwrap();
        assert_eq!(ok.listen.admin_token.unwrap().0, b"0123456789abcdef0123");
        assert!(parse("admin = \"127.0.0.1:9901\"", "").is_ok());
        assert!(parse("admin = \"[::1]:9901\"", "").is_ok());
        let err = parse("admin = \"127.0.0.1:9901\"\nadmin_token = \"short\"", "").unwrap_err();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn log_format_is_text_or_json() {
        let c = parse("", "").unwrap();
        assert_eq!(c.log.format, LogFormat::Text);
        let c = parse("", "[log]\nformat = \"json\"").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(parse("", "[log]\nformat = \"xml\"").is_err());
    }
}
