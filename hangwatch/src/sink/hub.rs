//! Where each event goes besides stdout: the API store (and through it `watch`), the
//! metrics, and the webhook. The enrich stage calls `publish` once per event; nothing here blocks.
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
        // Per event, O(1): a mass hang of thousands of threads must not cost N² here.
        match event.event {
            super::EventType::Hang | super::EventType::Update => {
                self.metrics.hung_open(&event.id, hung_labels(event));
            }
            super::EventType::Resolved => self.metrics.hung_ended(&event.id),
        }
        if let Some(webhook) = &self.webhook {
            webhook.send(event.clone());
        }
    }
}

/// The labels of a hung thread in `hangwatch_hung_threads`: names only, never ids (a
/// container id or pod UID changes at every restart and would make a new series each time).
/// Pod, namespace and container are empty outside Kubernetes or before the pod is known.
/// The series are bounded by the live episodes, so the names cost nothing once they end.
fn hung_labels(event: &HangEvent) -> HungLabels {
    let name = |v: &Option<String>| v.clone().unwrap_or_default();
    HungLabels {
        kind: event.kind.as_str(),
        namespace: name(&event.workload.namespace),
        pod: name(&event.workload.pod),
        container: name(&event.workload.container),
        comm: event.comm.clone(),
    }
}
