//! How much memory does one session take in the memory store?
//!
//! Fills a `MemoryStore::new(1_100_000)` with 1 000 000 anonymous sessions (the common
//! case) and prints the growth of the resident set (`VmRSS` in /proc/self/status) per
//! session, at a few fill levels: the map grows in steps, so the figure depends on
//! where the count falls between two of its resizes. Linux only.
//!
//! `cargo run --release --example session_memory`

use cloakroom::session::{
    now_ms, Expiry, MemoryStore, PublicId, Session, SessionIndex, SessionStore,
};
use std::time::Duration;

const CAPACITY: usize = 1_100_000;
const SESSIONS: usize = 1_000_000;
const CHECKPOINTS: [usize; 4] = [100_000, 250_000, 500_000, SESSIONS];

/// Resident set size in bytes, from /proc/self/status.
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or("unreadable VmRSS line")?;
    Ok(kib * 1024)
}

async fn fill() -> Result<(), String> {
    let expiry = Expiry::new(
        Duration::from_secs(30 * 60),
        Duration::from_secs(12 * 3600),
        Duration::from_secs(3 * 60),
    );
    let now = now_ms();
    let before = rss_bytes()?;
    let store = MemoryStore::new(CAPACITY);
    println!("MemoryStore::new({CAPACITY}), anonymous sessions; RSS before: {before} bytes");
    println!(
        "{:>10} {:>14} {:>18}",
        "sessions", "RSS growth", "bytes/session"
    );
    let mut stored = 0usize;
    for checkpoint in CHECKPOINTS {
        while stored < checkpoint {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(stored as u64).to_le_bytes());
            store
                .create(&Session::new(PublicId(id), now), expiry)
                .await
                .map_err(|e| e.to_string())?;
            stored += 1;
        }
        let growth = rss_bytes()?.saturating_sub(before);
        println!(
            "{stored:>10} {growth:>14} {:>18.1}",
            growth as f64 / stored as f64
        );
    }
    let count = store.count().await.map_err(|e| e.to_string())?;
    if count != SESSIONS {
        return Err(format!(
            "the store holds {count} sessions, expected {SESSIONS}"
        ));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("session_memory: cannot start a runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fill()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("session_memory: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
