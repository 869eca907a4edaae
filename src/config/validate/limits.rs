//! Validation of `[timeouts]` (every one a non-zero duration) and `[limits]` (header,
//! body and connection bounds). No IO.
//!
//! Part of the `Validator` in `validate.rs`, split out by section.

use super::super::raw::{RawLimits, RawTimeouts};
use super::super::{LimitsConfig, TimeoutsConfig};
use super::Validator;

/// Smallest `max_header_bytes`: hyper's HTTP/1 read buffer cannot be set lower.
const MIN_HEADER_BYTES: u64 = 8192;

impl Validator<'_> {
    pub(super) fn timeouts(&mut self, raw: &RawTimeouts) -> Option<TimeoutsConfig> {
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

    pub(super) fn limits(&mut self, raw: &RawLimits) -> Option<LimitsConfig> {
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
}
