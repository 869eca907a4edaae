//! Validation of `[session.postgres]`: the connection URL (parsed as the driver will
//! parse it, `sslrootcert` taken out and resolved against the config folder), the
//! table name (a plain SQL identifier, since it is written into statements), the pool
//! size and the per-operation timeout.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. No IO. Error
//! messages never repeat the URL: it may hold a password.

use std::time::Duration;

use super::super::raw::RawPostgres;
use super::super::{PostgresConfig, PostgresUrl};
use super::Validator;
use crate::session::store::postgres::table_name;

impl Validator<'_> {
    /// Always returns the settings so the other session rules still run; a bad value
    /// is recorded as an error, so the config as a whole is rejected.
    pub(super) fn postgres(&mut self, raw: &RawPostgres) -> PostgresConfig {
        let (url, root_cert) = match split_root_cert(raw.url.trim()) {
            Ok((url, root_cert)) => (url, root_cert),
            Err(message) => {
                self.error("session.postgres.url", message);
                (String::new(), None)
            }
        };
        if !url.is_empty() {
            let parsed = url.parse::<tokio_postgres::Config>();
            if let Err(error) = parsed {
                self.error(
                    "session.postgres.url",
                    format!(
                        "not a PostgreSQL connection URL ({error}); write it like \
                         \"postgres://cloakroom:${{PGPASSWORD}}@db.example.com:5432/cloakroom\""
                    ),
                );
            }
        }
        let table = raw.table.trim();
        if let Err(message) = table_name(table) {
            self.error("session.postgres.table", message);
        }
        let pool = match usize::try_from(raw.pool) {
            Ok(n @ 1..=1024) => n,
            _ => {
                self.error(
                    "session.postgres.pool",
                    "must be between 1 and 1024 connections",
                );
                1
            }
        };
        PostgresConfig {
            url: PostgresUrl(url),
            root_cert: root_cert.map(|path| self.base.join(path)),
            table: table.to_owned(),
            pool,
            timeout: self
                .duration("session.postgres.timeout", &raw.timeout)
                .unwrap_or(Duration::from_millis(500)),
        }
    }
}

/// The URL without its `sslrootcert` parameter (libpq's name for the CA file, which
/// the driver does not know), and that parameter's value.
fn split_root_cert(url: &str) -> Result<(String, Option<String>), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://, like \
             \"postgres://cloakroom:${PGPASSWORD}@127.0.0.1:5432/cloakroom\""
            .to_owned());
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", value)) if !value.is_empty() => {
                root_cert = Some(value.to_owned());
            }
            Some(("sslrootcert", _)) => return Err("sslrootcert needs a file name".to_owned()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, root_cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        let (url, root) =
            split_root_cert("postgres://u:p@h/db?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(url, "postgres://u:p@h/db?sslmode=require");
        assert_eq!(root.as_deref(), Some("ca.pem"));
        let (url, root) = split_root_cert("postgresql://h/db?sslrootcert=ca.pem").unwrap();
        assert_eq!(url, "postgresql://h/db");
        assert_eq!(root.as_deref(), Some("ca.pem"));
        assert!(split_root_cert("mysql://h/db").is_err());
    }
}
