//! The process log: `tracing` events formatted on the thread that logs them, then handed
//! to one writer thread through a bounded queue, so a slow log pipe (journald, a
//! container runtime's log driver, a terminal nobody scrolls) never stalls a worker.
//!
//! Invariants:
//! - A worker never waits for the log: a line goes into the queue with a non-blocking
//!   `try_send` (`tracing-appender`'s lossy [`NonBlocking`] writer); when the queue is
//!   full the line is dropped and counted ([`dropped_lines`], exported as
//!   `cloakroom_log_dropped_total`).
//! - Lines reach stderr in batches: the writer thread drains the queue into a buffer,
//!   writes it with one `write(2)`, then pauses [`LINGER`] so the next batch can gather
//!   (a `write(2)` per access-log line cost ~3.5 µs per request, and waking the writer
//!   per line would cost a futex call on the worker).
//! - The [`LogGuard`] that [`init`] returns flushes every queued line when dropped at a
//!   clean exit.
//!
//! Warnings about one recurring cause go through [`limit`], at most one line per cause
//! per second. The log is process-wide (tracing's global dispatcher), so its drop
//! counter and the warning limiter are too: they are the only statics of the crate.

pub mod limit;

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines the queue holds while the writer is blocked (about 5 MB of typical lines);
/// beyond that lines are dropped and counted.
pub const QUEUE_LINES: usize = 16_384;

/// Bytes gathered before the writer thread writes them out, even mid-batch.
const BATCH_BYTES: usize = 64 * 1024;

/// The writer thread's pause after writing a batch: lines logged meanwhile wait in the
/// queue (no wake-up per line) and reach stderr at most this late.
pub const LINGER: Duration = Duration::from_millis(50);

/// The drop counter of the installed writer (unset when [`init`] was not called, e.g.
/// in tests that run the library in-process).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the queue to the writer thread was full.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Keeps the writer thread; dropping it writes out every queued line (waiting at most
/// about a second when stderr is blocked).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// Installs the global `tracing` subscriber (level from `RUST_LOG`, default `info`;
/// one JSON object per line when `json`) writing through the writer thread.
pub fn init(json: bool) -> LogGuard {
    let (writer, guard) = writer(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if json {
        // One object per line: timestamp, level, target, and every field at the top.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    if let Err(error) = installed {
        eprintln!("cloakroom: logging not set up: {error}");
    }
    LogGuard { _worker: guard }
}

/// The non-blocking, lossy writer in front of `out`, and its guard.
fn writer<W: Write + Send + 'static>(out: W) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("cloakroom-log")
        .finish(Batched::new(out, LINGER))
}

/// The writer thread's end: gathers the lines of one drained queue and writes them
/// out together. `tracing-appender`'s worker calls `write_all` per line and `flush`
/// once the queue is empty.
struct Batched<W: Write> {
    out: W,
    buffer: Vec<u8>,
    linger: Duration,
}

impl<W: Write> Batched<W> {
    fn new(out: W, linger: Duration) -> Self {
        Batched {
            out,
            buffer: Vec::with_capacity(BATCH_BYTES),
            linger,
        }
    }

    /// Writes the gathered lines; a failed write loses them (nobody to tell but
    /// the log itself).
    fn write_out(&mut self) {
        if !self.buffer.is_empty() {
            let _ = self.out.write_all(&self.buffer);
            let _ = self.out.flush();
            self.buffer.clear();
        }
    }
}

impl<W: Write> Write for Batched<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BATCH_BYTES {
            self.write_out();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.write_out();
        // This runs on the log writer thread only, never on a worker.
        std::thread::sleep(self.linger);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records every `write` call.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_of_one_drained_queue_are_written_together_and_none_is_lost_at_exit() {
        let out = Recorder::default();
        let (mut writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(1024)
            .finish(Batched::new(out.clone(), Duration::from_millis(200)));
        writer.write_all(b"first\n").unwrap();
        // The first line wakes the writer, which then lingers; these gather meanwhile.
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let writes = out.0.lock().unwrap().clone();
        let text: String = writes.iter().map(|w| String::from_utf8_lossy(w)).collect();
        assert_eq!(text.lines().count(), 101, "{text}");
        assert!(writes.len() <= 3, "{} writes for 101 lines", writes.len());
        assert_eq!(writer.error_counter().dropped_lines(), 0);
    }

    /// An output that never returns, like a pipe nobody reads.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            std::thread::park();
            Ok(0)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_instead_of_blocking_the_caller() {
        let (mut writer, _guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(8)
            .finish(Batched::new(Stuck, Duration::ZERO));
        let line = vec![b'x'; BATCH_BYTES];
        // The first line makes the writer write (and hang); the queue then fills.
        for _ in 0..100 {
            writer.write_all(&line).unwrap();
        }
        assert!(writer.error_counter().dropped_lines() >= 80);
    }
}
