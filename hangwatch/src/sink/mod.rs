//! Where events go. The scan hands events to a writer thread through a bounded queue and
//! never waits for it: a stalled stdout reader costs dropped events (counted), not a
//! stalled detector.
mod event;
mod hub;
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

pub use event::{
    BlockedOn, CycleMember, EventType, ExitInfo, HangEvent, LoopStallInfo, Resolution, Workload,
};
pub use hub::Hub;
pub use store::{HISTORY_CAPACITY, ProbeStatus, Store, ms, started_at};
pub use webhook::{WebhookConfig, WebhookError, WebhookSink, WebhookUrl};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    Json,
    /// A readable multi-line report.
    Text,
}

const QUEUE: usize = 4096;

pub struct StdoutSink {
    queue: SyncSender<HangEvent>,
    pub dropped: Arc<AtomicU64>,
}

impl StdoutSink {
    pub fn spawn(format: OutputFormat) -> std::io::Result<Self> {
        let (queue, events) = mpsc::sync_channel::<HangEvent>(QUEUE);
        thread::Builder::new()
            .name("hangwatch-out".into())
            .spawn(move || {
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
        })
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
