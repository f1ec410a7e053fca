//! Where events go. The scan hands events to a writer thread through a bounded queue and
//! never waits for it: a stalled stdout reader costs dropped events (counted in
//! `hangwatch_sink_dropped_events_total{sink="stdout"}`), not a stalled detector.
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
pub use crate::episode::EventType;
use crate::{config::OutputFormat, metrics::Metrics};

const QUEUE: usize = 4096;

pub struct StdoutSink {
    queue: SyncSender<HangEvent>,
    /// Told when the writer has written everything queued (its queue closed).
    flushed: mpsc::Receiver<()>,
}

impl StdoutSink {
    /// Starts the writer thread. An event whose write fails (stdout closed) is counted
    /// in `metrics`, as are those queued after it.
    pub fn spawn(format: OutputFormat, metrics: Arc<Metrics>) -> std::io::Result<Self> {
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
                        metrics.dropped("stdout", "closed", 1);
                        return;
                    }
                }
            })?;
        Ok(Self { queue, flushed })
    }

    /// Closes the queue and waits until everything queued is written, or `until`.
    /// Returns whether it was.
    pub fn finish(self, until: std::time::Instant) -> bool {
        let Self { queue, flushed, .. } = self;
        drop(queue);
        wait_flushed(&flushed, until)
    }

    /// Queues `event` for stdout without waiting. Returns why it was dropped, if it was:
    /// the reason label of `hangwatch_sink_dropped_events_total` (`queue_full`: stdout is
    /// not read fast enough; `closed`: stdout is gone).
    pub fn send(&self, event: HangEvent) -> Result<(), &'static str> {
        self.queue.try_send(event).map_err(|err| match err {
            TrySendError::Full(_) => "queue_full",
            TrySendError::Disconnected(_) => "closed",
        })
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
