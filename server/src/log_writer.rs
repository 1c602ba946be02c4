//! Where log lines go: appended to a buffer in memory by whichever thread
//! logs, and written out by a thread of its own every [`WRITE_INTERVAL`]
//! (sooner once [`WRITE_AT`] bytes wait), so a busy server makes about a
//! hundred write(2) calls a second whatever its request rate.
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands each line to
//! its thread through a channel and wakes it, and the thread writes as soon
//! as the channel is empty, which under steady load is after every line.
//! At ~10k req/s (one audit line each) the wake-ups and the writer thread's
//! spinning took 12% of the server's CPU samples (perf, GET /v1/models).
//! Here a line costs a lock and a copy; the writer is woken only when the
//! buffer goes from empty to not, or fills.
//!
//! Never lossy: past [`MAX_PENDING`] bytes (the sink is stuck) loggers wait
//! for the writer. [`FlushOnDrop`] writes what is left and joins the thread;
//! a process killed outright loses at most the last interval's lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in memory.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes waiting that wake the writer before the interval ends.
pub const WRITE_AT: usize = 64 << 10;

/// Bytes waiting past which loggers wait for the writer.
pub const MAX_PENDING: usize = 8 << 20;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer: the first bytes of a batch, a full buffer, close.
    filled: Condvar,
    /// Wakes loggers waiting for room.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` for `tracing_subscriber::fmt`: cheap to clone.
#[derive(Clone)]
pub struct BatchedWriter(Arc<Shared>);

/// Writes what is left and stops the writer thread when dropped.
#[must_use = "dropping it stops the log writer"]
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A writer whose lines reach `sink` from a thread named `thread_name`.
pub fn batched<W: Write + Send + 'static>(
    sink: W,
    thread_name: &str,
) -> std::io::Result<(BatchedWriter, FlushOnDrop)> {
    let shared = Arc::new(Shared::default());
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name(thread_name.into())
        .spawn(move || write_until_closed(&for_thread, sink))?;
    Ok((
        BatchedWriter(Arc::clone(&shared)),
        FlushOnDrop {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_until_closed(shared: &Shared, mut sink: impl Write) {
    let mut out = Vec::new();
    loop {
        let closed = {
            let mut pending = shared.lock();
            while pending.bytes.is_empty() && !pending.closed {
                pending = shared
                    .filled
                    .wait(pending)
                    .unwrap_or_else(|e| e.into_inner());
            }
            // Let the batch grow for an interval, unless it is big already.
            if pending.bytes.len() < WRITE_AT && !pending.closed {
                pending = shared
                    .filled
                    .wait_timeout(pending, WRITE_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut out);
            pending.closed
        };
        shared.drained.notify_all();
        // A sink that fails (stderr closed) loses these lines; there is
        // nowhere left to say so.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
        out.clear();
        if closed && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl Write for &BatchedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let shared = &self.0;
        let mut pending = shared.lock();
        while pending.bytes.len() >= MAX_PENDING && !pending.closed {
            pending = shared
                .drained
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(bytes);
        let full = pending.bytes.len() >= WRITE_AT && pending.bytes.len() - bytes.len() < WRITE_AT;
        drop(pending);
        if was_empty || full {
            shared.filled.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = &'a BatchedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.filled.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink whose bytes and write count the test can read.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut r = self.0.lock().unwrap();
            r.0.extend_from_slice(bytes);
            r.1 += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_in_order_in_few_writes_and_the_guard_flushes() {
        let sink = Recorded::default();
        let (writer, guard) = batched(sink.clone(), "test-log-writer").unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        let mut w = writer.make_writer();
                        w.write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 20_000);
        assert!(writes < 1000, "{writes} writes for 20000 lines");
    }

    #[test]
    fn a_lone_line_is_written_within_the_interval() {
        let sink = Recorded::default();
        let (writer, _guard) = batched(sink.clone(), "test-log-writer").unwrap();
        writer.make_writer().write_all(b"alone\n").unwrap();
        let start = Instant::now();
        while sink.0.lock().unwrap().0.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the line was not written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.0.lock().unwrap().0, b"alone\n");
    }
}
