//! The API's view of the daemon: the open episodes with their last report, a bounded
//! history of ended ones, the daemon's status, and a broadcast of every event for
//! `hangwatch watch`. The scan thread writes it (one short lock per event); the HTTP
//! server reads it.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::broadcast;

use super::{EventType, HangEvent};
use crate::meta::owner::Owner;

/// Ended episodes kept for `history` (with their stacks: a few KiB each).
pub const HISTORY_CAPACITY: usize = 256;
/// Events buffered per `watch` client; a client further behind misses events (counted).
const WATCH_BUFFER: usize = 256;

pub struct Store {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<HangEvent>>,
}

struct State {
    /// Open episodes by id: their last report.
    current: BTreeMap<String, Arc<HangEvent>>,
    /// Ended episodes, oldest first: their `resolved` event.
    history: VecDeque<Arc<HangEvent>>,
    /// The owner of each episode's process (current and history), read when it was first
    /// reported: who may see the episode (`api::access`), also after the process is gone.
    owners: HashMap<String, Owner>,
    status: Status,
}

/// What `/api/v1/status` shows, besides what is computed per request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The probes are attached and the scan runs.
    pub ready: bool,
    pub probes: Vec<ProbeStatus>,
    /// The effective configuration, as the daemon runs it.
    pub config: serde_json::Value,
    pub scans: u64,
    pub full_walks: u64,
    pub last_scan_ms: f64,
    pub mean_scan_ms: f64,
    pub mean_walk_ms: f64,
    /// Threads followed between full walks (the candidates).
    pub tracked_threads: usize,
    /// Processes selected for `off_cpu`.
    pub watched_processes: usize,
    /// The BPF probes' counters (events per probe, state unavailable, records dropped...).
    pub bpf_counters: BTreeMap<String, u64>,
    pub events: EventCounts,
    /// Events a sink did not deliver, by sink.
    pub dropped_events: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCounts {
    pub hang: u64,
    pub update: u64,
    pub resolved: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    /// Asked for: a default probe, or an optional one turned on.
    pub enabled: bool,
    pub required: bool,
    pub attached: bool,
    /// Why it is not attached, and what is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Store {
    pub fn new(config: serde_json::Value) -> Self {
        Self {
            state: RwLock::new(State {
                current: BTreeMap::new(),
                history: VecDeque::new(),
                owners: HashMap::new(),
                status: Status {
                    config,
                    ..Status::default()
                },
            }),
            events: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    /// Takes one event: opens, updates or ends its episode, and tells `watch` clients.
    /// `owner` is its process's owner, when known (kept from the episode's first event on).
    pub fn record(&self, event: &HangEvent, owner: Option<Owner>) {
        let event = Arc::new(event.clone());
        {
            let mut state = self.write();
            if let Some(owner) = owner {
                state.owners.entry(event.id.clone()).or_insert(owner);
            }
            let counts = &mut state.status.events;
            match event.event {
                EventType::Hang => counts.hang += 1,
                EventType::Update => counts.update += 1,
                EventType::Resolved => counts.resolved += 1,
            }
            match event.event {
                EventType::Hang | EventType::Update => {
                    state.current.insert(event.id.clone(), Arc::clone(&event));
                }
                EventType::Resolved => {
                    state.current.remove(&event.id);
                    if state.history.len() == HISTORY_CAPACITY
                        && let Some(old) = state.history.pop_front()
                        && !state.current.contains_key(&old.id)
                    {
                        state.owners.remove(&old.id);
                    }
                    state.history.push_back(Arc::clone(&event));
                }
            }
        }
        // No receiver is the normal case (nobody watching).
        let _ = self.events.send(event);
    }

    /// The open episodes' last reports, longest first.
    pub fn current(&self) -> Vec<Arc<HangEvent>> {
        let mut hangs: Vec<_> = self.read().current.values().cloned().collect();
        hangs.sort_by(|a, b| {
            b.duration_ms
                .cmp(&a.duration_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        hangs
    }

    /// Up to `limit` ended episodes, most recent first.
    pub fn history(&self, limit: usize) -> Vec<Arc<HangEvent>> {
        self.read()
            .history
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// One episode by id: open (its last report) or ended (its `resolved` event).
    pub fn episode(&self, id: &str) -> Option<Arc<HangEvent>> {
        let state = self.read();
        state
            .current
            .get(id)
            .or_else(|| state.history.iter().rev().find(|e| e.id == id))
            .cloned()
    }

    /// The open episode of thread `tid`, if any.
    pub fn episode_of_thread(&self, tid: u32) -> Option<String> {
        self.read()
            .current
            .values()
            .find(|e| e.tid == tid || e.cycle.iter().any(|m| m.tid == tid))
            .map(|e| e.id.clone())
    }

    /// The owner of episode `id`'s process, when it was known.
    pub fn owner(&self, id: &str) -> Option<Owner> {
        self.read().owners.get(id).copied()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HangEvent>> {
        self.events.subscribe()
    }

    pub fn status(&self) -> Status {
        self.read().status.clone()
    }

    pub fn open_count(&self) -> usize {
        self.read().current.len()
    }

    pub fn update_status(&self, update: impl FnOnce(&mut Status)) {
        update(&mut self.write().status);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds as a float, for the daemon's own timings.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// When the daemon started, for `status`.
pub fn started_at() -> SystemTime {
    static STARTED: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();
    *STARTED.get_or_init(SystemTime::now)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::sink::event::example as event;

    const OWNER: Owner = Owner {
        uids: [1000; 3],
        gids: [1000; 3],
        dumpable: true,
    };

    #[test]
    fn episodes_move_from_current_to_history() {
        let store = Store::new(serde_json::Value::Null);
        let mut watch = store.subscribe();
        store.record(&event(EventType::Hang, "a", 1, 1000), Some(OWNER));
        store.record(&event(EventType::Hang, "b", 2, 3000), None);
        store.record(&event(EventType::Update, "a", 1, 5000), None);
        let ids: Vec<_> = store.current().iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["a", "b"], "longest first");
        store.record(&event(EventType::Resolved, "a", 1, 6000), None);
        assert_eq!(store.owner("a"), Some(OWNER), "kept from the first event");
        assert_eq!(store.owner("b"), None);
        assert_eq!(store.current().len(), 1);
        assert_eq!(store.history(10)[0].id, "a");
        assert_eq!(
            store.episode("a").map(|e| e.event),
            Some(EventType::Resolved)
        );
        assert_eq!(store.episode("b").map(|e| e.event), Some(EventType::Hang));
        assert!(store.episode("c").is_none());
        assert_eq!(store.episode_of_thread(2).as_deref(), Some("b"));
        assert_eq!(store.status().events.hang, 2);
        assert_eq!(
            watch.try_recv().map(|e| e.id.clone()).ok().as_deref(),
            Some("a")
        );
    }

    #[test]
    fn history_is_bounded() {
        let store = Store::new(serde_json::Value::Null);
        for i in 0..HISTORY_CAPACITY + 10 {
            store.record(
                &event(EventType::Resolved, &format!("e{i}"), 1, 1),
                Some(OWNER),
            );
        }
        let all = store.history(usize::MAX);
        assert_eq!(all.len(), HISTORY_CAPACITY);
        assert_eq!(store.owner("e0"), None, "forgotten with its episode");
        assert_eq!(store.read().owners.len(), HISTORY_CAPACITY);
        assert_eq!(
            all[0].id,
            format!("e{}", HISTORY_CAPACITY + 9),
            "newest first"
        );
    }
}
