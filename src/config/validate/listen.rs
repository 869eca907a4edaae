//! Validation of `[listen]`: the https, http and admin addresses (no two alike), the
//! trusted proxies and the worker count. No IO.
//!
//! Part of the `Validator` in `validate.rs`, split out by section.

use std::net::IpAddr;

use super::super::raw::RawListen;
use super::super::ListenConfig;
use super::Validator;

impl Validator<'_> {
    pub(super) fn listen(&mut self, raw: RawListen) -> Option<ListenConfig> {
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
}
