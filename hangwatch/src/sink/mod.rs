//! Where events go. The scan hands events to a writer thread through a bounded queue and
//! never waits for it: a stalled stdout reader costs dropped events (counted), not a
//! stalled detector.
mod event;
mod hub;
pub mod redact;
pub(crate) mod store;
mod text;
mod webhook;

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
};

pub use self::{
    event::{BlockedOn, CycleMember, ExitInfo, HangEvent, LoopStallInfo, Resolution, Workload},
    hub::Hub,
    store::{HISTORY_CAPACITY, ProbeStatus, Store, ms, started_at},
    webhook::{WebhookConfig, WebhookError, WebhookSink},
};
use crate::config::OutputFormat;
pub use crate::episode::EventType;

const QUEUE: usize = 4096;

pub struct StdoutSink {
    queue: SyncSender<HangEvent>,
    pub dropped: Arc<AtomicU64>,
    /// Told when the writer has written everything queued (its queue closed).
    flushed: mpsc::Receiver<()>,
}

impl StdoutSink {
    pub fn spawn(format: OutputFormat) -> std::io::Result<Self> {
        let (queue, events) = mpsc::sync_channel::<HangEvent>(QUEUE);
        let (flushed_tx, flushed) = mpsc::channel();
        thread::Builder::new()
            .name("hangwatch-out".into())
            .spawn(move || {
                let _flushed = Flushed(flushed_tx);
                let stdout = std::io::stdout();
                for event in events {
                    let rendered = match format {
                        OutputFormat::Json => match serde_json::to_string(&event) {
                            Ok(line) => line + "\n",
                            Err(err) => {
                                tracing::error!("cannot serialize event {}: {err}", event.id);
                                continue;
                            }
                        },
                        OutputFormat::Text => text::render(&event),
                    };
                    let mut out = stdout.lock();
                    if let Err(err) = out
                        .write_all(rendered.as_bytes())
                        .and_then(|()| out.flush())
                    {
                        tracing::error!("stdout is gone ({err}); events are no longer printed");
                        return;
                    }
                }
            })?;
        Ok(Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            flushed,
        })
    }

    /// Closes the queue and waits until everything queued is written, or `until`.
    /// Returns whether it was.
    pub fn finish(self, until: std::time::Instant) -> bool {
        let Self { queue, flushed, .. } = self;
        drop(queue);
        wait_flushed(&flushed, until)
    }

    pub fn send(&self, event: HangEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Tells its channel when dropped: a writer thread holds one, so that its end (all written,
/// or the output gone) is seen with a timeout.
pub(crate) struct Flushed(pub(crate) mpsc::Sender<()>);

impl Drop for Flushed {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

pub(crate) fn wait_flushed(flushed: &mpsc::Receiver<()>, until: std::time::Instant) -> bool {
    let left = until.saturating_duration_since(std::time::Instant::now());
    flushed.recv_timeout(left).is_ok()
}
