//! Episodes: one hang of one thread, from the scan that first sees it past its threshold to
//! the scan that no longer does. The tracker turns each scan's candidates into transitions:
//! exactly one `Opened`, `Updated` at a slowing rate, and exactly one `Ended`.
mod schedule;

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

pub use self::schedule::next_update_after;
use crate::{
    detect::{Candidate, reason::DeadlockReason},
    kind::HangKind,
    state::ThreadKey,
};

/// What names an episode: a thread, the wait that started at `since_ns`, and the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpisodeKey {
    pub thread: ThreadKey,
    pub since_ns: u64,
    pub kind: HangKind,
}

/// What an event says of its episode: opened (`hang`), `update`d, or `resolved`. Named
/// here, below the sinks and the metrics that both use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Hang,
    Update,
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub id: String,
    pub key: EpisodeKey,
    pub tgid: u32,
    pub threshold: Duration,
    /// Number of `update` events sent so far.
    pub updates: u32,
    /// Monotonic ns after which the next `update` is due.
    pub next_update_ns: u64,
    /// For a deadlock, its threads (the cycle in order); empty otherwise.
    pub members: Vec<ThreadKey>,
    /// For a deadlock, why it was reported.
    pub reason: Option<Arc<DeadlockReason>>,
}

impl Episode {
    pub fn duration(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.key.since_ns))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Opened(Episode),
    Updated(Episode),
    /// The candidate is gone: the thread ran, was woken, or exited.
    Ended(Episode),
}

impl Transition {
    /// The episode the transition is about.
    pub fn episode(&self) -> &Episode {
        match self {
            Self::Opened(e) | Self::Updated(e) | Self::Ended(e) => e,
        }
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    open: BTreeMap<EpisodeKey, Episode>,
}

impl Tracker {
    pub fn open_episodes(&self) -> impl Iterator<Item = &Episode> {
        self.open.values()
    }

    /// Advances every episode by one scan. `candidates` are all the hangs of this scan.
    pub fn step(&mut self, candidates: &[Candidate], now_ns: u64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let mut present = HashSet::with_capacity(candidates.len());
        // A thread of a deadlock is the deadlock's: between two walks a deadlock is carried
        // from the last one while its members' lock waits are seen afresh, and those are
        // not episodes of their own.
        let deadlocked: HashSet<ThreadKey> = crate::detect::deadlock::members(candidates);
        for c in candidates {
            if c.kind == HangKind::LockWait && deadlocked.contains(&c.thread) {
                continue;
            }
            let key = EpisodeKey {
                thread: c.thread,
                since_ns: c.since_ns,
                kind: c.kind,
            };
            present.insert(key);
            match self.open.get_mut(&key) {
                Some(episode) if now_ns >= episode.next_update_ns => {
                    episode.members.clone_from(&c.members);
                    episode.reason.clone_from(&c.reason);
                    episode.updates += 1;
                    episode.next_update_ns =
                        key.since_ns + next_update_after(c.threshold, episode.updates);
                    transitions.push(Transition::Updated(episode.clone()));
                }
                Some(_) => {}
                None => {
                    let episode = Episode {
                        id: episode_id(&key),
                        key,
                        tgid: c.tgid,
                        threshold: c.threshold,
                        updates: 0,
                        next_update_ns: key.since_ns + next_update_after(c.threshold, 0),
                        members: c.members.clone(),
                        reason: c.reason.clone(),
                    };
                    self.open.insert(key, episode.clone());
                    transitions.push(Transition::Opened(episode));
                }
            }
        }
        let ended: Vec<EpisodeKey> = self
            .open
            .keys()
            .filter(|k| !present.contains(k))
            .copied()
            .collect();
        // Ends first: a tid reused by a new thread (or a thread's new wait) whose old
        // episode ends at the same scan as the new one opens must read "resolved" before
        // "hang" in the event stream (a late scan under load put them in one tick).
        let mut in_order: Vec<Transition> = ended
            .into_iter()
            .filter_map(|key| self.open.remove(&key).map(Transition::Ended))
            .collect();
        in_order.append(&mut transitions);
        in_order
    }
}

/// Stable for the life of the episode and unique on this boot: kind, tid and the start of
/// the wait in monotonic ns.
fn episode_id(key: &EpisodeKey) -> String {
    format!(
        "{}-{}-{:x}",
        key.kind.as_str(),
        key.thread.tid,
        key.since_ns
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn candidate(tid: u32, since_ns: u64) -> Candidate {
        Candidate {
            thread: ThreadKey {
                tid,
                start_boottime_ns: 42,
            },
            tgid: tid,
            kind: HangKind::OffCpu,
            threshold: Duration::from_secs(1),
            since_ns,
            members: Vec::new(),
            reason: None,
        }
    }

    fn kinds(ts: &[Transition]) -> Vec<&'static str> {
        ts.iter()
            .map(|t| match t {
                Transition::Opened(_) => "opened",
                Transition::Updated(_) => "updated",
                Transition::Ended(_) => "ended",
            })
            .collect()
    }

    #[test]
    fn one_open_slowing_updates_one_end() {
        let mut tracker = Tracker::default();
        let c = [candidate(5, 0)];
        let mut log = Vec::new();
        // Scans every 250 ms from 1 s to 20 s.
        let mut now = SEC;
        while now <= 20 * SEC {
            for t in tracker.step(&c, now) {
                log.push((now, t));
            }
            now += SEC / 4;
        }
        let opened: Vec<_> = log
            .iter()
            .filter(|(_, t)| matches!(t, Transition::Opened(_)))
            .collect();
        assert_eq!(opened.len(), 1);
        let updates: Vec<u64> = log
            .iter()
            .filter(|(_, t)| matches!(t, Transition::Updated(_)))
            .map(|(now, _)| now / (SEC / 4))
            .collect();
        // At 2 s, 4 s, 8 s, 16 s: each gap twice the one before.
        assert_eq!(updates, vec![8, 16, 32, 64]);
        let end = tracker.step(&[], 21 * SEC);
        assert_eq!(kinds(&end), vec!["ended"]);
        assert!(tracker.step(&[], 22 * SEC).is_empty(), "ended only once");
    }

    #[test]
    fn a_new_wait_of_the_same_thread_is_a_new_episode() {
        let mut tracker = Tracker::default();
        let first = tracker.step(&[candidate(5, 0)], SEC);
        let again = tracker.step(&[candidate(5, 3 * SEC)], 4 * SEC);
        assert_eq!(
            kinds(&again),
            vec!["ended", "opened"],
            "the old one ends first"
        );
        let (Transition::Opened(a), Transition::Opened(b)) = (&first[0], &again[1]) else {
            panic!("{first:?} {again:?}");
        };
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_reused_tid_is_a_different_thread() {
        let mut tracker = Tracker::default();
        tracker.step(&[candidate(5, 0)], SEC);
        let mut reused = candidate(5, 0);
        reused.thread.start_boottime_ns = 43;
        let t = tracker.step(&[reused], 2 * SEC);
        assert_eq!(
            kinds(&t),
            vec!["ended", "opened"],
            "the old thread's ends first"
        );
    }

    #[test]
    fn a_member_of_a_deadlock_gets_no_lock_wait_episode() {
        let mut lock_wait = candidate(5, 0);
        lock_wait.kind = HangKind::LockWait;
        let mut deadlock = candidate(4, 0);
        deadlock.kind = HangKind::Deadlock;
        deadlock.members = vec![deadlock.thread, lock_wait.thread];
        let mut t = Tracker::default();
        let opened = t.step(&[lock_wait.clone(), deadlock], SEC);
        assert_eq!(kinds(&opened), vec!["opened"]);
        assert_eq!(
            t.open_episodes().map(|e| e.key.kind).collect::<Vec<_>>(),
            [HangKind::Deadlock]
        );
        // Alone (no deadlock around it), the same lock wait is an episode.
        let alone = Tracker::default().step(&[lock_wait], SEC);
        assert_eq!(kinds(&alone), vec!["opened"]);
    }
}
