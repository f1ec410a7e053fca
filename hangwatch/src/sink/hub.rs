//! Where each event goes besides stdout: the API store (and through it `watch`), the
//! metrics, and the webhook. The scan calls `publish` once per event; nothing here blocks.
use std::{sync::Arc, time::Duration};

use super::{HangEvent, Store, WebhookSink};
use crate::metrics::{HungLabels, Metrics};

pub struct Hub {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub webhook: Option<WebhookSink>,
}

impl Hub {
    pub fn publish(&self, event: &HangEvent) {
        self.metrics.event(
            event.event,
            event.kind,
            Duration::from_millis(event.duration_ms),
        );
        self.store.record(event);
        self.metrics
            .set_hung(self.store.current().iter().map(|e| hung_labels(e)));
        if let Some(webhook) = &self.webhook {
            webhook.send(event.clone());
        }
    }
}

/// The labels of a hung thread in `hangwatch_hung_threads`. Pod, namespace and container
/// stay empty until reports carry them (Kubernetes attribution).
fn hung_labels(event: &HangEvent) -> HungLabels {
    HungLabels {
        kind: event.kind.as_str(),
        namespace: String::new(),
        pod: String::new(),
        container: String::new(),
        comm: event.comm.clone(),
    }
}
