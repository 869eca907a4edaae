//! Sessions of the memory store that survive a restart (`session.persist = "path"`).
//!
//! The snapshot is written atomically (a temporary file beside it, fsync, rename,
//! fsync of the folder) every `persist_interval` and once more after the last
//! connection closed at shutdown; it is loaded at start, dropping expired sessions.
//! A corrupt, truncated or unreadable snapshot never stops the start: it is moved
//! aside (`<path>.corrupt-<unix seconds>`) with a warning and the proxy starts empty.
//!
//! File: `CLOAKSN1` ‖ count (u64 LE) ‖ count × (token (32) ‖ length (u32 LE) ‖
//! `session::record` bytes) ‖ SHA-256 of everything before it. The tokens are the
//! store's keys: the file is as secret as the sessions (mode 0600), and only cookies
//! MAC'd under the same `session.secret` can name them.
//!
//! All file IO here is blocking: callers run it in `spawn_blocking`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::digest;

use super::MemoryStore;
use crate::session::{now_ms, record, Expiry, Token};
use crate::shutdown::Signal;

const MAGIC: &[u8; 8] = b"CLOAKSN1";
const DIGEST_LEN: usize = 32;

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot is corrupt or truncated ({0})")]
    Corrupt(&'static str),
}

/// The memory store's snapshots: where, how often, and of which store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
}

impl Snapshots {
    /// Snapshots of `store` at `path`, written every `interval`.
    pub fn new(store: Arc<MemoryStore>, path: PathBuf, interval: Duration) -> Snapshots {
        Snapshots {
            store,
            path,
            interval,
        }
    }

    /// The store whose sessions are saved.
    pub fn store(&self) -> Arc<MemoryStore> {
        self.store.clone()
    }

    /// Loads the snapshot into the store, if there is one. Never fails the start: a
    /// bad file is moved aside and logged. Returns how many sessions were restored.
    pub fn load(&self, expiry: Expiry) -> usize {
        match read(&self.path) {
            Ok(None) => 0,
            Ok(Some(entries)) => {
                let now = now_ms();
                let mut restored = 0;
                for (token, session) in entries {
                    if expiry.allows(session.created, session.last_seen, now)
                        && self.store.restore(token, &session)
                    {
                        restored += 1;
                    }
                }
                tracing::info!(restored, path = %self.path.display(), "sessions restored from the snapshot");
                restored
            }
            Err(error) => {
                let aside = aside_path(&self.path);
                let moved = std::fs::rename(&self.path, &aside);
                tracing::warn!(
                    %error,
                    path = %self.path.display(),
                    moved_to = %aside.display(),
                    moved = moved.is_ok(),
                    "session snapshot unusable; starting with no sessions"
                );
                0
            }
        }
    }

    /// Writes the live sessions now (blocking). Returns how many.
    pub fn save(&self, expiry: Expiry) -> std::io::Result<usize> {
        let sessions = self.store.live_sessions(now_ms(), expiry);
        write(&self.path, &sessions)?;
        Ok(sessions.len())
    }

    /// Writes the snapshot every `interval` until `stop` is raised. The final write
    /// happens in `lib::run` once the last connection closed.
    pub(crate) async fn run(self, stop: Arc<Signal>, expiry: impl Fn() -> Expiry) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.wait() => return,
            }
            self.save_in_background(expiry()).await;
        }
    }

    /// [`Snapshots::save`] off the runtime threads, logging the outcome.
    pub(crate) async fn save_in_background(&self, expiry: Expiry) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.save(expiry)).await {
            Ok(Ok(saved)) => tracing::debug!(saved, "session snapshot written"),
            Ok(Err(error)) => tracing::warn!(
                %error,
                path = %self.path.display(),
                "could not write the session snapshot; the previous one stays"
            ),
            Err(error) => tracing::warn!(%error, "session snapshot task failed"),
        }
    }
}

/// `<path>.corrupt-<unix seconds>`.
fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", now_ms() / 1000));
    PathBuf::from(name)
}

/// Writes `sessions` to `path` atomically.
fn write(path: &Path, sessions: &[(Token, crate::session::Session)]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(16 + sessions.len() * 80);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
    for (token, session) in sessions {
        let encoded = record::encode(session);
        let len = u32::try_from(encoded.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "session too large")
        })?;
        bytes.extend_from_slice(&token.0);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&encoded);
    }
    let sum = digest::digest(&digest::SHA256, &bytes);
    bytes.extend_from_slice(sum.as_ref());

    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = PathBuf::from(temp_name);
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads a snapshot: `None` when there is no file yet.
fn read(path: &Path) -> Result<Option<Vec<(Token, crate::session::Session)>>, SnapshotError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let body_len = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or(SnapshotError::Corrupt("shorter than its checksum"))?;
    let (body, sum) = bytes.split_at(body_len);
    if digest::digest(&digest::SHA256, body).as_ref() != sum {
        return Err(SnapshotError::Corrupt("checksum mismatch"));
    }
    let mut cursor = Cursor(body);
    if cursor.take(MAGIC.len())? != MAGIC {
        return Err(SnapshotError::Corrupt("not a cloakroom snapshot"));
    }
    let count = u64::from_le_bytes(cursor.array()?);
    let mut entries = Vec::new();
    for _ in 0..count {
        let token = Token(cursor.array()?);
        let len = u32::from_le_bytes(cursor.array()?) as usize;
        let session = record::decode(cursor.take(len)?)
            .map_err(|_| SnapshotError::Corrupt("a session does not decode"))?;
        entries.push((token, session));
    }
    if !cursor.0.is_empty() {
        return Err(SnapshotError::Corrupt("trailing bytes"));
    }
    Ok(Some(entries))
}

/// Reads a byte slice front to back, failing on a short read.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError::Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{PublicId, Session, SessionStore as _};

    const EXPIRY: Expiry = Expiry {
        idle_ms: 60_000,
        absolute_ms: 600_000,
        touch_ms: 0,
    };

    fn snapshots(dir: &Path) -> Snapshots {
        Snapshots {
            store: Arc::new(MemoryStore::new(100)),
            path: dir.join("sessions.snap"),
            interval: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn save_and_load_round_trip_drops_expired() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshots(dir.path());
        let now = now_ms();
        let live = a
            .store
            .create(&Session::new(PublicId([1; 16]), now), EXPIRY)
            .await
            .unwrap();
        let stale = a
            .store
            .create(&Session::new(PublicId([2; 16]), now - 30_000), EXPIRY)
            .await
            .unwrap();
        assert_eq!(a.save(EXPIRY).unwrap(), 2);
        let b = snapshots(dir.path());
        let short = Expiry {
            idle_ms: 20_000,
            ..EXPIRY
        };
        assert_eq!(b.load(short), 1);
        assert!(b.store.load(&live, now, EXPIRY).await.unwrap().is_some());
        assert!(b.store.load(&stale, now, EXPIRY).await.unwrap().is_none());
    }

    #[test]
    fn corrupt_or_truncated_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshots(dir.path());
        a.save(EXPIRY).unwrap();
        let mut bytes = std::fs::read(&a.path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&a.path, &bytes).unwrap();
        assert_eq!(snapshots(dir.path()).load(EXPIRY), 0);
        assert!(!a.path.exists(), "moved aside");
        let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(aside.len(), 1);
        // No file at all is simply an empty start.
        assert_eq!(snapshots(dir.path()).load(EXPIRY), 0);
    }
}
