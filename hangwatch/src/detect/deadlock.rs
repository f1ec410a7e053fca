//! `deadlock`: threads that can never make progress again, as one episode. Each rule says
//! in the event why it fired (`reason`, see [`super::reason`]).
//!
//! - A cycle in the wait-for graph (thread -> owner of the lock it waits on): every
//!   thread of the cycle waits for the next one (`lock_cycle`). A thread glibc parks for
//!   ever after the kernel refused it a PI lock (EDEADLK) closes its cycle through the
//!   owner of the lock it asked for (`pi_park`, see `meta::pi_park`).
//! - A whole process none of whose threads can make progress and that nothing outside
//!   can wake (`whole_process`): every thread in an untimed wait on a private futex (only
//!   a thread of the same process can wake it), or joining another thread of the process
//!   that is itself stuck (glibc's `pthread_join` waits on the joined thread's tid word,
//!   a *shared* futex that the kernel clears and wakes when that thread exits). A single
//!   threaded child after `fork()` waiting on a lock copied from its parent is the
//!   simplest case. /proc then confirms that no other thread exists and that the process
//!   handles no signal a sender could wake it with (`meta::confirm`).
//!
//! Reported once the state has held for `hold`. The episode's thread is the member with
//! the smallest tid and its start the moment the last member blocked: both stay the same
//! as long as no member moves, so the episode is stable; when one moves, it ends.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use super::{
    Candidate, reached,
    reason::{DeadlockReason, DeadlockRule},
};
use crate::{
    kind::HangKind,
    meta::LockFacts,
    state::{FutexCall, ThreadKey, ThreadSample},
};

/// See [`Deadlock::check`]: `Some` with what /proc added to the evidence when it confirms.
pub type Confirm<'a> = dyn FnMut(&[&ThreadSample], bool) -> Option<Vec<String>> + 'a;

/// At most this many tids are named in one sentence of the evidence.
const NAMED_TIDS: usize = 16;

#[derive(Debug, Clone)]
pub struct Deadlock {
    /// How long the state must hold before it is reported.
    pub hold: Duration,
}

impl Deadlock {
    /// deadlock's threshold check: the state has held for `hold` since `since_ns`, the
    /// moment its last member blocked.
    pub fn crossed(hold: Duration, since_ns: u64, now_ns: u64) -> bool {
        reached(now_ns.saturating_sub(since_ns), hold)
    }

    /// The deadlocks among `samples`, each with its members (cycle order for a cycle).
    /// `confirm(members, whole_process)` checks a deadlock that has held long enough
    /// against the process as it is now (the samples can be a tick old): each member still
    /// in the same wait, and for `whole_process` no other thread in the process and no
    /// signal handler that could wake it.
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
            let Some(mut found) = candidate(&members, self.hold, hold_of, now_ns) else {
                continue;
            };
            let Some(checked) = confirm(&members, false) else {
                continue;
            };
            let mut reason = cycle_reason(&members, locks);
            reason.evidence.extend(checked);
            found.reason = Some(Arc::new(reason));
            out.push(found);
        }
        // Whole processes that no thread of theirs and nothing outside can wake.
        let mut by_tgid: BTreeMap<u32, Vec<(&ThreadSample, FutexCall)>> = BTreeMap::new();
        let mut disqualified = HashSet::new();
        for s in samples {
            match s.futex_wait() {
                // A timed wait ends by itself.
                Some(call) if !call.timed => by_tgid.entry(s.tgid).or_default().push((s, call)),
                _ => {
                    disqualified.insert(s.tgid);
                }
            }
        }
        for (tgid, mut waits) in by_tgid {
            if disqualified.contains(&tgid) || in_cycle_tgids.contains(&tgid) {
                continue;
            }
            // A lock owner still being read may close a cycle at the next tick: the cycle
            // is the better report (it names the locks), and reporting the whole process
            // first would end it "running" a tick later, when the cycle takes over.
            if waits.iter().any(|(s, _)| locks.unread.contains(&s.key)) {
                continue;
            }
            waits.sort_by_key(|(s, _)| s.key.tid);
            let Some(stuck) = whole_process(&waits) else {
                continue;
            };
            let members: Vec<&ThreadSample> = waits.iter().map(|(s, _)| *s).collect();
            // Only worth a /proc look once it has held long enough.
            let Some(mut found) = candidate(&members, self.hold, hold_of, now_ns) else {
                continue;
            };
            let Some(checked) = confirm(&members, true) else {
                continue;
            };
            let mut reason = stuck;
            reason.evidence.extend(checked);
            found.reason = Some(Arc::new(reason));
            out.push(found);
        }
        out
    }
}

/// Why every thread of `waits` (all the sampled threads of one process, each in an
/// untimed futex wait, by tid) is stuck, or `None` when one of them could be woken: a
/// wait on a shared futex that is not a join of a thread of the same process (another
/// process could wake it).
fn whole_process(waits: &[(&ThreadSample, FutexCall)]) -> Option<DeadlockReason> {
    let tids: HashSet<u32> = waits.iter().map(|(s, _)| s.key.tid).collect();
    let mut private = Vec::new();
    let mut joins = Vec::new();
    for (s, call) in waits {
        if call.private {
            private.push(s.key.tid);
        } else {
            let joined = call
                .joined_tid()
                .filter(|t| *t != s.key.tid && tids.contains(t))?;
            joins.push((s.key.tid, joined));
        }
    }
    let mut evidence = vec![format!(
        "every thread the scan saw in this process ({}) is in an untimed futex wait: none can end by itself",
        waits.len()
    )];
    if !private.is_empty() {
        let addresses: HashSet<u64> = waits
            .iter()
            .filter(|(_, c)| c.private)
            .map(|(_, c)| c.uaddr)
            .collect();
        let (verb, object) = if private.len() == 1 {
            ("waits", "it")
        } else {
            ("wait", "them")
        };
        evidence.push(format!(
            "{} {verb} on a private futex ({} address(es)): only a thread of this process can wake {object}",
            tid_list(&private),
            addresses.len(),
        ));
    }
    for (tid, joined) in &joins {
        evidence.push(format!(
            "tid {tid} joins tid {joined}: pthread_join's untimed wait on tid {joined}'s tid word, a shared futex the kernel clears and wakes only when tid {joined} exits, and tid {joined} is stuck here too"
        ));
    }
    Some(DeadlockReason {
        rule: DeadlockRule::WholeProcess,
        evidence,
    })
}

/// The facts of a cycle: who waits on whose lock, and how a parked thread closes it.
fn cycle_reason(members: &[&ThreadSample], locks: &LockFacts) -> DeadlockReason {
    let mut evidence = Vec::new();
    let mut rule = DeadlockRule::LockCycle;
    for m in members {
        let tid = m.key.tid;
        let owner = locks.owners.get(&m.key).copied();
        let call = m.futex_wait();
        match (locks.parked.get(&tid), owner) {
            (Some(park), _) => {
                rule = DeadlockRule::PiPark;
                let asked = park.asked_owner.map_or_else(
                    || "a thread of this cycle".to_owned(),
                    |o| format!("tid {o}, the one thread whose PI lock waits lead back to it"),
                );
                evidence.push(format!(
                    "tid {tid} was refused the PI lock it asked for (FUTEX_LOCK_PI failed with EDEADLK: the kernel saw the cycle) and glibc's pthread_mutex_lock parks it for ever: an untimed futex wait on a word {} bytes above its stack pointer; that lock is held by {asked}",
                    park.above_sp
                ));
            }
            (None, Some(owner)) => {
                let what = match call {
                    Some(c) if c.cmd == crate::state::FutexCmd::LockPi => "the PI lock",
                    _ => "the lock",
                };
                let address = call.map_or_else(String::new, |c| format!(" at {:#x}", c.uaddr));
                evidence.push(format!(
                    "tid {tid} waits on {what}{address} held by tid {owner}"
                ));
            }
            (None, None) => {}
        }
    }
    DeadlockReason { rule, evidence }
}

/// "tid 5", "tids 5, 6 and 7", at most `NAMED_TIDS` of them named.
fn tid_list(tids: &[u32]) -> String {
    let named: Vec<String> = tids.iter().take(NAMED_TIDS).map(u32::to_string).collect();
    match (tids.len(), tids.len().saturating_sub(NAMED_TIDS)) {
        (1, _) => format!("tid {}", named[0]),
        (_, 0) => {
            let (last, rest) = named.split_last().unwrap_or((&named[0], &[]));
            format!("tids {} and {last}", rest.join(", "))
        }
        (_, more) => format!("tids {} and {more} more", named.join(", ")),
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
    // The process's own hold is looked up only once the smallest one has passed.
    if !Deadlock::crossed(smallest, since_ns, now_ns) {
        return None;
    }
    let hold = hold_of(first.tgid)?;
    Deadlock::crossed(hold, since_ns, now_ns).then(|| Candidate {
        thread: first.key,
        tgid: first.tgid,
        kind: HangKind::Deadlock,
        threshold: hold,
        since_ns,
        members: members.iter().map(|s| s.key).collect(),
        reason: None,
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
    use crate::{detect::testing::blocked_in_futex, meta::pi_park::PiPark};

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
        let mut yes = |_: &[&ThreadSample], _| Some(Vec::new());
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
        let mut no = |_: &[&ThreadSample], _| None;
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
            (m.len() == 1).then(|| vec!["one thread".to_owned()])
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
        let mut two_threads = |m: &[&ThreadSample], _| (m.len() == 2).then(Vec::new);
        let alive = d().check(
            std::slice::from_ref(&child),
            &none,
            &mut two_threads,
            2 * SEC,
        );
        assert!(alive.is_empty());
        // A timed wait can end by itself.
        let timed = blocked_in_futex(300, 300, 0, 0, true);
        let mut yes = |_: &[&ThreadSample], _| Some(Vec::new());
        assert!(d().check(&[timed], &none, &mut yes, 2 * SEC).is_empty());
    }

    /// `futex(uaddr, op, val, timeout)` as the scan reads it from the saved registers.
    fn in_futex(tid: u32, tgid: u32, uaddr: u64, op: u64, val: u64) -> ThreadSample {
        let mut s = blocked_in_futex(tid, tgid, 0, val, false);
        s.saved_syscall = Some(crate::state::ProcSyscall {
            nr: libc::SYS_futex,
            args: [uaddr, op, val, 0, 0, 0],
        });
        s
    }

    /// pthread_join of glibc 2.36: FUTEX_WAIT_BITSET|FUTEX_CLOCK_REALTIME, shared.
    const JOIN_OP: u64 = 0x109;
    /// std's `Mutex::lock_contended`: FUTEX_WAIT_BITSET_PRIVATE for 2.
    const LOCK_OP: u64 = 0x189;

    #[test]
    fn a_whole_process_waits_for_its_lock_owners_to_be_read() {
        // glibc ABBA with main joining: while an owner read is in flight, the cycle it
        // would show is not known yet, and the whole-process rule must not take its place.
        let main = in_futex(400, 400, 0x7f00_0990, JOIN_OP, 401);
        let a = in_futex(401, 400, 0x5000, LOCK_OP, 2);
        let b = in_futex(402, 400, 0x5010, LOCK_OP, 2);
        let mut locks = LockFacts::default();
        locks.unread.insert(a.key);
        let mut yes = |_: &[&ThreadSample], _| Some(Vec::new());
        let samples = [main, a, b];
        assert!(d().check(&samples, &locks, &mut yes, 2 * SEC).is_empty());
        locks.unread.clear();
        assert_eq!(d().check(&samples, &locks, &mut yes, 2 * SEC).len(), 1);
    }

    #[test]
    fn rust_std_abba_with_main_joining_is_a_whole_process_deadlock() {
        let main = in_futex(400, 400, 0x7f00_0990, JOIN_OP, 401);
        let a = in_futex(401, 400, 0x5000, LOCK_OP, 2);
        let b = in_futex(402, 400, 0x5010, LOCK_OP, 2);
        let samples = [a, main, b];
        let mut proc_says = |m: &[&ThreadSample], whole: bool| {
            assert!(whole);
            assert_eq!(
                m.iter().map(|s| s.key.tid).collect::<Vec<_>>(),
                [400, 401, 402]
            );
            Some(vec!["no handler".to_owned()])
        };
        let found = d().check(&samples, &LockFacts::default(), &mut proc_says, 2 * SEC);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].thread.tid, 400);
        let reason = found[0].reason.as_deref().expect("a reason");
        assert_eq!(reason.rule, DeadlockRule::WholeProcess);
        let text = reason.evidence.join("\n");
        assert!(text.contains("tid 400 joins tid 401"), "{text}");
        assert!(
            text.contains("tids 401 and 402 wait on a private futex"),
            "{text}"
        );
        assert!(
            text.ends_with("no handler"),
            "what /proc said comes last: {text}"
        );
    }

    #[test]
    fn a_shared_wait_that_is_no_join_of_a_stuck_thread_keeps_the_process_alive() {
        let worker = in_futex(501, 500, 0x5000, LOCK_OP, 2);
        let mut yes = |_: &[&ThreadSample], _| Some(Vec::new());
        // A process-shared semaphore or mutex (another process can post it), a join of
        // a tid that is not one of its stuck threads, a join of itself.
        for main in [
            in_futex(500, 500, 0x7f00_1000, 0x109, 0),
            in_futex(500, 500, 0x7f00_1000, 0x80 ^ 0x80, 2),
            in_futex(500, 500, 0x7f00_0990, JOIN_OP, 777),
            in_futex(500, 500, 0x7f00_0990, JOIN_OP, 500),
        ] {
            let samples = [main.clone(), worker.clone()];
            let found = d().check(&samples, &LockFacts::default(), &mut yes, 2 * SEC);
            assert!(found.is_empty(), "{main:?}: {found:?}");
        }
        // /proc refusing (a handler that could wake it, another thread): no deadlock.
        let join = in_futex(500, 500, 0x7f00_0990, JOIN_OP, 501);
        let mut no = |_: &[&ThreadSample], _| None;
        assert!(
            d().check(&[join, worker], &LockFacts::default(), &mut no, 2 * SEC)
                .is_empty()
        );
    }

    #[test]
    fn a_pi_park_closes_the_cycle_and_says_so() {
        // pi_abba: a in FUTEX_LOCK_PI_PRIVATE on b's lock, b parked after EDEADLK, its
        // edge back to a inferred (`meta::pi_park::close_cycles`).
        let a = in_futex(601, 600, 0x5100, 6 | 128, 0);
        let b = in_futex(602, 600, 0x7f2e_66e6_5e74, LOCK_OP, 0);
        let mut locks = LockFacts::default();
        locks.owners.insert(a.key, 602);
        locks.owners.insert(b.key, 601);
        locks.parked.insert(
            602,
            PiPark {
                above_sp: 0x54,
                asked_owner: Some(601),
            },
        );
        let mut yes = |_: &[&ThreadSample], whole: bool| {
            assert!(!whole);
            Some(Vec::new())
        };
        let found = d().check(&[a.clone(), b], &locks, &mut yes, 2 * SEC);
        assert_eq!(found.len(), 1, "{found:?}");
        let reason = found[0].reason.as_deref().expect("a reason");
        assert_eq!(reason.rule, DeadlockRule::PiPark);
        let text = reason.evidence.join("\n");
        assert!(
            text.contains("tid 601 waits on the PI lock at 0x5100 held by tid 602"),
            "{text}"
        );
        assert!(
            text.contains("EDEADLK") && text.contains("84 bytes above"),
            "{text}"
        );
        assert!(locks.behind_a_park(&a));
    }
}
