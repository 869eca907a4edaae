//! Turns the text of `proxy.toml` into a validated [`Config`].
//!
//! Stages: TOML syntax (positions from `toml_edit`), `${ENV}` interpolation, serde into
//! the `Raw*` mirror (first structural error only: serde stops there), then the
//! conversions and cross-field rules below, which collect every error they find.
//! Each message names the bad value and says how to fix it.
//!
//! Side effects: upstream `host:port`s are resolved with the system resolver, and
//! certificate/key files are checked to exist and be readable (not parsed: that is the
//! TLS module's job). Nothing else touches the outside world.

mod admin;
mod checks;
mod postgres;
mod redis;
mod routing;
mod security;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::interpolate::interpolate;
use super::locate::{key_segment, serde_error, syntax_error, Locator, SourceText};
use super::raw::{RawConfig, RawControl, RawInject, RawLimits, RawListen, RawTimeouts, RawTls};
use super::{
    CertPaths, Config, ConfigError, ConfigErrors, ControlConfig, InjectConfig, LimitsConfig,
    ListenConfig, LogConfig, SniConfig, TimeoutsConfig, TlsConfig,
};
use checks::{header_name, parse_duration, sni_hostname};

/// Smallest `max_header_bytes`: hyper's HTTP/1 read buffer cannot be set lower.
const MIN_HEADER_BYTES: u64 = 8192;

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

    fn config(&mut self, raw: RawConfig, text: &str) -> Option<Config> {
        let security = self.security(&raw);
        let listen = self.listen(raw.listen);
        let tls = self.tls(raw.tls);
        let timeouts = self.timeouts(&raw.timeouts);
        let limits = self.limits(&raw.limits);
        let session = self.session(raw.session);
        let inject = self.inject(&raw.inject);
        let control = self.control(&raw.control);
        if let (Some(inject), Some(control)) = (&inject, &control) {
            self.unique_headers(inject, control);
        }
        let upstreams = self.upstreams(raw.upstreams.0);
        let routes = self.routes(raw.routes, &upstreams);
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

    // ---- sections -----------------------------------------------------------------

    fn listen(&mut self, raw: RawListen) -> Option<ListenConfig> {
        let https = self.socket_addr("listen.https", &raw.https);
        // Outer `None`: invalid (reported); inner `None`: not configured.
        let http = match &raw.http {
            Some(value) => self.socket_addr("listen.http", value).map(Some),
            None => Some(None),
        };
        let admin = match &raw.admin {
            Some(value) => self.socket_addr("listen.admin", value).map(Some),
            None => Some(None),
        };
        let mut trusted_proxies = Vec::new();
        for (i, value) in raw.trusted_proxies.iter().enumerate() {
            let result = value.trim().parse::<IpAddr>().map_err(|_| {
                format!("\"{value}\" is not an IP address; list single addresses like \"10.0.0.5\"")
            });
            if let Some(ip) = self.check(&format!("listen.trusted_proxies[{i}]"), result) {
                trusted_proxies.push(ip);
            }
        }
        let (https, http, admin) = (https?, http?, admin?);
        for (key, addr) in [("listen.http", http), ("listen.admin", admin)] {
            if addr == Some(https) {
                self.error(
                    key,
                    format!("{https} is already listen.https; use another port"),
                );
            }
        }
        if http.is_some() && http == admin {
            self.error(
                "listen.admin",
                "same address as listen.http; use another port",
            );
        }
        let workers = match usize::try_from(raw.workers) {
            Ok(n) if n <= 1024 => n,
            _ => {
                self.error(
                    "listen.workers",
                    format!(
                        "{} is not a thread count; use 0 (one per core) to 1024",
                        raw.workers
                    ),
                );
                0
            }
        };
        let admin_token = self.admin_token(admin, &raw.admin_token);
        (trusted_proxies.len() == raw.trusted_proxies.len()).then_some(ListenConfig {
            https,
            http,
            admin,
            trusted_proxies,
            workers,
            admin_token,
        })
    }

    fn tls(&mut self, raw: Option<RawTls>) -> Option<TlsConfig> {
        let Some(raw) = raw else {
            self.error(
                "tls",
                "missing; add a [tls] section with cert = \"certs/cert.pem\" and key = \"certs/key.pem\"",
            );
            return None;
        };
        let cert = self.readable_file("tls.cert", &raw.cert);
        let key = self.readable_file("tls.key", &raw.key);
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
        let default = CertPaths {
            cert: cert?,
            key: key?,
        };
        ok.then_some(TlsConfig { default, sni })
    }

    fn timeouts(&mut self, raw: &RawTimeouts) -> Option<TimeoutsConfig> {
        let connect = self.duration("timeouts.connect", &raw.connect);
        let header_read = self.duration("timeouts.header_read", &raw.header_read);
        let tls_handshake = self.duration("timeouts.tls_handshake", &raw.tls_handshake);
        let upstream = self.duration("timeouts.upstream", &raw.upstream);
        let client_idle = self.duration("timeouts.client_idle", &raw.client_idle);
        let upstream_idle = self.duration("timeouts.upstream_idle", &raw.upstream_idle);
        let shutdown_grace = self.duration("timeouts.shutdown_grace", &raw.shutdown_grace);
        let tunnel_idle = self.duration("timeouts.tunnel_idle", &raw.tunnel_idle);
        Some(TimeoutsConfig {
            connect: connect?,
            header_read: header_read?,
            tls_handshake: tls_handshake?,
            upstream: upstream?,
            client_idle: client_idle?,
            upstream_idle: upstream_idle?,
            shutdown_grace: shutdown_grace?,
            tunnel_idle: tunnel_idle?,
        })
    }

    fn limits(&mut self, raw: &RawLimits) -> Option<LimitsConfig> {
        let header = if raw.max_header_bytes < MIN_HEADER_BYTES {
            Err(format!(
                "{} is too small: hyper's read buffer is at least {MIN_HEADER_BYTES} bytes, \
                 so set max_header_bytes to {MIN_HEADER_BYTES} or more",
                raw.max_header_bytes
            ))
        } else {
            usize::try_from(raw.max_header_bytes).map_err(|_| "too large".to_owned())
        };
        let max_header_bytes = self.check("limits.max_header_bytes", header);
        let connections = match usize::try_from(raw.max_connections) {
            Ok(0) => Err("must be at least 1; it bounds concurrent client connections".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err("too large".to_owned()),
        };
        let max_connections = self.check("limits.max_connections", connections);
        Some(LimitsConfig {
            max_header_bytes: max_header_bytes?,
            max_body_bytes: raw.max_body_bytes,
            max_connections: max_connections?,
        })
    }

    fn header(&mut self, key: &str, value: &str, example: &str) -> Option<HeaderName> {
        self.check(key, header_name(value, example))
    }

    fn inject(&mut self, raw: &RawInject) -> Option<InjectConfig> {
        let mut field = |key: &str, value: &str, example: &str| -> Option<Option<HeaderName>> {
            if value.is_empty() {
                Some(None)
            } else {
                self.header(key, value, example).map(Some)
            }
        };
        let id = field("inject.id", &raw.id, "X-Session-Id");
        let user = field("inject.user", &raw.user, "X-Session-User");
        let roles = field("inject.roles", &raw.roles, "X-Session-Roles");
        let data = field("inject.data", &raw.data, "X-Session-Data");
        let assertion = field("inject.assertion", &raw.assertion, "X-Session-Assertion");
        Some(InjectConfig {
            id: id?,
            user: user?,
            roles: roles?,
            data: data?,
            assertion: assertion?,
        })
    }

    fn control(&mut self, raw: &RawControl) -> Option<ControlConfig> {
        let mut field = |key: &str, value: &str, example: &str| {
            if value.is_empty() {
                self.error(
                    key,
                    format!("must not be empty: control headers cannot be turned off; use e.g. \"{example}\""),
                );
                None
            } else {
                self.header(key, value, example)
            }
        };
        let set_user = field("control.set_user", &raw.set_user, "X-Session-Set-User");
        let set_roles = field("control.set_roles", &raw.set_roles, "X-Session-Set-Roles");
        let set_data = field("control.set_data", &raw.set_data, "X-Session-Set-Data");
        let logout = field("control.logout", &raw.logout, "X-Session-Logout");
        Some(ControlConfig {
            set_user: set_user?,
            set_roles: set_roles?,
            set_data: set_data?,
            logout: logout?,
        })
    }

    /// No header name may serve two purposes.
    fn unique_headers(&mut self, inject: &InjectConfig, control: &ControlConfig) {
        let named: [(&str, Option<&HeaderName>); 9] = [
            ("inject.id", inject.id.as_ref()),
            ("inject.user", inject.user.as_ref()),
            ("inject.roles", inject.roles.as_ref()),
            ("inject.data", inject.data.as_ref()),
            ("inject.assertion", inject.assertion.as_ref()),
            ("control.set_user", Some(&control.set_user)),
            ("control.set_roles", Some(&control.set_roles)),
            ("control.set_data", Some(&control.set_data)),
            ("control.logout", Some(&control.logout)),
        ];
        for (i, (key, name)) in named.iter().enumerate() {
            let Some(name) = name else { continue };
            let earlier = named[..i].iter().find(|(_, other)| *other == Some(*name));
            if let Some((earlier_key, _)) = earlier {
                // Point at the one the operator wrote: a default clashing with a written
                // name is fixed by changing the written one.
                let (at, other) = if self.locator.exists(key) || !self.locator.exists(earlier_key) {
                    (*key, *earlier_key)
                } else {
                    (*earlier_key, *key)
                };
                self.error(
                    at,
                    format!("\"{name}\" is also {other}; each header name may have one use"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::super::{
        Affinity, Balance, Config, ConfigError, ConfigErrors, HostPattern, OnPinnedDown, SameSite,
        StoreKind,
    };

    const MINIMAL: &str = r#"[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"

[upstreams.app]
servers = ["127.0.0.1:9001"]

[[routes]]
upstream = "app"
"#;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-long-enough";

    fn env(name: &str) -> Option<String> {
        match name {
            "CLOAKROOM_SECRET" => Some(SECRET.to_owned()),
            "APP_HOST" => Some("127.0.0.1".to_owned()),
            "STORE" => Some("cookie".to_owned()),
            "BAD_STORE" => Some("cookei".to_owned()),
            _ => None,
        }
    }

    /// A temporary folder with `certs/{cert,key,app}.pem` and a `proxy.toml` path.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("certs")).unwrap();
            for name in ["cert.pem", "key.pem", "app.pem", "app.key"] {
                std::fs::write(dir.path().join("certs").join(name), "PEM").unwrap();
            }
            Fixture { dir }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("proxy.toml")
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigErrors> {
            Config::from_str_with_env(&self.path(), text, &env)
        }

        fn ok(&self, text: &str) -> Config {
            match self.parse(text) {
                Ok(config) => config,
                Err(errors) => panic!("expected a valid config, got:\n{errors}"),
            }
        }

        fn errors(&self, text: &str) -> Vec<ConfigError> {
            match self.parse(text) {
                Ok(_) => panic!("expected errors for:\n{text}"),
                Err(errors) => errors.0,
            }
        }

        /// The single error for `key`.
        fn error(&self, text: &str, key: &str) -> ConfigError {
            let errors = self.errors(text);
            let found: Vec<_> = errors.iter().filter(|e| e.key == key).collect();
            assert_eq!(found.len(), 1, "one error for {key} in {errors:?}");
            found[0].clone()
        }
    }

    /// MINIMAL with `extra` appended (later tables) or a `[session]` body.
    fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}\n")
    }

    #[test]
    fn minimal_config_gets_every_default() {
        let f = Fixture::new();
        let c = f.ok(MINIMAL);
        assert_eq!(c.listen.https, "0.0.0.0:8443".parse().unwrap());
        assert_eq!((c.listen.http, c.listen.admin), (None, None));
        assert!(c.listen.trusted_proxies.is_empty());
        assert!(c.tls.sni.is_empty());
        let t = &c.timeouts;
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(t.header_read, Duration::from_secs(10));
        assert_eq!(t.tls_handshake, Duration::from_secs(10));
        assert_eq!(t.upstream, Duration::from_secs(30));
        assert_eq!(t.client_idle, Duration::from_secs(60));
        assert_eq!(t.upstream_idle, Duration::from_secs(30));
        assert_eq!(t.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.limits.max_header_bytes, 16384);
        assert_eq!(c.limits.max_body_bytes, 10_485_760);
        assert_eq!(c.limits.max_connections, 10_000);
        let s = &c.session;
        assert_eq!(s.cookie, "__Host-cloakroom");
        assert_eq!(s.same_site, SameSite::Lax);
        assert!(s.secure && !s.persistent);
        assert_eq!(s.idle_timeout, Duration::from_secs(30 * 60));
        assert_eq!(s.absolute_timeout, Duration::from_secs(12 * 3600));
        assert_eq!(s.store, StoreKind::Memory);
        assert!(s.secret.is_none());
        assert_eq!(s.max_sessions, 1_000_000);
        assert_eq!(
            c.inject.id.as_ref().map(|h| h.as_str()),
            Some("x-session-id")
        );
        assert_eq!(
            c.inject.user.as_ref().map(|h| h.as_str()),
            Some("x-session-user")
        );
        assert_eq!(
            c.inject.roles.as_ref().map(|h| h.as_str()),
            Some("x-session-roles")
        );
        assert_eq!(
            c.inject.data.as_ref().map(|h| h.as_str()),
            Some("x-session-data")
        );
        assert!(c.inject.assertion.is_none());
        assert_eq!(c.control.set_user.as_str(), "x-session-set-user");
        assert_eq!(c.control.set_roles.as_str(), "x-session-set-roles");
        assert_eq!(c.control.set_data.as_str(), "x-session-set-data");
        assert_eq!(c.control.logout.as_str(), "x-session-logout");
        assert!(c.log.access);
        let u = &c.upstreams[0];
        assert_eq!(u.name, "app");
        assert_eq!(u.servers[0].name, "127.0.0.1:9001");
        assert_eq!(u.servers[0].addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!((u.servers[0].weight, u.servers[0].drain), (1, false));
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.affinity, Affinity::Sticky);
        assert_eq!(u.on_pinned_down, OnPinnedDown::Repin);
        assert!(u.health.is_none());
        let r = &c.routes[0];
        assert_eq!(
            (r.host.clone(), r.path.as_str(), r.upstream),
            (None, "/", 0)
        );
        assert!(r.session && r.csrf && !r.require_user);
        assert!(r.login_url.is_none() && r.timeout.is_none());
    }

    #[test]
    fn contract_example_parses() {
        let f = Fixture::new();
        let text = r#"
[listen]
https = "0.0.0.0:8443"
http  = "0.0.0.0:8080"
admin = "127.0.0.1:9901"
trusted_proxies = ["10.0.0.1", "::1"]

[tls]
cert = "certs/cert.pem"
key  = "certs/key.pem"
[[tls.sni]]
hostname = "App.Example.com"
cert = "certs/app.pem"
key  = "certs/app.key"

[timeouts]
connect        = "250ms"
shutdown_grace = "1m"

[limits]
max_header_bytes = 8192
max_body_bytes   = 0

[session]
cookie           = "__Host-cloakroom"
same_site        = "strict"
persistent       = true
store            = "redis"
secret           = "${CLOAKROOM_SECRET}"

[session.redis]
url    = "redis://127.0.0.1:6379/1"
prefix = "cr:"

[inject]
assertion = "X-Session-Assertion"

[log]
access = false

[upstreams.app]
servers  = ["127.0.0.1:9001", "127.0.0.1:9002"]
balance  = "least_conn"
affinity = "hash"
on_pinned_down = "fail"
[upstreams.app.health]
path     = "/healthz"
interval = "2s"
timeout  = "1s"

[[routes]]
host     = "*.Example.com"
path     = "/api"
upstream = "app"
session  = false
timeout  = "5s"

[[routes]]
upstream = "app"
require_user = true
login_url = "/login"
csrf = false
"#;
        let c = f.ok(text);
        assert_eq!(c.listen.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(c.listen.trusted_proxies.len(), 2);
        assert_eq!(c.tls.sni[0].hostname, "app.example.com");
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.limits.max_body_bytes, 0);
        assert_eq!(c.session.same_site, SameSite::Strict);
        match &c.session.store {
            StoreKind::Redis(r) => assert_eq!(
                (r.url.as_str(), r.prefix.as_str()),
                ("redis://127.0.0.1:6379/1", "cr:")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.session.secret.as_ref().map(|s| s.0.as_slice()),
            Some(SECRET.as_bytes())
        );
        assert_eq!(
            c.inject.assertion.as_ref().map(|h| h.as_str()),
            Some("x-session-assertion")
        );
        assert!(!c.log.access);
        let u = &c.upstreams[0];
        assert_eq!(
            (u.balance, u.affinity, u.on_pinned_down),
            (Balance::LeastConn, Affinity::Hash, OnPinnedDown::Fail)
        );
        let h = u.health.as_ref().unwrap();
        assert_eq!((h.path.as_str(), h.fall, h.rise), ("/healthz", 2, 2));
        assert_eq!(
            c.routes[0].host,
            Some(HostPattern::Suffix(".example.com".into()))
        );
        assert!(!c.routes[0].session && !c.routes[0].csrf);
        assert_eq!(c.routes[0].timeout, Some(Duration::from_secs(5)));
        assert!(c.routes[1].require_user && !c.routes[1].csrf);
        // The secret never shows in Debug, nor does the source text.
        let debug = format!("{c:?}");
        assert!(!debug.contains(SECRET) && debug.contains("redacted"));
    }

    #[test]
    fn misspelled_upstream_names_route_line_and_column() {
        let f = Fixture::new();
        let text = with(
            "[upstreams.static]\nservers = [\"127.0.0.1:9002\"]\n\n[[routes]]\npath = \"/x\"\nupstream = \"ap\"",
        );
        let e = f.error(&text, "routes[1].upstream");
        assert_eq!(e.message, r#"no upstream named "ap" (known: app, static)"#);
        assert_eq!((e.line, e.column), (Some(16), Some(12)));
        let shown = e.to_string();
        assert!(shown.ends_with(r#"proxy.toml:16:12: routes[1].upstream: no upstream named "ap" (known: app, static)"#), "{shown}");
    }

    #[test]
    fn unknown_key_suggests_the_known_one() {
        let f = Fixture::new();
        let text = MINIMAL.replace("upstream = \"app\"", "upstreem = \"app\"");
        let errors = f.errors(&text);
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!(e.key, "routes[0].upstreem");
        assert_eq!((e.line, e.column), (Some(9), Some(1)));
        assert!(
            e.message.starts_with("unknown field `upstreem`"),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with("did you mean `upstream`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_variant_after_interpolation_points_at_original() {
        let f = Fixture::new();
        let text = with("[session]\nsecret = \"${CLOAKROOM_SECRET}\"\nstore = \"${BAD_STORE}\"");
        let e = f.error(&text, "session.store");
        assert_eq!((e.line, e.column), (Some(13), Some(9)));
        assert!(
            e.message.contains("did you mean `cookie`?"),
            "{}",
            e.message
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "[tls]\ncert = \"a\"\nkey = \n";
        let errors = Config::from_str_with_env(Path::new("proxy.toml"), text, &env).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        let e = &errors.0[0];
        assert_eq!(e.line, Some(3));
        assert!(e.column.is_some());
        assert!(errors.to_string().starts_with("proxy.toml:3:"), "{errors}");
    }

    #[test]
    fn missing_env_var_names_key() {
        let f = Fixture::new();
        let text = with("[session]\nsecret = \"${NOT_SET_ANYWHERE}\"");
        let e = f.error(&text, "session.secret");
        assert!(
            e.message
                .starts_with("environment variable NOT_SET_ANYWHERE is not set"),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.column), (Some(12), Some(10)));
    }

    #[test]
    fn env_interpolation_fills_any_string() {
        let f = Fixture::new();
        let text = MINIMAL.replace("127.0.0.1:9001", "${APP_HOST}:9001")
            + "\n[session]\nstore = \"${STORE}\"\nsecret = \"${CLOAKROOM_SECRET}\"\ncookie = \"$${literal}\"\n";
        let errors = f.errors(&text);
        // `$${` is a literal `${`, which is not a valid cookie name: proves both.
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "session.cookie");
        let c = f.ok(&text.replace("$${literal}", "sid"));
        assert_eq!(
            c.upstreams[0].servers[0].addr,
            "127.0.0.1:9001".parse().unwrap()
        );
        assert_eq!(c.upstreams[0].servers[0].name, "127.0.0.1:9001");
        assert_eq!(c.session.store, StoreKind::Cookie);
        assert_eq!(
            c.session.secret.as_ref().map(|s| s.0.len()),
            Some(SECRET.len())
        );
    }

    #[test]
    fn host_prefix_cookie_requires_secure() {
        let f = Fixture::new();
        let e = f.error(&with("[session]\nsecure = false"), "session.secure");
        assert!(e.message.contains("set secure = true"), "{}", e.message);
        assert_eq!(e.line, Some(12));
        let e = f.error(
            &with("[session]\ncookie = \"__Secure-x\"\nsecure = false"),
            "session.secure",
        );
        assert!(e.message.contains("__Secure-"), "{}", e.message);
        f.ok(&with("[session]\ncookie = \"sid\"\nsecure = false"));
    }

    #[test]
    fn same_site_none_requires_secure() {
        let f = Fixture::new();
        let text = with("[session]\ncookie = \"sid\"\nsame_site = \"none\"\nsecure = false");
        let e = f.error(&text, "session.same_site");
        assert!(e.message.contains("secure = true"), "{}", e.message);
        f.ok(&with("[session]\nsame_site = \"none\""));
    }

    #[test]
    fn idle_longer_than_absolute_is_a_warning() {
        let f = Fixture::new();
        let text = with("[session]\nidle_timeout = \"2h\"\nabsolute_timeout = \"1h\"");
        let config = f.ok(&text);
        let e = &config.warnings[0];
        assert_eq!(e.key, "session.idle_timeout");
        assert!(
            e.message.contains("2h") && e.message.contains("1h"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_or_zero_duration_names_key() {
        let f = Fixture::new();
        let e = f.error(
            &with("[timeouts]\nconnect = \"2 parsecs\""),
            "timeouts.connect",
        );
        assert!(
            e.message.contains("\"2 parsecs\" is not a duration"),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.column), (Some(12), Some(11)));
        let e = f.error(&with("[timeouts]\nupstream = \"0s\""), "timeouts.upstream");
        assert!(e.message.contains("zero"), "{}", e.message);
    }

    #[test]
    fn relative_cert_paths_resolve_against_config_folder() {
        let f = Fixture::new();
        let text = with("[[tls.sni]]\nhostname = \"*.Example.com\"\ncert = \"certs/app.pem\"\nkey = \"certs/app.key\"");
        let c = f.ok(&text);
        let base = std::path::absolute(f.dir.path()).unwrap();
        assert_eq!(c.tls.default.cert, base.join("certs/cert.pem"));
        assert_eq!(c.tls.default.key, base.join("certs/key.pem"));
        assert_eq!(c.tls.sni[0].hostname, "*.example.com");
        assert_eq!(c.tls.sni[0].certs.key, base.join("certs/app.key"));
    }

    #[test]
    fn missing_cert_file_is_named() {
        let f = Fixture::new();
        let e = f.error(
            &MINIMAL.replace("certs/cert.pem", "certs/missing.pem"),
            "tls.cert",
        );
        let expected = std::path::absolute(f.dir.path().join("certs/missing.pem")).unwrap();
        assert!(
            e.message
                .starts_with(&format!("cannot read \"{}\": ", expected.display())),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.column), (Some(2), Some(8)));
        let e = f.error(&MINIMAL.replace("certs/cert.pem", "certs"), "tls.cert");
        assert!(e.message.contains("is not a file"), "{}", e.message);
    }

    #[test]
    fn server_as_table_with_weight_and_drain() {
        let f = Fixture::new();
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:9001\"]",
            "servers = [\"127.0.0.1:9001\", { addr = \"localhost:9002\", weight = 3, drain = true }]",
        );
        let c = f.ok(&text);
        let s = &c.upstreams[0].servers[1];
        assert_eq!(
            (s.name.as_str(), s.weight, s.drain),
            ("localhost:9002", 3, true)
        );
        assert_eq!(s.addr.port(), 9002);
        assert!(s.addr.ip().is_loopback());
    }

    #[test]
    fn server_rules() {
        let f = Fixture::new();
        let text = MINIMAL.replace(
            "servers = [\"127.0.0.1:9001\"]",
            "servers = [\"127.0.0.1:9001\", { addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9003\", weight = 0 }, \"127.0.0.1\", { addr = \"x:1\", wieght = 2 }]",
        );
        // Serde stops at the unknown field first, with a suggestion.
        let e = f.error(&text, "upstreams.app.servers[4].wieght");
        assert!(
            e.message.contains("did you mean `weight`?"),
            "{}",
            e.message
        );
        let text = text.replace(", { addr = \"x:1\", wieght = 2 }", "");
        let errors = f.errors(&text);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstreams.app.servers[1]",
                "upstreams.app.servers[2].weight",
                "upstreams.app.servers[3]"
            ]
        );
        assert!(errors[0].message.contains("same server as servers[0]"));
        assert!(errors[2].message.contains("has no port"));
        let e = f.error(
            &MINIMAL.replace("servers = [\"127.0.0.1:9001\"]", "servers = []"),
            "upstreams.app.servers",
        );
        assert!(e.message.contains("at least one"));
    }

    #[test]
    fn duplicate_routes_name_the_earlier_one() {
        let f = Fixture::new();
        let text = with("[[routes]]\nhost = \"a.com\"\nupstream = \"app\"\n\n[[routes]]\nhost = \"A.com\"\npath = \"/\"\nupstream = \"app\"");
        let e = f.error(&text, "routes[2].path");
        assert!(
            e.message
                .starts_with("routes[1] already has this host and path"),
            "{}",
            e.message
        );
        assert_eq!((e.line, e.column), (Some(17), Some(8)));
    }

    #[test]
    fn route_rules() {
        let f = Fixture::new();
        let text = with("[[routes]]\nhost = \"a.com:443\"\npath = \"api\"\nupstream = \"app\"\nlogin_url = \"http://x/login\"\nsession = false\nrequire_user = true\ntimeout = \"soon\"");
        let keys: Vec<_> = f.errors(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "routes[1].host",
                "routes[1].path",
                "routes[1].login_url",
                "routes[1].require_user",
                "routes[1].timeout"
            ]
        );
    }

    #[test]
    fn upstreams_keep_file_order() {
        let f = Fixture::new();
        let text = MINIMAL.replace(
            "[upstreams.app]",
            "[upstreams.zeta]\nservers = [\"127.0.0.1:9005\"]\n\n[upstreams.app]",
        ) + "\n[[routes]]\npath = \"/z\"\nupstream = \"zeta\"\n";
        let c = f.ok(&text);
        let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["zeta", "app"]);
        assert_eq!((c.routes[0].upstream, c.routes[1].upstream), (1, 0));
    }

    #[test]
    fn store_secret_rules() {
        let f = Fixture::new();
        let e = f.error(&with("[session]\nstore = \"redis\""), "session.secret");
        assert!(
            e.message.starts_with("store = \"redis\" needs a secret"),
            "{}",
            e.message
        );
        let e = f.error(
            &with("[session]\nstore = \"cookie\"\nsecret = \"short\""),
            "session.secret",
        );
        assert!(
            e.message.contains("5 bytes") && e.message.contains("32"),
            "{}",
            e.message
        );
        let text = with("[session]\nstore = \"redis\"\nsecret = \"${CLOAKROOM_SECRET}\"\nmax_sessions = 0\n[session.redis]\nurl = \"http://x\"");
        let keys: Vec<_> = f.errors(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["session.redis.url", "session.max_sessions"]);
        let e = f.error(&with("[session]\nmax_sessions = 0"), "session.max_sessions");
        assert!(e.message.contains("at least 1"));
    }

    #[test]
    fn header_name_rules() {
        let f = Fixture::new();
        let text = with("[inject]\nuser = \"X Session\"\nroles = \"\"\ndata = \"X-Session-Logout\"\nid = \"Cookie\"\n[control]\nset_user = \"\"");
        let errors = f.errors(&text);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["inject.id", "inject.user", "control.set_user"],
            "{errors:?}"
        );
        let text = with("[inject]\nroles = \"\"\ndata = \"X-Session-Logout\"");
        let e = f.error(&text, "inject.data");
        assert!(e.message.contains("also control.logout"), "{}", e.message);
        assert_eq!(e.line, Some(13));
        let c = f.ok(&with("[inject]\nroles = \"\""));
        assert!(c.inject.roles.is_none());
    }

    #[test]
    fn limits_rules() {
        let f = Fixture::new();
        let e = f.error(
            &with("[limits]\nmax_header_bytes = 4096"),
            "limits.max_header_bytes",
        );
        assert!(e.message.contains("hyper"), "{}", e.message);
        f.error(
            &with("[limits]\nmax_connections = 0"),
            "limits.max_connections",
        );
        let text = MINIMAL.replace("[tls]", "[listen]\nhttp = \"x\"\nadmin = \"y\"\ntrusted_proxies = [\"1.2.3.4\", \"z\"]\n\n[tls]");
        let keys: Vec<_> = f.errors(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            ["listen.http", "listen.admin", "listen.trusted_proxies[1]"]
        );
        let e = f.error(
            &with("[limits]\nmax_body_bytes = -1"),
            "limits.max_body_bytes",
        );
        assert_eq!(e.line, Some(12));
    }

    #[test]
    fn health_rules() {
        let f = Fixture::new();
        let text = with("[upstreams.app.health]\npath = \"healthz\"\ninterval = \"1s\"\ntimeout = \"1s\"\nfall = 0");
        let keys: Vec<_> = f.errors(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "upstreams.app.health.path",
                "upstreams.app.health.timeout",
                "upstreams.app.health.fall"
            ]
        );
        let c = f.ok(&with("[upstreams.app.health]"));
        let h = c.upstreams[0].health.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(2), Duration::from_secs(1))
        );
    }

    #[test]
    fn multiple_errors_are_collected() {
        let f = Fixture::new();
        let text = r#"[listen]
https = "8443"

[tls]
cert = "nope.pem"
key = "certs/key.pem"

[session]
secure = false
idle_timeout = "0s"

[upstreams.app]
servers = ["127.0.0.1:9001"]

[[routes]]
upstream = "api"
"#;
        let errors = f.errors(text);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen.https",
                "tls.cert",
                "session.secure",
                "session.idle_timeout",
                "routes[0].upstream"
            ]
        );
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(5), Some(9), Some(10), Some(16)]);
        assert_eq!(ConfigErrors(errors).to_string().lines().count(), 5);
    }

    #[test]
    fn required_sections_are_reported() {
        let f = Fixture::new();
        let errors = f.errors("[log]\naccess = true\n");
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["tls", "upstreams", "routes"]);
    }

    #[test]
    fn error_at_points_at_the_key() {
        let f = Fixture::new();
        let c = f.ok(MINIMAL);
        let e = c.error_at("tls.cert", "no certificate in the PEM file");
        assert_eq!((e.line, e.column), (Some(2), Some(8)));
        assert_eq!(e.file, f.path());
        assert_eq!(c.error_at("session.cookie", "x").line, None);
    }

    #[test]
    fn load_reads_the_file_or_names_it() {
        let f = Fixture::new();
        std::fs::write(f.path(), MINIMAL).unwrap();
        let c = Config::load(&f.path()).unwrap();
        assert_eq!(c.source, f.path());
        let missing = f.dir.path().join("other.toml");
        let errors = Config::load(&missing).unwrap_err();
        let shown = errors.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read", missing.display())),
            "{shown}"
        );
    }
}
