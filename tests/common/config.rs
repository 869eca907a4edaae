//! A typed builder for the body of a test's `proxy.toml` (everything after the
//! `[listen]` and `[tls]` tables that `TestProxyBuilder` writes): tables of keys,
//! upstreams with their servers, routes, and raw TOML for the rare rest.
//!
//! ```ignore
//! let body = ProxyConfig::new()
//!     .table("session", "idle_timeout = \"2s\"")
//!     .upstream("app", [upstream.server()])
//!     .route(Route::new("/", "app").session(false))
//!     .build();
//! ```
//!
//! Every helper that used to `format!` its own `[upstreams.app]`/`[[routes]]` text
//! builds it here, so a key is spelled in one place.

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route {
    host: Option<String>,
    path: Option<String>,
    upstream: String,
    keys: Vec<String>,
}

impl Route {
    /// A route for `path` (`""` = no `path` key) to upstream `upstream`.
    pub fn new(path: &str, upstream: &str) -> Route {
        Route {
            host: None,
            path: (!path.is_empty()).then(|| path.to_string()),
            upstream: upstream.to_string(),
            keys: Vec::new(),
        }
    }

    /// Only for requests to `host`.
    pub fn host(mut self, host: &str) -> Route {
        self.host = Some(host.to_string());
        self
    }

    /// `session = …`.
    pub fn session(self, on: bool) -> Route {
        self.keys(&format!("session = {on}"))
    }

    /// More route keys, as TOML lines (e.g. `require_user = true`).
    pub fn keys(mut self, lines: &str) -> Route {
        if !lines.trim().is_empty() {
            self.keys.push(lines.to_string());
        }
        self
    }

    fn write(&self, out: &mut String) {
        out.push_str("\n[[routes]]\n");
        if let Some(host) = &self.host {
            out.push_str(&format!("host = \"{host}\"\n"));
        }
        if let Some(path) = &self.path {
            out.push_str(&format!("path = \"{path}\"\n"));
        }
        out.push_str(&format!("upstream = \"{}\"\n", self.upstream));
        for lines in &self.keys {
            out.push_str(lines);
            out.push('\n');
        }
    }
}

/// The body of a `proxy.toml`, built from typed parts (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// `[name]` tables and their key lines, in the order first named.
    tables: Vec<(String, Vec<String>)>,
    /// `[upstreams.NAME]`: servers (TOML array items) and more key lines.
    upstreams: Vec<(String, Vec<String>, Vec<String>)>,
    routes: Vec<Route>,
    /// Written first, as is.
    prelude: Vec<String>,
    /// Written last, as is.
    raw: Vec<String>,
}

impl ProxyConfig {
    pub fn new() -> ProxyConfig {
        ProxyConfig::default()
    }

    /// Adds key lines to table `name` (`session`, `timeouts`, `limits`,
    /// `upstreams.app.health`, ...); the table is written even when `lines` is empty.
    pub fn table(mut self, name: &str, lines: &str) -> ProxyConfig {
        let index = match self.tables.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                self.tables.push((name.to_string(), Vec::new()));
                self.tables.len() - 1
            }
        };
        if !lines.trim().is_empty() {
            self.tables[index].1.push(lines.to_string());
        }
        self
    }

    /// `[upstreams.NAME]` with `servers`.
    pub fn upstream<S: ToString>(
        mut self,
        name: &str,
        servers: impl IntoIterator<Item = S>,
    ) -> ProxyConfig {
        let items = servers
            .into_iter()
            .map(|s| format!("\"{}\"", s.to_string()))
            .collect();
        self.upstreams.push((name.to_string(), items, Vec::new()));
        self
    }

    /// `[upstreams.NAME]` with `servers` given as TOML array items, as is (quoted
    /// addresses or tables such as `{ addr = "…", weight = 3 }`).
    pub fn upstream_items(mut self, name: &str, items: &[String]) -> ProxyConfig {
        self.upstreams
            .push((name.to_string(), items.to_vec(), Vec::new()));
        self
    }

    /// More key lines for upstream `name` (e.g. `affinity = "hash"`).
    pub fn upstream_keys(mut self, name: &str, lines: &str) -> ProxyConfig {
        let upstream = self
            .upstreams
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no upstream {name} yet"));
        if !lines.trim().is_empty() {
            upstream.2.push(lines.to_string());
        }
        self
    }

    pub fn route(mut self, route: Route) -> ProxyConfig {
        self.routes.push(route);
        self
    }

    /// TOML written before everything else, as is (tables a caller wrote by hand).
    pub fn prelude(mut self, toml: &str) -> ProxyConfig {
        if !toml.trim().is_empty() {
            self.prelude.push(toml.to_string());
        }
        self
    }

    /// TOML written after everything else, as is (more tables or routes).
    pub fn raw(mut self, toml: &str) -> ProxyConfig {
        if !toml.trim().is_empty() {
            self.raw.push(toml.to_string());
        }
        self
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        let mut out = String::new();
        for prelude in &self.prelude {
            out.push_str(prelude);
            out.push('\n');
        }
        // Sub-tables of an upstream (`upstreams.app.health`) after the upstreams.
        let (upstream_tables, tables): (Vec<_>, Vec<_>) = self
            .tables
            .iter()
            .partition(|(name, _)| name.starts_with("upstreams."));
        for (name, lines) in tables {
            write_table(&mut out, name, lines);
        }
        for (name, servers, lines) in &self.upstreams {
            out.push_str(&format!(
                "\n[upstreams.{name}]\nservers = [{}]\n",
                servers.join(", ")
            ));
            for lines in lines {
                out.push_str(lines);
                out.push('\n');
            }
        }
        for (name, lines) in upstream_tables {
            write_table(&mut out, name, lines);
        }
        for route in &self.routes {
            route.write(&mut out);
        }
        for raw in &self.raw {
            out.push('\n');
            out.push_str(raw);
            out.push('\n');
        }
        out
    }
}

fn write_table(out: &mut String, name: &str, lines: &[String]) {
    out.push_str(&format!("\n[{name}]\n"));
    for lines in lines {
        out.push_str(lines);
        out.push('\n');
    }
}

impl From<ProxyConfig> for String {
    fn from(config: ProxyConfig) -> String {
        config.build()
    }
}
