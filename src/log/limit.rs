//! Warnings rate-limited per cause: during an upstream outage every failing request
//! would warn; instead one line per cause (upstream + server + error kind, say) gets
//! through per [`INTERVAL`], and it says how many were suppressed since the last one.
//!
//! Cost: one hash of the cause and a few relaxed atomics in a fixed table; no lock, no
//! allocation. Causes share [`SLOTS`] slots by hash; a slot remembers the cause it
//! limits, and a different cause landing on it takes it over (that line gets through,
//! the previous cause's suppressed count is forgotten), so a collision can only let
//! more lines through, never hide a new cause.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one line per cause this often.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Causes limited independently (more distinct causes share slots).
const SLOTS: usize = 1024;

/// What a warning is about, hashed: build it from the parts that make two warnings the
/// same cause (`Cause::of(&("attempt", upstream, server, kind))`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause(u64);

impl Cause {
    /// The cause made of `parts`.
    pub fn of(parts: &impl Hash) -> Cause {
        // SipHash with fixed keys: stable within the process, which is all we need.
        let mut hasher = std::hash::DefaultHasher::new();
        parts.hash(&mut hasher);
        // 0 marks an empty slot.
        Cause(hasher.finish().max(1))
    }
}

struct Slot {
    /// The cause this slot limits (0: none yet).
    cause: AtomicU64,
    /// When the next line may go out, in ms since [`epoch`].
    next_ms: AtomicU64,
    /// Lines suppressed since the last one that went out.
    suppressed: AtomicU64,
}

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        cause: AtomicU64::new(0),
        next_ms: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
    }
}; SLOTS];

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a warning about `cause` may be logged now: `Some(suppressed)` (the lines
/// about it held back since the last one; log it in the line) or `None` (skip it).
pub fn admit(cause: Cause) -> Option<u64> {
    admit_at(&TABLE, cause, now_ms())
}

fn admit_at(table: &[Slot], cause: Cause, now: u64) -> Option<u64> {
    let index = usize::try_from(cause.0 % SLOTS as u64).unwrap_or(0);
    let slot = table.get(index)?;
    let interval = u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX);
    if slot.cause.load(Ordering::Relaxed) != cause.0 {
        slot.cause.store(cause.0, Ordering::Relaxed);
        slot.suppressed.store(0, Ordering::Relaxed);
        slot.next_ms
            .store(now.saturating_add(interval), Ordering::Relaxed);
        return Some(0);
    }
    let next = slot.next_ms.load(Ordering::Relaxed);
    if now < next
        || slot
            .next_ms
            .compare_exchange(
                next,
                now.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        slot.suppressed.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    Some(slot.suppressed.swap(0, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Vec<Slot> {
        (0..SLOTS)
            .map(|_| Slot {
                cause: AtomicU64::new(0),
                next_ms: AtomicU64::new(0),
                suppressed: AtomicU64::new(0),
            })
            .collect()
    }

    #[test]
    fn one_line_per_cause_per_interval_with_the_suppressed_count() {
        let table = table();
        let down = Cause::of(&("attempt", "app", "127.0.0.1:9001", 1u8));
        let other = Cause::of(&("attempt", "app", "127.0.0.1:9002", 1u8));
        assert_ne!(down, other);
        assert_eq!(admit_at(&table, down, 10), Some(0));
        for t in 11..20 {
            assert_eq!(admit_at(&table, down, t), None);
        }
        assert_eq!(
            admit_at(&table, other, 20),
            Some(0),
            "another cause is not held"
        );
        assert_eq!(admit_at(&table, down, 1009), None);
        assert_eq!(admit_at(&table, down, 1010), Some(10));
        assert_eq!(admit_at(&table, down, 1011), None);
        assert_eq!(admit_at(&table, down, 2010), Some(1));
        assert_eq!(admit_at(&table, down, 5000), Some(0));
    }

    #[test]
    fn the_process_table_admits_the_first_warning_of_a_cause() {
        let cause = Cause::of(&("limit test", line!()));
        assert_eq!(admit(cause), Some(0));
        assert_eq!(admit(cause), None);
    }
}
