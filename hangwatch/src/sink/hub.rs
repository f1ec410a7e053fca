//! Where each event goes besides stdout: the API store (and through it `watch`), the
//! metrics, and the webhook. The enrich stage calls `publish` once per event; nothing here blocks.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{EventType, HangEvent, Store, WebhookSink, redact::Redaction};
use crate::{
    meta::owner::{Owner, owner_of},
    metrics::{HungLabels, Metrics},
};

pub struct Hub {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub webhook: Option<WebhookSink>,
    /// What the outputs leave out (`--redact-*`).
    pub redaction: Redaction,
    pub owners: RecentOwners,
}

/// The owners read in the last moments, by pid: the reports of one burst (a mass hang is
/// thousands of episodes of one process, reported within a second) share one read of
/// their process's credentials, which was a tenth of the stage's CPU in a mass hang.
/// Kept `OWNER_FRESH` only, so that what a report says about who may read it is as recent
/// as the stacks it carries: a process that changes its credentials (a setuid exec) has
/// its later reports owned by its new credentials.
#[derive(Default)]
pub struct RecentOwners(Mutex<HashMap<u32, (Instant, Option<Owner>)>>);

/// How long an owner read serves the reports of the same process.
pub const OWNER_FRESH: Duration = Duration::from_millis(250);
/// Pids kept at most; beyond, the stale ones go (all of them if none is stale).
const OWNERS_KEPT: usize = 1024;

impl RecentOwners {
    /// The owner of `pid`, read at most `OWNER_FRESH` ago (`read` reads it now).
    fn get(
        &self,
        pid: u32,
        now: Instant,
        read: impl FnOnce(u32) -> Option<Owner>,
    ) -> Option<Owner> {
        let mut owners = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, owner)) = owners.get(&pid)
            && now.saturating_duration_since(*at) < OWNER_FRESH
        {
            return *owner;
        }
        if owners.len() >= OWNERS_KEPT {
            owners.retain(|_, (at, _)| now.saturating_duration_since(*at) < OWNER_FRESH);
            if owners.len() >= OWNERS_KEPT {
                owners.clear();
            }
        }
        let owner = read(pid);
        owners.insert(pid, (now, owner));
        owner
    }
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
                self.owners.get(event.pid, Instant::now(), owner_of)
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn owner(uid: u32) -> Option<Owner> {
        Some(Owner {
            uids: [uid; 3],
            gids: [uid; 3],
            dumpable: true,
        })
    }

    #[test]
    fn a_burst_of_reports_reads_its_process_owner_once_and_a_later_one_again() {
        let owners = RecentOwners::default();
        let reads = Cell::new(0);
        let reads = &reads;
        let read = |uid| {
            move |_pid| {
                reads.set(reads.get() + 1);
                owner(uid)
            }
        };
        let t0 = Instant::now();
        assert_eq!(owners.get(7, t0, read(1000)), owner(1000));
        assert_eq!(owners.get(7, t0 + OWNER_FRESH / 2, read(0)), owner(1000));
        assert_eq!(reads.get(), 1, "one read for the burst");
        assert_eq!(owners.get(8, t0, read(0)), owner(0), "another process");
        // Past the freshness, the process's credentials now (a setuid exec meanwhile).
        assert_eq!(owners.get(7, t0 + OWNER_FRESH, read(0)), owner(0));
        assert_eq!(reads.get(), 3);
    }

    #[test]
    fn the_owners_kept_are_bounded() {
        let owners = RecentOwners::default();
        let t0 = Instant::now();
        for pid in 0..(OWNERS_KEPT as u32 * 3) {
            owners.get(pid, t0, owner);
        }
        assert!(owners.0.lock().expect("lock").len() <= OWNERS_KEPT);
    }
}
