//! What the criterion benches share: the config of the shipped defaults, as an operator
//! runs them.

use cloakroom::config::Config;

/// The smallest valid config: one upstream of two servers, one route, every other key
/// at its default.
const CONFIG: &str = r#"
[tls]
cert = "cert.pem"
key = "key.pem"

[upstreams.app]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[routes]]
path = "/"
upstream = "app"
"#;

/// The shipped defaults. Validation only opens the certificate files, so empty ones in a
/// temporary folder do (they are not loaded).
pub fn shipped_config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "").unwrap();
    std::fs::write(dir.path().join("key.pem"), "").unwrap();
    Config::from_str_with_env(&dir.path().join("bench.toml"), CONFIG, &|_| None)
        .expect("the bench config is valid")
}
