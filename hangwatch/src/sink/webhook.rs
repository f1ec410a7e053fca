//! `--webhook URL`: POSTs each event's JSON to a receiver (an alert relay, a chat bridge).
//!
//! The scan hands events over through a bounded queue and never waits: a receiver that is
//! down or slow costs dropped events, counted in `hangwatch_sink_dropped_events_total`,
//! never a late detection. Each event gets a bounded number of attempts, each bounded in
//! time; connection errors, 429 and 5xx are retried with a growing pause, other answers
//! are final.
use std::{
    sync::{
        Arc,
        mpsc::{self, SyncSender, TrySendError},
    },
    thread,
    time::Duration,
};

use super::HangEvent;
use crate::metrics::Metrics;

/// Events waiting for delivery; more are dropped.
const QUEUE: usize = 256;
/// Attempts per event (the first and its retries).
const ATTEMPTS: u32 = 3;
/// The pause before the first retry; doubled before each next one.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of one attempt: connect, send, read the answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL `{url}`: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("cannot start the webhook thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A checked webhook URL: `http://HOST[:PORT]/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let bad = |reason| WebhookError::BadUrl {
            url: text.to_owned(),
            reason,
        };
        let uri: ureq::http::Uri = text.parse().map_err(|_| bad("not a valid URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; use http:// (a relay on the node or in the cluster)",
                ));
            }
            _ => return Err(bad("must start with http://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("has no host"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct WebhookSink {
    queue: SyncSender<HangEvent>,
    metrics: Arc<Metrics>,
    /// Told when the delivery thread has sent everything queued.
    flushed: mpsc::Receiver<()>,
}

impl WebhookSink {
    pub fn spawn(url: WebhookUrl, metrics: Arc<Metrics>) -> Result<Self, WebhookError> {
        let (queue, events) = mpsc::sync_channel::<HangEvent>(QUEUE);
        let worker_metrics = Arc::clone(&metrics);
        let (flushed_tx, flushed) = mpsc::channel();
        thread::Builder::new()
            .name("hangwatch-webhook".into())
            .spawn(move || {
                let _flushed = super::Flushed(flushed_tx);
                deliver_all(&url, &events, &worker_metrics);
            })
            .map_err(WebhookError::Thread)?;
        Ok(Self {
            queue,
            metrics,
            flushed,
        })
    }

    /// Closes the queue and waits until everything queued is delivered (or given up), or
    /// `until`. Returns whether it was.
    pub fn finish(self, until: std::time::Instant) -> bool {
        let Self { queue, flushed, .. } = self;
        drop(queue);
        super::wait_flushed(&flushed, until)
    }

    /// Queues the event; never blocks.
    pub fn send(&self, event: HangEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.dropped("webhook", "queue_full", 1);
            }
        }
    }
}

fn deliver_all(url: &WebhookUrl, events: &mpsc::Receiver<HangEvent>, metrics: &Metrics) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .http_status_as_error(false)
        .user_agent(concat!("hangwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut failing = false;
    for event in events {
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!("cannot serialize event {}: {err}", event.id);
                continue;
            }
        };
        match deliver(&agent, url, &body, metrics) {
            Ok(()) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!("webhook {url} accepts events again");
                }
            }
            Err(reason) => {
                metrics.dropped("webhook", "failed", 1);
                // One line when it starts failing, not one per event.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "webhook {url}: event {} not delivered after {ATTEMPTS} attempts: {reason}",
                        event.id
                    );
                }
            }
        }
    }
}

/// Delivers one event, retrying what may succeed later. Returns why it gave up.
fn deliver(
    agent: &ureq::Agent,
    url: &WebhookUrl,
    body: &[u8],
    metrics: &Metrics,
) -> Result<(), String> {
    let mut pause = FIRST_RETRY_PAUSE;
    let mut attempt = 1;
    loop {
        let (retry, reason) = match agent
            .post(url.as_str())
            .header("content-type", "application/json")
            .send(body)
        {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    metrics.webhook_request(true);
                    return Ok(());
                }
                let retry = status.is_server_error() || status.as_u16() == 429;
                (retry, format!("the receiver answered {status}"))
            }
            Err(err) => (true, err.to_string()),
        };
        metrics.webhook_request(false);
        if !retry || attempt >= ATTEMPTS {
            return Err(reason);
        }
        tracing::debug!("webhook attempt {attempt} failed ({reason}); retrying in {pause:?}");
        thread::sleep(pause);
        pause *= 2;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls() {
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/hook").is_ok());
        assert!(WebhookUrl::parse("http://alerts.example/x").is_ok());
        for bad in ["https://x/", "ftp://x/", "127.0.0.1:80", "", "http://"] {
            let err = WebhookUrl::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
