//! Validation of `[upstreams.NAME]` and `[[routes]]`: servers, health checks, hosts,
//! paths, and the links from routes to upstreams.
//!
//! Part of the `Validator` in `validate.rs`, split out by concern. Resolves upstream
//! `host:port`s with the system resolver; no other IO.

use std::time::Duration;

use super::super::raw::{
    RawAffinity, RawBalance, RawHealth, RawOnPinnedDown, RawRoute, RawServer, RawUpstream,
};
use super::super::{
    Affinity, Balance, HealthConfig, HostPattern, OnPinnedDown, RouteConfig, ServerConfig,
    UpstreamConfig,
};
use super::checks::{host_pattern, resolve};
use super::{key_segment, Validator};

impl Validator<'_> {
    /// Every upstream in file order, by name; `None` for one with errors (reported).
    pub(super) fn upstreams(
        &mut self,
        raw: Vec<(String, RawUpstream)>,
    ) -> Vec<(String, Option<UpstreamConfig>)> {
        if raw.is_empty() {
            self.error(
                "upstreams",
                "no upstreams; add one like [upstreams.app] with servers = [\"127.0.0.1:9001\"]",
            );
        }
        raw.into_iter()
            .map(|(name, upstream)| (name.clone(), self.upstream(name, upstream)))
            .collect()
    }

    fn upstream(&mut self, name: String, raw: RawUpstream) -> Option<UpstreamConfig> {
        let prefix = format!("upstreams.{}", key_segment(&name));
        if raw.servers.is_empty() {
            self.error(
                &format!("{prefix}.servers"),
                "no servers; list at least one, like servers = [\"127.0.0.1:9001\"]",
            );
        }
        let mut servers: Vec<ServerConfig> = Vec::new();
        let mut ok = !raw.servers.is_empty();
        for (i, server) in raw.servers.into_iter().enumerate() {
            let key = format!("{prefix}.servers[{i}]");
            let (written, weight, drain, addr_key) = match server {
                RawServer::Addr(addr) => (addr, 1, false, key.clone()),
                RawServer::Table(t) => (t.addr, t.weight, t.drain, format!("{key}.addr")),
            };
            let addr = self.check(&addr_key, resolve(written.trim()));
            let weight = match u32::try_from(weight) {
                Ok(w @ 1..=1000) => Some(w),
                _ => {
                    self.error(
                        &format!("{key}.weight"),
                        format!("weight {weight} is out of range; use 1 to 1000"),
                    );
                    None
                }
            };
            let (Some(addr), Some(weight)) = (addr, weight) else {
                ok = false;
                continue;
            };
            if let Some(j) = servers
                .iter()
                .position(|s| s.name == written || s.addr == addr)
            {
                self.error(
                    &key,
                    format!(
                        "\"{written}\" is the same server as servers[{j}] (\"{}\"); list it once \
                         and use weight to send it more traffic",
                        servers[j].name
                    ),
                );
                ok = false;
                continue;
            }
            servers.push(ServerConfig {
                name: written,
                addr,
                weight,
                drain,
            });
        }
        let health = match raw.health {
            Some(health) => Some(self.health(&format!("{prefix}.health"), &health)?),
            None => None,
        };
        ok.then_some(UpstreamConfig {
            name,
            servers,
            balance: match raw.balance {
                RawBalance::RoundRobin => Balance::RoundRobin,
                RawBalance::LeastConn => Balance::LeastConn,
                RawBalance::Random => Balance::Random,
            },
            affinity: match raw.affinity {
                RawAffinity::Sticky => Affinity::Sticky,
                RawAffinity::Hash => Affinity::Hash,
                RawAffinity::None => Affinity::None,
            },
            on_pinned_down: match raw.on_pinned_down {
                RawOnPinnedDown::Repin => OnPinnedDown::Repin,
                RawOnPinnedDown::Fail => OnPinnedDown::Fail,
            },
            health,
        })
    }

    fn health(&mut self, prefix: &str, raw: &RawHealth) -> Option<HealthConfig> {
        if !raw.path.starts_with('/') {
            self.error(
                &format!("{prefix}.path"),
                format!("\"{}\" must start with /, like \"/healthz\"", raw.path),
            );
        }
        let interval = self.duration(&format!("{prefix}.interval"), &raw.interval);
        let timeout = self.duration(&format!("{prefix}.timeout"), &raw.timeout);
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout >= interval {
                self.error(
                    &format!("{prefix}.timeout"),
                    format!(
                        "timeout ({}) must be shorter than interval ({}) so checks do not \
                         overlap; lower timeout or raise interval",
                        humantime::format_duration(timeout),
                        humantime::format_duration(interval)
                    ),
                );
            }
        }
        for (field, value) in [("fall", raw.fall), ("rise", raw.rise)] {
            if value == 0 {
                self.error(
                    &format!("{prefix}.{field}"),
                    "must be at least 1 (consecutive checks)",
                );
            }
        }
        let valid = raw.path.starts_with('/') && raw.fall > 0 && raw.rise > 0;
        let (interval, timeout) = (interval?, timeout?);
        (valid && timeout < interval).then(|| HealthConfig {
            path: raw.path.clone(),
            interval,
            timeout,
            fall: raw.fall,
            rise: raw.rise,
        })
    }

    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        upstreams: &[(String, Option<UpstreamConfig>)],
        oidc_on: bool,
    ) -> Option<Vec<RouteConfig>> {
        if raw.is_empty() {
            self.error(
                "routes",
                "no routes; add one like [[routes]] with path = \"/\" and upstream = \"app\"",
            );
            return None;
        }
        let mut known: Vec<&str> = upstreams.iter().map(|(name, _)| name.as_str()).collect();
        known.sort_unstable();
        let mut routes: Vec<Option<RouteConfig>> = Vec::new();
        let mut seen: Vec<(Option<HostPattern>, String)> = Vec::new();
        for (i, route) in raw.into_iter().enumerate() {
            let prefix = format!("routes[{i}]");
            // An upstream that exists but has errors was reported already; the index is
            // into the full list, which is `Config::upstreams` once every upstream is valid.
            let upstream = upstreams
                .iter()
                .position(|(name, _)| *name == route.upstream);
            if upstream.is_none() {
                self.error(
                    &format!("{prefix}.upstream"),
                    format!(
                        "no upstream named \"{}\" (known: {})",
                        route.upstream,
                        known.join(", ")
                    ),
                );
            }
            let host: Option<Option<HostPattern>> = match &route.host {
                Some(host) => self
                    .check(&format!("{prefix}.host"), host_pattern(host))
                    .map(Some),
                None => Some(None),
            };
            let path_ok = route.path.starts_with('/');
            if !path_ok {
                self.error(
                    &format!("{prefix}.path"),
                    format!(
                        "\"{}\" must start with /, like \"/{}\"",
                        route.path, route.path
                    ),
                );
            }
            if let Some(url) = &route.login_url {
                if !(url.starts_with('/') || url.starts_with("https://")) {
                    self.error(
                        &format!("{prefix}.login_url"),
                        format!("\"{url}\" must be a path like \"/login\" or an https:// URL"),
                    );
                }
            }
            if route.require_user && !route.session {
                self.error(
                    &format!("{prefix}.require_user"),
                    "require_user needs session = true (there is no user without a session); \
                     remove one of them",
                );
            }
            let login_oidc = self.route_login(&prefix, &route, oidc_on);
            let allow = self.route_allow(&prefix, &route);
            let timeout: Option<Option<Duration>> = match &route.timeout {
                Some(t) => self.duration(&format!("{prefix}.timeout"), t).map(Some),
                None => Some(None),
            };
            if let (Some(host), true) = (&host, path_ok) {
                let identity = (host.clone(), route.path.clone());
                if let Some(j) = seen.iter().position(|s| *s == identity) {
                    self.error(
                        &format!("{prefix}.path"),
                        format!(
                            "routes[{j}] already has this host and path; remove one or change \
                             its host or path"
                        ),
                    );
                }
                seen.push(identity);
            }
            let built = (|| {
                Some(RouteConfig {
                    host: host?,
                    path: path_ok.then(|| route.path.clone())?,
                    upstream: upstream?,
                    session: route.session,
                    csrf: route.csrf.unwrap_or(route.session),
                    require_user: route.require_user,
                    login_url: route.login_url.clone(),
                    login_oidc,
                    allow: allow.clone(),
                    timeout: timeout?,
                })
            })();
            routes.push(built);
        }
        routes.into_iter().collect()
    }
}
