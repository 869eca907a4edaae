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
    use crate::config::{Config, ConfigError, StoreKind};

    /// Parses a config with `[tls]` files present, one route, and `session`.
    fn parse(session: &str) -> Result<Config, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(name), "PEM").unwrap();
        }
        let text = format!(
            "[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n[upstreams.app]\n\
             servers = [\"127.0.0.1:9001\"]\n\n[[routes]]\nupstream = \"app\"\n\n{session}\n"
        );
        let env = |name: &str| (name == "PGPASSWORD").then(|| "s3cret-pw".to_owned());
        Config::from_str_with_env(&dir.path().join("proxy.toml"), &text, &env).map_err(|e| e.0)
    }

    const SESSION: &str = "[session]\nstore = \"postgres\"\n\
                           secret = \"0123456789abcdef0123456789abcdef-pg\"\n";

    #[test]
    fn postgres_store_gets_defaults_and_expands_the_password() {
        let config = parse(&format!(
            "{SESSION}[session.postgres]\n\
             url = \"postgres://app:${{PGPASSWORD}}@db:5432/sessions?sslmode=require&sslrootcert=ca.pem\"\n"
        ))
        .unwrap();
        let StoreKind::Postgres(pg) = &config.session.store else {
            panic!("not postgres: {:?}", config.session.store);
        };
        assert_eq!(
            pg.url.0,
            "postgres://app:s3cret-pw@db:5432/sessions?sslmode=require"
        );
        assert!(pg.root_cert.as_ref().unwrap().ends_with("ca.pem"));
        assert_eq!(pg.table, "cloakroom_sessions");
        assert_eq!(pg.pool, 16);
        assert_eq!(pg.timeout, Duration::from_millis(500));
        assert_eq!(
            config.session.store_timeout(),
            Duration::from_millis(600),
            "the request path's bound is a backstop past the store's own"
        );
        // Neither the config's Debug nor an error shows the password.
        assert!(!format!("{config:?}").contains("s3cret-pw"));
    }

    #[test]
    fn bad_postgres_settings_name_their_key_without_the_url() {
        let errors = parse(&format!(
            "{SESSION}[session.postgres]\nurl = \"postgres://u:pw-in-url@h/db?sslmode=verify\"\n\
             table = \"Sessions; drop\"\npool = 0\ntimeout = \"soon\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        for key in [
            "session.postgres.url",
            "session.postgres.table",
            "session.postgres.pool",
            "session.postgres.timeout",
        ] {
            assert!(keys.contains(&key), "no error for {key}: {errors:?}");
        }
        for error in &errors {
            assert!(!error.to_string().contains("pw-in-url"), "{error}");
        }
        let unknown = parse(&format!("{SESSION}[session.postgres]\nhost = \"db\"\n"));
        assert!(unknown.is_err(), "unknown keys are refused");
    }

    #[test]
    fn postgres_store_needs_a_shared_secret() {
        let errors = parse("[session]\nstore = \"postgres\"\n").unwrap_err();
        assert!(
            errors.iter().any(|e| e.key == "session.secret"),
            "{errors:?}"
        );
    }

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
