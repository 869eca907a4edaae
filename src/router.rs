//! Pure `(host, path) → RouteId` matching, compiled once per config.
//!
//! Precedence, independent of file order: the most specific host wins (exact name, then
//! the longest `*.suffix`, then routes without a host), and among the routes of that host
//! the longest path prefix wins. A prefix matches on segment boundaries: `/api` matches
//! `/api`, `/api/` and `/api/x` but not `/apix`; a prefix ending in `/` matches anything
//! under it. A host whose routes match no path falls through to less specific hosts.
//! No IO, no allocation per lookup.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::config::{HostPattern, RouteConfig};

/// Index of a route in `Config::routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouteId(pub usize);

/// Routes of one host pattern, longest path first.
#[derive(Debug, Default)]
struct PathTable {
    entries: Vec<(String, RouteId)>,
}

impl PathTable {
    fn push(&mut self, path: &str, id: RouteId) {
        self.entries.push((path.to_string(), id));
    }

    fn finish(&mut self) {
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    fn lookup(&self, path: &str) -> Option<RouteId> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, id)| *id)
    }
}

/// True when `prefix` covers `path` on a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, PathTable>,
    /// `(".example.com", table)`, longest suffix first.
    suffix: Vec<(String, PathTable)>,
    any: PathTable,
}

impl Router {
    /// Compiles `routes` (already validated: hosts lower-case, paths start with `/`).
    pub fn new(routes: &[RouteConfig]) -> Router {
        let mut router = Router::default();
        for (i, route) in routes.iter().enumerate() {
            let id = RouteId(i);
            match &route.host {
                None => router.any.push(&route.path, id),
                Some(HostPattern::Exact(host)) => router
                    .exact
                    .entry(host.clone())
                    .or_default()
                    .push(&route.path, id),
                Some(HostPattern::Suffix(suffix)) => {
                    match router.suffix.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, table)) => table.push(&route.path, id),
                        None => {
                            let mut table = PathTable::default();
                            table.push(&route.path, id);
                            router.suffix.push((suffix.clone(), table));
                        }
                    }
                }
            }
        }
        router.any.finish();
        router.exact.values_mut().for_each(PathTable::finish);
        router.suffix.iter_mut().for_each(|(_, t)| t.finish());
        router.suffix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        router
    }

    /// The route for `host` (lower-case, without port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<RouteId> {
        if let Some(id) = self.exact.get(host).and_then(|t| t.lookup(path)) {
            return Some(id);
        }
        for (suffix, table) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(id) = table.lookup(path) {
                    return Some(id);
                }
            }
        }
        self.any.lookup(path)
    }
}

/// The host part of a `Host` header or `:authority`, lower-cased, port and trailing dot
/// removed. Borrows unless the host has upper-case letters (browsers send lower case).
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostPattern>, path: &str) -> RouteConfig {
        RouteConfig {
            host,
            path: path.into(),
            upstream: 0,
            session: true,
            csrf: true,
            require_user: false,
            login_url: None,
            login_oidc: false,
            allow: Default::default(),
            timeout: None,
        }
    }

    fn table() -> Router {
        Router::new(&[
            route(None, "/"),
            route(None, "/api"),
            route(Some(HostPattern::Suffix(".example.com".into())), "/"),
            route(
                Some(HostPattern::Exact("app.example.com".into())),
                "/admin/",
            ),
            route(None, "/api/v2"),
            route(Some(HostPattern::Suffix(".b.example.com".into())), "/"),
        ])
    }

    #[test]
    fn longest_path_wins_regardless_of_order() {
        let r = table();
        assert_eq!(r.route("other", "/api/v2/x"), Some(RouteId(4)));
        assert_eq!(r.route("other", "/api/v1"), Some(RouteId(1)));
        assert_eq!(r.route("other", "/api"), Some(RouteId(1)));
        assert_eq!(r.route("other", "/apix"), Some(RouteId(0)));
        assert_eq!(r.route("other", "/"), Some(RouteId(0)));
    }

    #[test]
    fn most_specific_host_wins_then_falls_through() {
        let r = table();
        assert_eq!(r.route("app.example.com", "/admin/x"), Some(RouteId(3)));
        // Exact host has no route for /x: the wildcard host takes it.
        assert_eq!(r.route("app.example.com", "/x"), Some(RouteId(2)));
        assert_eq!(r.route("c.b.example.com", "/"), Some(RouteId(5)));
        assert_eq!(r.route("x.example.com", "/api"), Some(RouteId(2)));
        // The bare domain is not covered by its wildcard.
        assert_eq!(r.route("example.com", "/api"), Some(RouteId(1)));
    }

    #[test]
    fn no_match_is_none() {
        let r = Router::new(&[route(None, "/only")]);
        assert_eq!(r.route("h", "/"), None);
        assert_eq!(r.route("h", "/onlyx"), None);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("App.Example.com:8443"), "app.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:8443"), "::1");
        assert_eq!(normalize_host("localhost"), "localhost");
    }
}
