//! The `--demo` certificate: when the configured certificate and key are both missing,
//! a self-signed one for localhost is written there (the key with mode 0600), with a
//! loud warning on stderr. Runs once before the proxy starts (blocking file IO).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Why the demo certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DemoCertError {
    /// The configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A folder or file could not be created or written.
    #[error("{action} {}: {source}", path.display())]
    Write {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// For `--demo`: when the certificate and key that `config_path` names are both
/// missing, makes a self-signed one for localhost there. Does nothing when either
/// exists, when the paths use `${ENV}`, or when the file is not valid TOML (the real
/// loader then reports the error with its line).
pub fn ensure_certificate(config_path: &Path) -> Result<(), DemoCertError> {
    let text = std::fs::read_to_string(config_path).map_err(|source| DemoCertError::Read {
        path: config_path.to_path_buf(),
        source,
    })?;
    let value: toml::Table = match text.parse() {
        Ok(value) => value,
        Err(_) => return Ok(()),
    };
    let base = config_path.parent().unwrap_or(Path::new("."));
    let tls = value.get("tls").and_then(|t| t.as_table());
    let path_of = |key: &str| {
        tls.and_then(|t| t.get(key))
            .and_then(|v| v.as_str())
            .filter(|s| !s.contains("${"))
            .map(|s| base.join(s))
    };
    let (Some(cert), Some(key)) = (path_of("cert"), path_of("key")) else {
        return Ok(());
    };
    if cert.exists() || key.exists() {
        return Ok(());
    }
    let generated = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    for dir in [cert.parent(), key.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(write_error("creating", dir))?;
    }
    std::fs::write(&cert, generated.cert.pem()).map_err(write_error("writing", &cert))?;
    write_private(&key, generated.key_pair.serialize_pem().as_bytes())?;
    eprintln!(
        "\n\
         ************************************************************************\n\
         DEMO: generated a SELF-SIGNED certificate for localhost:\n  {}\n  {}\n\
         Browsers will warn about it. Never use it in production: put your real\n\
         certificate and key there instead (see certs/README.md).\n\
         ************************************************************************\n",
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DemoCertError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_error("creating", path))?;
    file.write_all(bytes).map_err(write_error("writing", path))
}

fn write_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DemoCertError {
    let path = path.to_path_buf();
    move |source| DemoCertError::Write {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_certificate_only_when_both_files_are_missing() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            "[tls]\ncert = \"certs/c.pem\"\nkey = \"certs/k.pem\"\n",
        )
        .unwrap();
        ensure_certificate(&config).unwrap();
        let cert = std::fs::read_to_string(dir.path().join("certs/c.pem")).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        let key = dir.path().join("certs/k.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Both exist now: a second run leaves them alone.
        let before = std::fs::read(&key).unwrap();
        ensure_certificate(&config).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), before);
    }

    #[test]
    fn leaves_env_paths_and_bad_toml_to_the_loader_and_names_an_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, "[tls]\ncert = \"${CERT}\"\nkey = \"k.pem\"\n").unwrap();
        ensure_certificate(&config).unwrap();
        std::fs::write(&config, "[tls\n").unwrap();
        ensure_certificate(&config).unwrap();
        assert!(!dir.path().join("k.pem").exists());
        let missing = dir.path().join("nope.toml");
        let error = ensure_certificate(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot read {}: ", missing.display())),
            "{error}"
        );
    }
}
