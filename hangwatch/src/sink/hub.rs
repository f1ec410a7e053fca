//! Where each event goes besides stdout: the API store (and through it `watch`), the
//! metrics, and the webhook. The enrich stage calls `publish` once per event; nothing here blocks.
use std::{sync::Arc, time::Duration};

use super::{EventType, HangEvent, Store, WebhookSink, redact::Redaction};
use crate::{
    meta::owner::owner_of,
    metrics::{HungLabels, Metrics},
};

pub struct Hub {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub webhook: Option<WebhookSink>,
    /// What the outputs leave out (`--redact-*`).
    pub redaction: Redaction,
}

impl Hub {
    /// Hands `event` to the store, the metrics and the webhook; returns it as stdout must
    /// print it (redacted as the flags say).
    pub fn publish(&self, mut event: HangEvent) -> HangEvent {
        self.redaction.everywhere(&mut event);
        self.metrics.event(
            event.event,
            event.kind,
            Duration::from_millis(event.duration_ms),
        );
        // Who may read the episode in the API: its process's owner, read once while the
        // process is there (a read of its credentials, which never waits on the process).
        let owner = match event.event {
            EventType::Hang | EventType::Update if self.store.owner(&event.id).is_none() => {
                owner_of(event.pid)
            }
            _ => None,
        };
        // The store keeps kernel addresses: the API strips them per caller.
        self.store.record(&event, owner);
        // Per event, O(1): a mass hang of thousands of threads must not cost N² here.
        match event.event {
            EventType::Hang | EventType::Update => {
                self.metrics.hung_open(&event.id, hung_labels(&event));
            }
            EventType::Resolved => self.metrics.hung_ended(&event.id),
        }
        self.redaction.outbound(&mut event);
        if let Some(webhook) = &self.webhook {
            webhook.send(event.clone());
        }
        event
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
