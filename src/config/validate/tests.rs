//! Unit tests of config validation, through `Config::from_str_with_env` and `load`:
//! every message names file:line:col and the key, as `cloakroom check` prints it.

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
    assert!(
        shown.ends_with(
            r#"proxy.toml:16:12: routes[1].upstream: no upstream named "ap" (known: app, static)"#
        ),
        "{shown}"
    );
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
    let text = MINIMAL.replace(
        "[tls]",
        "[listen]\nhttp = \"x\"\nadmin = \"y\"\ntrusted_proxies = [\"1.2.3.4\", \"z\"]\n\n[tls]",
    );
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
    let text = with(
        "[upstreams.app.health]\npath = \"healthz\"\ninterval = \"1s\"\ntimeout = \"1s\"\nfall = 0",
    );
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

#[test]
fn sentinel_rules() {
    let f = Fixture::new();
    let store = "[session]\nstore = \"redis\"\nsecret = \"${CLOAKROOM_SECRET}\"\n[session.redis]\n";
    let config = f.ok(&with(&format!(
        "{store}sentinels = [\"redis://:pw@10.0.0.1:26379/2\", \"redis://:pw@10.0.0.2:26379/2\"]\n\
         sentinel_master = \"mymaster\""
    )));
    let StoreKind::Redis(redis) = &config.session.store else {
        panic!("not the redis store: {:?}", config.session.store)
    };
    let sentinel = redis.sentinel.as_ref().unwrap();
    assert_eq!(sentinel.master, "mymaster");
    assert_eq!(sentinel.urls.len(), 2);
    assert!(!format!("{redis:?}").contains("pw@"), "{redis:?}");

    // The master's name is required, and names the line of `sentinels`.
    let e = f.error(
        &with(&format!("{store}sentinels = [\"redis://10.0.0.1:26379\"]")),
        "session.redis.sentinel_master",
    );
    assert!(e.message.contains("required"), "{}", e.message);
    let e = f.error(
        &with(&format!("{store}sentinel_master = \"mymaster\"")),
        "session.redis.sentinel_master",
    );
    assert!(e.line.is_some() && e.message.contains("without"), "{e:?}");
    // A bad URL names its index; entries must agree; not with a Cluster.
    let text = with(&format!(
        "{store}sentinel_master = \"m\"\nsentinels = [\"http://:secret@x\", \"redis://a:26379\", \"redis://:other@b:26379\"]\n\
         urls = [\"redis://10.0.0.1:7000\"]"
    ));
    let errors = f.errors(&text);
    let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "session.redis.sentinels",
            "session.redis.sentinels[0]",
            "session.redis.sentinels[2]"
        ],
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| !e.message.contains("secret")
        && !e.message.contains("other")
        && e.line.is_some()));
}
