//! The one rustls crypto provider of the process (server, upstream, store and IdP
//! clients, ACME), in a file of its own so the stores' TLS clients take it without
//! importing the listener's TLS setup.

/// The crypto provider of every TLS connection the proxy makes or accepts: ring.
///
/// aws-lc-rs was measured against it per full handshake (X25519 + ECDSA P-256, one
/// request, 500 new connections/s, proxy on one core): 340, 353, 320 µs against ring's
/// 367, 327, 327 µs, no difference; ring's X25519 and P-256 use the CPU's ADX/BMI2
/// instructions here. So the smaller dependency stays.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
