//! The serde mirror of `proxy.toml`.
//!
//! Every struct here matches one table of the file, field for field, with the documented
//! defaults as named functions and `deny_unknown_fields` so a typo is an error, never a
//! silently ignored key. Values stay close to the text (durations, addresses and header
//! names are strings): turning them into typed values, and every rule, lives in
//! `validate.rs`. `${ENV}` interpolation has already happened when these are filled.
//!
//! The only code here is two small deserialisers that keep good error messages: the
//! `[upstreams]` map in file order, and a server written either as a string or a table.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

mod acme;
mod session;

pub(super) use acme::RawAcme;
pub(super) use session::{
    RawAnomaly, RawMemcached, RawPostgres, RawRedis, RawSameSite, RawSession, RawStore,
};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listen: RawListen,
    /// Required; `None` gives a friendlier error than serde's "missing field".
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) session: RawSession,
    #[serde(default)]
    pub(super) inject: RawInject,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) upstreams: RawUpstreams,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    /// `[oidc]`: absent = no built-in login.
    pub(super) oidc: Option<RawOidc>,
}

/// `[oidc]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    #[serde(default)]
    pub(super) issuer: String,
    #[serde(default)]
    pub(super) client_id: String,
    pub(super) client_secret: Option<String>,
    #[serde(default = "default_oidc_scopes")]
    pub(super) scopes: Vec<String>,
    #[serde(default = "default_user_claim")]
    pub(super) user_claim: String,
    #[serde(default)]
    pub(super) roles_claim: String,
    #[serde(default)]
    pub(super) ca: String,
    #[serde(default)]
    pub(super) allow_http_loopback: bool,
    #[serde(default = "default_true")]
    pub(super) logout_at_idp: bool,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".to_owned(), "email".to_owned()]
}

fn default_user_claim() -> String {
    "sub".to_owned()
}

/// `[listen]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    #[serde(default = "default_https")]
    pub(super) https: String,
    pub(super) http: Option<String>,
    pub(super) admin: Option<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    /// Threads serving https connections; 0 = one per core.
    #[serde(default)]
    pub(super) workers: i64,
    /// Bearer token the admin paths require ("" or absent = none).
    #[serde(default)]
    pub(super) admin_token: String,
    #[serde(default = "default_true")]
    pub(super) drop_underscore_headers: bool,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            https: default_https(),
            http: None,
            admin: None,
            trusted_proxies: Vec::new(),
            workers: 0,
            admin_token: String::new(),
            drop_underscore_headers: true,
        }
    }
}

fn default_https() -> String {
    "0.0.0.0:8443".to_owned()
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// Required unless `[tls.acme]` is there.
    #[serde(default)]
    pub(super) cert: Option<String>,
    #[serde(default)]
    pub(super) key: Option<String>,
    #[serde(default)]
    pub(super) acme: Option<RawAcme>,
    #[serde(default)]
    pub(super) sni: Vec<RawSni>,
    /// `Strict-Transport-Security` value; `""` = off.
    #[serde(default)]
    pub(super) hsts: String,
}

/// `[[tls.sni]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    pub(super) hostname: String,
    pub(super) cert: String,
    pub(super) key: String,
}

/// `[timeouts]`; humantime strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default = "default_connect")]
    pub(super) connect: String,
    #[serde(default = "default_10s")]
    pub(super) header_read: String,
    #[serde(default = "default_10s")]
    pub(super) tls_handshake: String,
    #[serde(default = "default_30s")]
    pub(super) upstream: String,
    #[serde(default = "default_client_idle")]
    pub(super) client_idle: String,
    #[serde(default = "default_30s")]
    pub(super) upstream_idle: String,
    #[serde(default = "default_30s")]
    pub(super) shutdown_grace: String,
    #[serde(default = "default_tunnel_idle")]
    pub(super) tunnel_idle: String,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: default_connect(),
            header_read: default_10s(),
            tls_handshake: default_10s(),
            upstream: default_30s(),
            client_idle: default_client_idle(),
            upstream_idle: default_30s(),
            shutdown_grace: default_30s(),
            tunnel_idle: default_tunnel_idle(),
        }
    }
}

fn default_connect() -> String {
    "2s".to_owned()
}

/// `true`, for flags that are on unless turned off.
fn default_true() -> bool {
    true
}

fn default_10s() -> String {
    "10s".to_owned()
}

fn default_30s() -> String {
    "30s".to_owned()
}

fn default_client_idle() -> String {
    "60s".to_owned()
}

fn default_tunnel_idle() -> String {
    "1h".to_owned()
}

/// `[limits]`; sizes in bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "default_max_header_bytes")]
    pub(super) max_header_bytes: u64,
    #[serde(default = "default_max_body_bytes")]
    pub(super) max_body_bytes: u64,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: u64,
    #[serde(default = "default_off")]
    pub(super) per_ip: String,
    #[serde(default = "default_off")]
    pub(super) per_session: String,
    #[serde(default = "default_off")]
    pub(super) new_sessions_per_ip: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            max_connections: default_max_connections(),
            per_ip: default_off(),
            per_session: default_off(),
            new_sessions_per_ip: default_off(),
        }
    }
}

fn default_off() -> String {
    "off".to_owned()
}

fn default_max_header_bytes() -> u64 {
    16_384
}

fn default_max_body_bytes() -> u64 {
    10_485_760
}

fn default_max_connections() -> u64 {
    10_000
}

/// `[inject]`; `""` turns a header off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    #[serde(default = "default_inject_id")]
    pub(super) id: String,
    #[serde(default = "default_inject_user")]
    pub(super) user: String,
    #[serde(default = "default_inject_roles")]
    pub(super) roles: String,
    #[serde(default = "default_inject_data")]
    pub(super) data: String,
    #[serde(default)]
    pub(super) assertion: String,
    /// PKCS#8 PEM text, or the path of a PEM file; `""` = generated at start.
    #[serde(default)]
    pub(super) assertion_key: String,
    /// Keys (PEM text or paths) whose public halves the JWKS still serves.
    #[serde(default)]
    pub(super) assertion_previous_keys: Vec<String>,
    #[serde(default = "default_assertion_ttl")]
    pub(super) assertion_ttl: String,
    #[serde(default = "default_inject_anomaly")]
    pub(super) anomaly: String,
}

impl Default for RawInject {
    fn default() -> Self {
        RawInject {
            id: default_inject_id(),
            user: default_inject_user(),
            roles: default_inject_roles(),
            data: default_inject_data(),
            assertion: String::new(),
            assertion_key: String::new(),
            assertion_previous_keys: Vec::new(),
            assertion_ttl: default_assertion_ttl(),
            anomaly: default_inject_anomaly(),
        }
    }
}

fn default_assertion_ttl() -> String {
    "60s".to_owned()
}

fn default_inject_anomaly() -> String {
    "X-Session-Anomaly".to_owned()
}

fn default_inject_id() -> String {
    "X-Session-Id".to_owned()
}

fn default_inject_user() -> String {
    "X-Session-User".to_owned()
}

fn default_inject_roles() -> String {
    "X-Session-Roles".to_owned()
}

fn default_inject_data() -> String {
    "X-Session-Data".to_owned()
}

/// `[control]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    #[serde(default = "default_set_user")]
    pub(super) set_user: String,
    #[serde(default = "default_set_roles")]
    pub(super) set_roles: String,
    #[serde(default = "default_set_data")]
    pub(super) set_data: String,
    #[serde(default = "default_logout")]
    pub(super) logout: String,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            set_user: default_set_user(),
            set_roles: default_set_roles(),
            set_data: default_set_data(),
            logout: default_logout(),
        }
    }
}

fn default_set_user() -> String {
    "X-Session-Set-User".to_owned()
}

fn default_set_roles() -> String {
    "X-Session-Set-Roles".to_owned()
}

fn default_set_data() -> String {
    "X-Session-Set-Data".to_owned()
}

fn default_logout() -> String {
    "X-Session-Logout".to_owned()
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default = "default_true")]
    pub(super) access: bool,
    #[serde(default = "default_log_format")]
    pub(super) format: RawLogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            access: true,
            format: default_log_format(),
        }
    }
}

/// `[log] format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawLogFormat {
    Text,
    Json,
}

fn default_log_format() -> RawLogFormat {
    RawLogFormat::Text
}

/// `balance`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawBalance {
    RoundRobin,
    LeastConn,
    Random,
}

/// `affinity`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawAffinity {
    Sticky,
    Hash,
    None,
}

/// `on_pinned_down`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOnPinnedDown {
    Repin,
    Fail,
}

/// `[upstreams]`: `(name, upstream)` pairs in file order (the TOML parser hands map
/// entries over in document order; a `BTreeMap` would sort them).
#[derive(Debug, Default)]
pub(super) struct RawUpstreams(pub(super) Vec<(String, RawUpstream)>);

impl<'de> Deserialize<'de> for RawUpstreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = RawUpstreams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of upstreams, like [upstreams.app]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawUpstreams, A::Error> {
                let mut out = Vec::new();
                while let Some((name, upstream)) = map.next_entry::<String, RawUpstream>()? {
                    out.push((name, upstream));
                }
                Ok(RawUpstreams(out))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) servers: Vec<RawServer>,
    #[serde(default = "default_balance")]
    pub(super) balance: RawBalance,
    #[serde(default = "default_affinity")]
    pub(super) affinity: RawAffinity,
    #[serde(default = "default_on_pinned_down")]
    pub(super) on_pinned_down: RawOnPinnedDown,
    pub(super) health: Option<RawHealth>,
}

fn default_balance() -> RawBalance {
    RawBalance::RoundRobin
}

fn default_affinity() -> RawAffinity {
    RawAffinity::Sticky
}

fn default_on_pinned_down() -> RawOnPinnedDown {
    RawOnPinnedDown::Repin
}

/// One entry of `servers`: `"host:port"` or `{ addr = "host:port", weight = 1, drain = false }`.
#[derive(Debug)]
pub(super) enum RawServer {
    Addr(String),
    Table(RawServerTable),
}

/// The table form of a server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTable {
    pub(super) addr: String,
    #[serde(default = "default_weight")]
    pub(super) weight: i64,
    #[serde(default)]
    pub(super) drain: bool,
}

fn default_weight() -> i64 {
    1
}

// Written by hand rather than `#[serde(untagged)]`, which would replace a precise
// "unknown field `wieght`" with "data did not match any variant".
impl<'de> Deserialize<'de> for RawServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = RawServer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""host:port" or { addr = "host:port", weight = 1, drain = false }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawServer, E> {
                Ok(RawServer::Addr(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawServer, A::Error> {
                RawServerTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawServer::Table)
            }
        }
        deserializer.deserialize_any(Either)
    }
}

/// `[upstreams.NAME.health]`; everything has a default, so an empty table turns checks on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default = "default_health_path")]
    pub(super) path: String,
    #[serde(default = "default_health_interval")]
    pub(super) interval: String,
    #[serde(default = "default_health_timeout")]
    pub(super) timeout: String,
    #[serde(default = "default_fall_rise")]
    pub(super) fall: u32,
    #[serde(default = "default_fall_rise")]
    pub(super) rise: u32,
}

fn default_health_path() -> String {
    "/healthz".to_owned()
}

fn default_health_interval() -> String {
    "2s".to_owned()
}

fn default_health_timeout() -> String {
    "1s".to_owned()
}

fn default_fall_rise() -> u32 {
    2
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) host: Option<String>,
    #[serde(default = "default_route_path")]
    pub(super) path: String,
    pub(super) upstream: String,
    #[serde(default = "default_true")]
    pub(super) session: bool,
    /// `None`: the value of `session`.
    pub(super) csrf: Option<bool>,
    #[serde(default)]
    pub(super) require_user: bool,
    pub(super) login_url: Option<String>,
    /// `"oidc"`: requests without a user start the built-in login.
    pub(super) login: Option<String>,
    #[serde(default)]
    pub(super) allow_users: Vec<String>,
    #[serde(default)]
    pub(super) allow_domains: Vec<String>,
    #[serde(default)]
    pub(super) allow_roles: Vec<String>,
    pub(super) timeout: Option<String>,
}

fn default_route_path() -> String {
    "/".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_default_and_servers_take_both_forms() {
        let raw: RawConfig = toml::from_str(
            r#"
            [upstreams.b]
            servers = ["h:1", { addr = "h:2", weight = 5 }]
            [upstreams.a]
            servers = []
            "#,
        )
        .unwrap();
        assert!(raw.tls.is_none() && raw.routes.is_empty());
        assert_eq!(raw.listen.https, "0.0.0.0:8443");
        assert_eq!(raw.session.same_site, RawSameSite::Lax);
        let names: Vec<_> = raw.upstreams.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "a"], "file order, not sorted");
        let servers = &raw.upstreams.0[0].1.servers;
        assert!(matches!(&servers[0], RawServer::Addr(a) if a == "h:1"));
        assert!(matches!(&servers[1], RawServer::Table(t) if t.weight == 5 && !t.drain));
    }

    #[test]
    fn unknown_fields_keep_precise_messages() {
        let err = toml::from_str::<RawConfig>(
            "[upstreams.a]\nservers = [{ addr = \"h:1\", wieght = 2 }]\n",
        )
        .unwrap_err();
        assert!(
            err.message().starts_with("unknown field `wieght`"),
            "{}",
            err.message()
        );
        let err = toml::from_str::<RawConfig>("[sesion]\n").unwrap_err();
        assert!(err.message().starts_with("unknown field `sesion`"));
    }
}
