//! Turns the text of `proxy.toml` into a validated [`Config`].
//!
//! Stages: TOML syntax (positions from `toml_edit`), `${ENV}` interpolation, serde into
//! the `Raw*` mirror (first structural error only: serde stops there), then the
//! conversions and cross-field rules below, which collect every error they find.
//! Each message names the bad value and says how to fix it.
//!
//! This file holds the entry points, the `Validator` (errors and warnings keyed by their
//! TOML path, so each names file:line:col) and the value conversions every section uses;
//! each section has its file in `validate/`: `listen`, `tls`, `limits` (with
//! `[timeouts]`), `session` (with `redis`, `postgres`, `memcached`), `headers` (`[inject]`,
//! `[control]`), `security`, `routing` (`[upstreams]`, `[[routes]]`), `admin` (the admin
//! token, `[log]`); `checks` holds the pure value checks.
//!
//! Side effects: upstream `host:port`s are resolved with the system resolver, and
//! certificate/key files are checked to exist and be readable (not parsed: that is the
//! TLS module's job). Nothing else touches the outside world.

mod acme;
mod admin;
mod checks;
mod headers;
mod limits;
mod listen;
mod memcached;
mod oidc;
mod postgres;
mod redis;
mod routing;
mod security;
mod session;
#[cfg(test)]
mod tests;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::interpolate::interpolate;
use super::locate::{key_segment, serde_error, syntax_error, Locator, SourceText};
use super::raw::RawConfig;
use super::{Config, ConfigError, ConfigErrors, LogConfig};
use checks::parse_duration;

/// Reads `path` and parses it with the process environment.
pub(super) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            "",
            format!("cannot read the configuration file: {e}; pass its path with --config PATH"),
        )
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and validates `text` as the file `path`.
pub(super) fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let locator = Locator::parse(text).map_err(|e| syntax_error(path, text, &e))?;
    let interpolated = interpolate(text, env).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError::new(path, &e.key, e.message).at(locator.position(&e.key)))
                .collect(),
        )
    })?;
    let parsed = interpolated.as_deref().unwrap_or(text);
    let raw: RawConfig =
        toml::from_str(parsed).map_err(|e| serde_error(path, &locator, parsed, &e))?;

    let base = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut v = Validator {
        file: path,
        locator: &locator,
        base,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = v.config(raw, text);
    match config {
        Some(mut config) if v.errors.is_empty() => {
            config.warnings = v.warnings;
            Ok(config)
        }
        _ => {
            if v.errors.is_empty() {
                v.error("", "the configuration is invalid");
            }
            Err(ConfigErrors(v.errors))
        }
    }
}

/// Collects errors while converting; every `Option` it returns is `None` only after
/// an error was recorded.
struct Validator<'a> {
    file: &'a Path,
    locator: &'a Locator<'a>,
    /// Folder that relative paths resolve against.
    base: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        let position = self.locator.position(key);
        self.errors
            .push(ConfigError::new(self.file, key, message).at(position));
    }

    /// Records a setting that is legal but probably not meant.
    fn warn(&mut self, key: &str, message: impl Into<String>) {
        let position = self.locator.position(key);
        self.warnings
            .push(ConfigError::new(self.file, key, message).at(position));
    }

    /// Records `Err` under `key`.
    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|message| self.error(key, message)).ok()
    }

    fn config(&mut self, mut raw: RawConfig, text: &str) -> Option<Config> {
        let security = self.security(&raw);
        let raw_acme = raw.tls.as_mut().and_then(|tls| tls.acme.take());
        let listen = self.listen(raw.listen);
        let mut tls = self.tls(raw.tls, raw_acme.is_some());
        let timeouts = self.timeouts(&raw.timeouts);
        let limits = self.limits(&raw.limits);
        let session = self.session(raw.session);
        let inject = self.inject(&raw.inject);
        let control = self.control(&raw.control);
        if let (Some(inject), Some(control)) = (&inject, &control) {
            self.unique_headers(inject, control);
        }
        let upstreams = self.upstreams(raw.upstreams.0);
        let oidc = raw.oidc.map(|o| self.oidc(o));
        let oidc_failed = matches!(oidc, Some(None));
        let routes = self.routes(raw.routes, &upstreams, oidc.is_some());
        if let Some(raw_acme) = raw_acme {
            let acme = self.acme(raw_acme, listen.as_ref(), routes.as_deref());
            if let Some(tls) = &mut tls {
                tls.acme = acme;
            }
        }
        Some(Config {
            source: self.file.to_path_buf(),
            text: SourceText::new(text),
            listen: listen?,
            tls: tls?,
            timeouts: timeouts?,
            limits: limits?,
            session: session?,
            inject: inject?,
            control: control?,
            log: LogConfig {
                access: raw.log.access,
                format: admin::log_format(raw.log.format),
            },
            upstreams: upstreams
                .into_iter()
                .map(|(_, upstream)| upstream)
                .collect::<Option<Vec<_>>>()?,
            routes: routes?,
            warnings: Vec::new(),
            security: security?,
            oidc: if oidc_failed {
                return None;
            } else {
                oidc.flatten()
            },
        })
    }

    // ---- values -------------------------------------------------------------------

    /// A humantime duration; zero is rejected because every duration here is a limit.
    fn duration(&mut self, key: &str, value: &str) -> Option<Duration> {
        self.check(key, parse_duration(value))
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        let result = value.trim().parse::<SocketAddr>().map_err(|_| {
            format!(
                "\"{value}\" is not an IP address with a port; write it like \"0.0.0.0:8443\" \
                 or \"[::]:8443\" (host names are not allowed here)"
            )
        });
        self.check(key, result)
    }

    /// A certificate or key file: resolved against the config folder, must be readable.
    fn readable_file(&mut self, key: &str, value: &str) -> Option<PathBuf> {
        let joined = self.base.join(value);
        let path = std::path::absolute(&joined).unwrap_or(joined);
        let result = match std::fs::metadata(&path) {
            Err(e) => Err(format!(
                "cannot read \"{}\": {e}; relative paths start at the configuration file's folder",
                path.display()
            )),
            Ok(meta) if !meta.is_file() => Err(format!(
                "\"{}\" is not a file; give the path of a PEM file",
                path.display()
            )),
            Ok(_) => std::fs::File::open(&path)
                .map(drop)
                .map_err(|e| format!("cannot read \"{}\": {e}", path.display())),
        };
        self.check(key, result).map(|()| path)
    }
}
