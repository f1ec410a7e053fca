//! `deadlock`: threads that can never make progress again, as one episode.
//!
//! - A cycle in the wait-for graph (thread -> owner of the lock it waits on): every
//!   thread of the cycle waits for the next one.
//! - A process every thread of which is in an untimed wait on a private futex: no other
//!   process can wake it, and none of its threads can (a single-threaded child after
//!   `fork()` waiting on a lock copied from its parent is the simplest case).
//!
//! Reported once the state has held for `hold`. The episode's thread is the member with
//! the smallest tid and its start the moment the last member blocked: both stay the same
//! as long as no member moves, so the episode is stable; when one moves, it ends.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use super::{Candidate, HangKind, LockFacts};
use crate::state::{ThreadKey, ThreadSample};

/// See [`Deadlock::check`].
pub type Confirm<'a> = dyn FnMut(&[&ThreadSample], bool) -> bool + 'a;

#[derive(Debug, Clone)]
pub struct Deadlock {
    /// How long the state must hold before it is reported.
    pub hold: Duration,
}

impl Deadlock {
    /// The deadlocks among `samples`, each with its members (cycle order for a cycle).
    /// `confirm(members, whole_process)` checks a deadlock that has held long enough
    /// against the process as it is now (the samples can be a tick old): each member still
    /// in the same wait, and for `whole_process` no other thread in the process.
    #[cfg(test)]
    pub fn check(
        &self,
        samples: &[ThreadSample],
        locks: &LockFacts,
        confirm: &mut Confirm<'_>,
        now_ns: u64,
    ) -> Vec<Candidate> {
        self.check_per_process(samples, locks, confirm, &mut |_| Some(self.hold), now_ns)
    }

    /// As [`Deadlock::check`], with the hold of each process from `hold_of(tgid)` (the
    /// rules; `None` when `deadlock` is off for it); `self.hold` is the smallest of them.
    pub fn check_per_process(
        &self,
        samples: &[ThreadSample],
        locks: &LockFacts,
        confirm: &mut Confirm<'_>,
        hold_of: &mut dyn FnMut(u32) -> Option<Duration>,
        now_ns: u64,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        let mut in_cycle_tgids = HashSet::new();
        for cycle in cycles(samples, locks) {
            let members: Vec<&ThreadSample> = cycle.iter().map(|&i| &samples[i]).collect();
            in_cycle_tgids.insert(members[0].tgid);
            out.extend(
                candidate(&members, self.hold, hold_of, now_ns)
                    .filter(|_| confirm(&members, false)),
            );
        }
        // Whole processes stuck on private futexes.
        let mut by_tgid: BTreeMap<u32, Vec<&ThreadSample>> = BTreeMap::new();
        let mut disqualified = HashSet::new();
        for s in samples {
            match s.futex_wait() {
                Some(call) if call.untimed_private() => by_tgid.entry(s.tgid).or_default().push(s),
                _ => {
                    disqualified.insert(s.tgid);
                }
            }
        }
        for (tgid, members) in by_tgid {
            if disqualified.contains(&tgid) || in_cycle_tgids.contains(&tgid) {
                continue;
            }
            let mut members = members;
            members.sort_by_key(|s| s.key.tid);
            // Only worth a /proc look once it has held long enough.
            out.extend(
                candidate(&members, self.hold, hold_of, now_ns).filter(|_| confirm(&members, true)),
            );
        }
        out
    }
}

fn candidate(
    members: &[&ThreadSample],
    smallest: Duration,
    hold_of: &mut dyn FnMut(u32) -> Option<Duration>,
    now_ns: u64,
) -> Option<Candidate> {
    let first = members.iter().min_by_key(|s| s.key.tid)?;
    let since_ns = members.iter().map(|s| s.off_cpu_at_ns).max()?;
    let held = now_ns.saturating_sub(since_ns);
    // The process's own hold is looked up only once the smallest one has passed.
    if u128::from(held) < smallest.as_nanos() {
        return None;
    }
    let hold = hold_of(first.tgid)?;
    (u128::from(held) >= hold.as_nanos()).then(|| Candidate {
        thread: first.key,
        tgid: first.tgid,
        kind: HangKind::Deadlock,
        threshold: hold,
        since_ns,
        members: members.iter().map(|s| s.key).collect(),
    })
}

/// The cycles of the wait-for graph, as indices into `samples`, each starting at its
/// smallest tid. Each thread has at most one outgoing edge (the owner of its lock), so a
/// walk from each node finds every cycle once.
pub fn cycles(samples: &[ThreadSample], locks: &LockFacts) -> Vec<Vec<usize>> {
    // Every member of a cycle waits on a lock whose owner is known: only those can be
    // nodes (an idle machine has thousands of other futex waiters).
    let by_tid: HashMap<u32, usize> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| locks.owners.contains_key(&s.key))
        .map(|(i, s)| (s.key.tid, i))
        .collect();
    let next = |i: usize| -> Option<usize> {
        let owner = locks.owners.get(&samples[i].key)?;
        let &j = by_tid.get(owner)?;
        (samples[j].tgid == samples[i].tgid).then_some(j)
    };
    // 0 = not visited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; samples.len()];
    let mut out = Vec::new();
    for start in by_tid.values().copied() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match mark[i] {
                0 => {
                    mark[i] = 1;
                    path.push(i);
                    at = next(i);
                }
                1 => {
                    let from = path.iter().position(|&p| p == i).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    let smallest = (0..cycle.len())
                        .min_by_key(|&k| samples[cycle[k]].key.tid)
                        .unwrap_or(0);
                    cycle.rotate_left(smallest);
                    out.push(cycle);
                    break;
                }
                _ => break,
            }
        }
        for i in path {
            mark[i] = 2;
        }
    }
    out.sort_by_key(|c| samples[c[0]].key.tid);
    out
}

/// The threads of `candidates`' deadlocks.
pub fn members(candidates: &[Candidate]) -> HashSet<ThreadKey> {
    candidates
        .iter()
        .filter(|c| c.kind == HangKind::Deadlock)
        .flat_map(|c| c.members.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::testing::blocked_in_futex;

    const SEC: u64 = 1_000_000_000;

    fn d() -> Deadlock {
        Deadlock {
            hold: Duration::from_secs(1),
        }
    }

    #[test]
    fn abba_is_one_cycle_reported_after_the_hold() {
        let a = blocked_in_futex(101, 100, SEC, 2, false);
        let b = blocked_in_futex(102, 100, 2 * SEC, 2, false);
        let main = blocked_in_futex(100, 100, 0, 100, false);
        let samples = vec![main, b.clone(), a.clone()];
        let mut locks = LockFacts::default();
        locks.owners.insert(a.key, 102);
        locks.owners.insert(b.key, 101);
        let mut yes = |_: &[&ThreadSample], _| true;
        let early = d().check(&samples, &locks, &mut yes, 2 * SEC + SEC / 2);
        assert!(early.is_empty(), "{early:?}");
        let found = d().check(&samples, &locks, &mut yes, 3 * SEC);
        assert_eq!(found.len(), 1, "{found:?}");
        let c = &found[0];
        assert_eq!(
            (c.kind, c.thread.tid, c.since_ns),
            (HangKind::Deadlock, 101, 2 * SEC)
        );
        assert_eq!(
            c.members.iter().map(|k| k.tid).collect::<Vec<_>>(),
            vec![101, 102]
        );
        let mut no = |_: &[&ThreadSample], _| false;
        let stale = d().check(&samples, &locks, &mut no, 3 * SEC);
        assert!(stale.is_empty(), "not confirmed by /proc: {stale:?}");
    }

    #[test]
    fn a_chain_is_no_cycle() {
        let a = blocked_in_futex(101, 100, 0, 2, false);
        let b = blocked_in_futex(102, 100, 0, 2, false);
        let mut locks = LockFacts::default();
        locks.owners.insert(a.key, 102);
        locks.owners.insert(b.key, 103); // running, not a sample
        assert!(cycles(&[a, b], &locks).is_empty());
    }

    #[test]
    fn a_process_all_in_untimed_private_futex_waits() {
        let child = blocked_in_futex(200, 200, 0, 0, false);
        let none = LockFacts::default();
        let mut asked = Vec::new();
        let mut one_thread = |m: &[&ThreadSample], whole: bool| {
            asked.push(whole);
            m.len() == 1
        };
        let found = d().check(
            std::slice::from_ref(&child),
            &none,
            &mut one_thread,
            2 * SEC,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].members, vec![child.key]);
        assert_eq!(asked, vec![true], "asked /proc for the whole process");
        // A thread not in the scan (running, or in another wait) keeps it alive.
        let mut two_threads = |m: &[&ThreadSample], _| m.len() == 2;
        let alive = d().check(
            std::slice::from_ref(&child),
            &none,
            &mut two_threads,
            2 * SEC,
        );
        assert!(alive.is_empty());
        // A timed wait can end by itself.
        let timed = blocked_in_futex(300, 300, 0, 0, true);
        let mut yes = |_: &[&ThreadSample], _| true;
        assert!(d().check(&[timed], &none, &mut yes, 2 * SEC).is_empty());
    }
}
