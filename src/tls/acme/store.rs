//! Where ACME state lives: the `cache` folder (the account's credentials and each
//! certificate bundle, written atomically with mode 0600) and, with a shared session
//! store, its key-value side (the ordering lock and the bundle, so replicas share one
//! certificate).
//!
//! A bundle is one PEM text: the chain (leaf first), then the private key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::AcmeConfig;

/// A certificate ready to serve, with its expiry.
#[derive(Debug, Clone)]
pub(super) struct Bundle {
    pub(super) pem: String,
    pub(super) key: Arc<CertifiedKey>,
    /// The leaf's notBefore and notAfter, Unix seconds.
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

impl Bundle {
    /// Parses a bundle; an error says what is wrong with it.
    pub(super) fn parse(pem: String) -> Result<Bundle, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the bundle")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("bad leaf certificate: {e}"))?;
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("bad private key PEM: {e}"))?;
        let key = CertifiedKey::from_der(chain, der, &crate::tls::crypto::provider())
            .map_err(|e| format!("the certificate and key do not match: {e}"))?;
        Ok(Bundle {
            pem,
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }
}

/// The names of one configuration's files and store keys.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) account_file: PathBuf,
    pub(super) bundle_file: PathBuf,
    /// Store key of the shared bundle.
    pub(super) bundle_key: String,
    /// Store key of the ordering lock.
    pub(super) lock_key: String,
}

impl Names {
    /// The account is one per directory; a certificate one per directory and set of names.
    pub(super) fn of(config: &AcmeConfig) -> Names {
        let directory = short_hash(config.directory.as_bytes());
        let mut sorted = config.domains.clone();
        sorted.sort();
        let id = short_hash(format!("{}\n{}", config.directory, sorted.join(",")).as_bytes());
        let first = config.domains.first().map_or("cert", String::as_str);
        Names {
            account_file: config.cache.join(format!("account-{directory}.json")),
            bundle_file: config.cache.join(format!("{first}-{id}.pem")),
            bundle_key: format!("acme:cert:{id}"),
            lock_key: format!("acme:lock:{id}"),
        }
    }
}

fn short_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads a cached file; absent is `Ok(None)`.
pub(super) async fn read(path: &Path) -> std::io::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `text` to `path` atomically (a 0600 temporary file in the same folder,
/// synced, then renamed over it): a reader sees the old file or the new one.
pub(super) async fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || write_blocking(&path, &text))
        .await
        .map_err(std::io::Error::other)?
}

fn write_blocking(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("acme");
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn writes_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pem");
        write(&path, "one").await.unwrap();
        write(&path, "two").await.unwrap();
        assert_eq!(read(&path).await.unwrap().as_deref(), Some("two"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(read(&dir.path().join("none")).await.unwrap().is_none());
    }
}
