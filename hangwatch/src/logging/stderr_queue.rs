//! stderr behind a bounded queue: the threads that log hand each formatted line to a
//! writer thread (`hangwatch-log`) and never wait for it. A stderr that is not read (a
//! container runtime's stopped log pipe, `hangwatch run 2>&1 | less` paused) fills its
//! pipe and blocks that thread only; lines beyond the queue are dropped and counted
//! (`dropped_lines`, the `log` sink of `hangwatch_sink_dropped_events_total`).
//!
//! Why not tracing-appender's `non_blocking`: its guard, dropped at exit with a stderr
//! that does not drain, waits up to 1.1 s and then prints its complaint on stdout, the
//! daemon's event stream. Here the last flush has the caller's deadline (`finish`) and
//! nothing else is written anywhere.
use std::{
    io::{self, Write},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender},
    },
    thread,
    time::Instant,
};

/// Lines queued at most: the daemon logs a few lines a minute, tens at start; a burst
/// beyond this while stderr is not read is dropped.
const QUEUE_LINES: usize = 4096;

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it is written.
    Flush(mpsc::Sender<()>),
}

/// The queue's sending end, one per process (the subscriber's writer clones it).
static QUEUE: OnceLock<SyncSender<Message>> = OnceLock::new();
/// Lines dropped because the queue was full (stderr not read fast enough), and because
/// stderr was closed (the writer thread ended at a failed write).
static DROPPED_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_CLOSED: AtomicU64 = AtomicU64::new(0);

/// The writer the subscriber is given: each `write` is one formatted event.
#[derive(Clone)]
pub struct QueuedStderr(SyncSender<Message>);

/// Starts the writer thread (once per process) and returns a writer into its queue.
pub fn start() -> io::Result<QueuedStderr> {
    if let Some(queue) = QUEUE.get() {
        return Ok(QueuedStderr(queue.clone()));
    }
    let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
    thread::Builder::new()
        .name("hangwatch-log".into())
        .spawn(move || write_lines(&lines))?;
    let queue = QUEUE.get_or_init(|| queue);
    Ok(QueuedStderr(queue.clone()))
}

fn write_lines(lines: &Receiver<Message>) {
    let stderr = io::stderr();
    for message in lines {
        match message {
            Message::Line(line) => {
                let mut out = stderr.lock();
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    // stderr closed: nothing more can be said there. The queue's end goes
                    // with this thread, so later lines are counted as dropped.
                    DROPPED_CLOSED.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            Message::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl Write for QueuedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.try_send(Message::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                DROPPED_FULL.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                DROPPED_CLOSED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Log lines dropped so far, by reason (the `reason` label of
/// `hangwatch_sink_dropped_events_total{sink="log"}`): `queue_full`, stderr not read fast
/// enough; `closed`, stderr gone.
pub fn dropped_lines() -> [(&'static str, u64); 2] {
    [
        ("queue_full", DROPPED_FULL.load(Ordering::Relaxed)),
        ("closed", DROPPED_CLOSED.load(Ordering::Relaxed)),
    ]
}

/// Waits until every line logged so far is written to stderr, or `until`. Returns whether
/// it was (true at once if the log is not queued).
pub fn finish(until: Instant) -> bool {
    static FLUSHING: Mutex<()> = Mutex::new(());
    let Some(queue) = QUEUE.get() else {
        return true;
    };
    let _one_at_a_time = FLUSHING.lock().unwrap_or_else(|e| e.into_inner());
    let (done, written) = mpsc::channel();
    // The marker needs a place in the queue: a full queue (stderr not read) is retried
    // until the deadline.
    let mut marker = Message::Flush(done);
    loop {
        match queue.try_send(marker) {
            Ok(()) => break,
            Err(mpsc::TrySendError::Disconnected(_)) => return false,
            Err(mpsc::TrySendError::Full(back)) => {
                if Instant::now() >= until {
                    return false;
                }
                marker = back;
                thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    written
        .recv_timeout(until.saturating_duration_since(Instant::now()))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose queue is full (stderr not read) drops the line and counts it, and
    /// says nothing of it to the caller: logging never fails or waits.
    #[test]
    fn a_full_queue_drops_the_line_and_counts_it() {
        let (queue, _lines) = mpsc::sync_channel(1);
        let mut writer = QueuedStderr(queue);
        let full = || DROPPED_FULL.load(Ordering::Relaxed);
        let before = full();
        writer.write_all(b"first\n").expect("queued");
        writer
            .write_all(b"second\n")
            .expect("dropped, not an error");
        assert_eq!(full() - before, 1);
    }
}
