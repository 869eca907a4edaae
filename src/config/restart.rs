//! The settings that take effect only at start ([`RestartOnly`]): the sockets, the
//! worker threads and connection limits the listeners are built with, where sessions
//! live (the store kind and its connection table, the memory store's bound and
//! snapshot file), and the log format. A reload compares them whole with the values
//! the proxy started with and refuses any change, naming each changed key, so a reload
//! never half-applies a file (a new store on paper, the old one serving).
//!
//! Every field is named in [`RestartOnly::changes`] by destructuring, so a key added
//! here cannot be forgotten in the comparison. Messages never print a store URL (it
//! may hold a password).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{AcmeConfig, Config, ConfigError, LogFormat, StoreKind};

/// Every key that needs a restart, as the proxy started with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOnly {
    /// `listen.https`: the socket is bound once.
    pub https: SocketAddr,
    /// `listen.http`.
    pub http: Option<SocketAddr>,
    /// `listen.admin`.
    pub admin: Option<SocketAddr>,
    /// `listen.workers`: the accept threads are started once.
    pub workers: usize,
    /// `limits.max_connections`: the connection semaphore is sized once.
    pub max_connections: usize,
    /// `limits.max_header_bytes`: the HTTP servers' buffers are sized once.
    pub max_header_bytes: usize,
    /// `session.store` with its connection table (`[session.redis]`,
    /// `[session.postgres]`, `[session.memcached]`): the store is opened once.
    pub store: StoreKind,
    /// `session.max_sessions`: the memory store's bound.
    pub max_sessions: usize,
    /// `session.persist`: the memory store's snapshot file, loaded at start.
    pub persist: Option<PathBuf>,
    /// `session.persist_interval`: the snapshot task's period.
    pub persist_interval: Duration,
    /// `log.format`: the log writer is set up before the config is served.
    pub log_format: LogFormat,
    /// `[tls.acme]`: the ordering task and the ALPN list are set up once.
    pub acme: Option<AcmeConfig>,
}

impl RestartOnly {
    /// The restart-only settings of `config`.
    pub fn of(config: &Config) -> RestartOnly {
        RestartOnly {
            https: config.listen.https,
            http: config.listen.http,
            admin: config.listen.admin,
            workers: config.listen.workers,
            max_connections: config.limits.max_connections,
            max_header_bytes: config.limits.max_header_bytes,
            store: config.session.store.clone(),
            max_sessions: config.session.max_sessions,
            persist: config.session.persist.clone(),
            persist_interval: config.session.persist_interval,
            log_format: config.log.format,
            acme: config.tls.acme.clone(),
        }
    }

    /// One error per key whose value in `next` differs from `self`, located in
    /// `next`'s file; empty when a reload to `next` may go ahead.
    pub fn changes(&self, next: &Config) -> Vec<ConfigError> {
        let new = RestartOnly::of(next);
        if *self == new {
            return Vec::new();
        }
        let RestartOnly {
            https,
            http,
            admin,
            workers,
            max_connections,
            max_header_bytes,
            store,
            max_sessions,
            persist,
            persist_interval,
            log_format,
            acme,
        } = self;
        let mut changed: Vec<(&'static str, String)> = Vec::new();
        let mut compare = |key: &'static str, same: bool, values: &dyn Fn() -> String| {
            if !same {
                changed.push((key, values()));
            }
        };
        compare("tls.acme", *acme == new.acme, &|| {
            "the [tls.acme] table changed".to_owned()
        });
        compare("listen.https", *https == new.https, &|| {
            from_to(https, &new.https)
        });
        compare("listen.http", *http == new.http, &|| {
            from_to(&Shown(*http), &Shown(new.http))
        });
        compare("listen.admin", *admin == new.admin, &|| {
            from_to(&Shown(*admin), &Shown(new.admin))
        });
        compare("listen.workers", *workers == new.workers, &|| {
            from_to(workers, &new.workers)
        });
        compare(
            "limits.max_connections",
            *max_connections == new.max_connections,
            &|| from_to(max_connections, &new.max_connections),
        );
        compare(
            "limits.max_header_bytes",
            *max_header_bytes == new.max_header_bytes,
            &|| from_to(max_header_bytes, &new.max_header_bytes),
        );
        match (store, &new.store) {
            (StoreKind::Redis(old), StoreKind::Redis(now)) => {
                compare("session.redis", old == now, &|| {
                    "its connection settings changed".to_owned()
                });
            }
            (StoreKind::Memcached(old), StoreKind::Memcached(now)) => {
                compare("session.memcached", old == now, &|| {
                    "its connection settings changed".to_owned()
                });
            }
            (StoreKind::Postgres(old), StoreKind::Postgres(now)) => {
                compare("session.postgres", old == now, &|| {
                    "its connection settings changed".to_owned()
                });
            }
            (old, now) => compare("session.store", old == now, &|| {
                from_to(&kind(old), &kind(now))
            }),
        }
        compare(
            "session.max_sessions",
            *max_sessions == new.max_sessions,
            &|| from_to(max_sessions, &new.max_sessions),
        );
        compare("session.persist", *persist == new.persist, &|| {
            let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
            from_to(&Shown(path(persist)), &Shown(path(&new.persist)))
        });
        compare(
            "session.persist_interval",
            *persist_interval == new.persist_interval,
            &|| {
                from_to(
                    &humantime::format_duration(*persist_interval),
                    &humantime::format_duration(new.persist_interval),
                )
            },
        );
        compare("log.format", *log_format == new.log_format, &|| {
            from_to(&format(*log_format), &format(new.log_format))
        });
        changed
            .into_iter()
            .map(|(key, what)| {
                next.error_at(
                    key,
                    format!(
                        "{what}, but this key takes effect only at start: restart cloakroom \
                         to apply it (the running configuration stays)"
                    ),
                )
            })
            .collect()
    }
}

/// `changed from A to B`.
fn from_to(old: &dyn std::fmt::Display, new: &dyn std::fmt::Display) -> String {
    format!("changed from {old} to {new}")
}

/// An optional value as the file would spell it (`off` when absent).
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => write!(f, "\"{value}\""),
            None => f.write_str("(unset)"),
        }
    }
}

/// The store's name in the file, never its URL.
fn kind(store: &StoreKind) -> &'static str {
    match store {
        StoreKind::Memory => "\"memory\"",
        StoreKind::Redis(_) => "\"redis\"",
        StoreKind::Cookie => "\"cookie\"",
        StoreKind::Postgres(_) => "\"postgres\"",
        StoreKind::Memcached(_) => "\"memcached\"",
    }
}

/// `log.format` as written.
fn format(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Text => "\"text\"",
        LogFormat::Json => "\"json\"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[listen]\nhttps = \"127.0.0.1:8443\"\n\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\n\
                        [upstreams.app]\nservers = [\"127.0.0.1:9001\"]\n\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n";

    fn parse(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        for file in ["c.pem", "k.pem"] {
            std::fs::write(dir.path().join(file), "x").unwrap();
        }
        let env = |_: &str| None;
        Config::from_str_with_env(&dir.path().join("proxy.toml"), text, &env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn keys(old: &str, new: &str) -> Vec<String> {
        RestartOnly::of(&parse(old))
            .changes(&parse(new))
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[test]
    fn reloadable_changes_are_not_restart_only() {
        let changed = BASE.replace("path = \"/\"", "path = \"/app\"")
            + "\n[session]\nidle_timeout = \"5m\"\ncookie = \"__Host-other\"\n[timeouts]\nconnect = \"1s\"\n";
        assert_eq!(keys(BASE, &changed), Vec::<String>::new());
    }

    #[test]
    fn every_restart_only_key_is_named_and_located() {
        let changed = BASE
            .replace("8443", "9443")
            .replace("[tls]", "http = \"127.0.0.1:8080\"\nworkers = 3\n\n[tls]")
            + "\n[limits]\nmax_connections = 5\nmax_header_bytes = 9000\n\
             [session]\nstore = \"cookie\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             max_sessions = 10\n[log]\nformat = \"json\"\n";
        assert_eq!(
            keys(BASE, &changed),
            [
                "listen.https",
                "listen.http",
                "listen.workers",
                "limits.max_connections",
                "limits.max_header_bytes",
                "session.store",
                "session.max_sessions",
                "log.format",
            ]
        );
        let errors = RestartOnly::of(&parse(BASE)).changes(&parse(&changed));
        let text = errors[0].to_string();
        assert!(
            text.contains(
                "proxy.toml:2:9: listen.https: changed from 127.0.0.1:8443 to 127.0.0.1:9443"
            ),
            "{text}"
        );
        assert!(text.contains("restart"), "{text}");
        assert!(errors[5].message.contains("from \"memory\" to \"cookie\""));
    }

    #[test]
    fn persist_and_store_tables_are_restart_only_and_urls_stay_hidden() {
        let persisted = BASE.to_owned()
            + "\n[session]\nsecret = \"0123456789abcdef0123456789abcdef\"\npersist = \"/tmp/s.snap\"\n";
        assert_eq!(keys(BASE, &persisted), ["session.persist"]);
        let every = persisted.replace("s.snap\"", "s.snap\"\npersist_interval = \"1m\"");
        assert_eq!(keys(&persisted, &every), ["session.persist_interval"]);
        let redis = |url: &str| {
            BASE.to_owned()
                + &format!(
                    "\n[session]\nstore = \"redis\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
                     [session.redis]\nurl = \"{url}\"\n"
                )
        };
        let errors = RestartOnly::of(&parse(&redis("redis://:pw1@127.0.0.1:6379")))
            .changes(&parse(&redis("redis://:pw2@127.0.0.1:6380")));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "session.redis");
        assert!(!errors[0].to_string().contains("pw"), "{}", errors[0]);
    }
}
