//! The router: any host and path (and any table of routes) give a route or none,
//! never a panic; the chosen route's prefix matches the path.
#![no_main]

use cloakroom::config::{HostPattern, RouteConfig};
use cloakroom::router::{normalize_host, Router};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\n');
    let host = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let routes: Vec<RouteConfig> = parts
        .take(16)
        .map(|line| {
            let (host, path) = line.split_once(' ').unwrap_or(("", line));
            RouteConfig {
                host: match host {
                    "" => None,
                    h if h.starts_with("*.") => {
                        Some(HostPattern::Suffix(h[1..].to_ascii_lowercase()))
                    }
                    h => Some(HostPattern::Exact(h.to_ascii_lowercase())),
                },
                path: format!("/{}", path.trim_start_matches('/')),
                upstream: 0,
                session: true,
                csrf: true,
                require_user: false,
                login_url: None,
                timeout: None,
            }
        })
        .collect();
    let router = Router::new(&routes);
    let host = normalize_host(host);
    if let Some(id) = router.route(&host, path) {
        let route = &routes[id.0];
        assert!(
            path.starts_with(route.path.trim_end_matches('/')),
            "{path} {}",
            route.path
        );
    }
});
