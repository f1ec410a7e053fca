//! `loop_stall`: an event-loop thread that has not come back to its loop wait for longer
//! than its threshold, blocked in something else or running on CPU. On for every process.
//!
//! A thread is an event-loop thread once it has blocked in epoll_wait (or io_uring_enter)
//! a few times (`MIN_LOOP_WAITS`): asyncio, gevent/libev, libuv, tokio's I/O driver, nginx
//! and redis all do. The scheduler probe records when it blocks in that wait and when it
//! comes back from it, so an idle loop (blocked in its wait) is never a candidate and a
//! stall is measured from the last return seen.
//!
//! Two things can hide a return from the scheduler probe, and both are handled here:
//! - a busy loop finds events ready and never blocks in its wait: while a loop thread has
//!   been away for a quarter of its threshold and is not blocked, the daemon attaches
//!   `sys_enter_loop`, which sees every entry into the wait; a stall is reported only
//!   after that probe (or a blocking wait elsewhere) has proven at least a quarter of the
//!   threshold without a return;
//! - a worker that parks on a futex when idle (tokio's multi-thread workers, which take
//!   turns at the I/O driver): a loop thread in a futex wait is judged by its user stack
//!   once per wait (the daemon asks, `Watch::check_park`): a park frame means idle, and
//!   from then on the thread's futex waits count as returns to idle; any other futex wait
//!   (a mutex, a Python lock) is a stall like any other blocking wait.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use super::Candidate;
use crate::{
    kind::HangKind,
    state::{ThreadKey, ThreadSample},
};

#[derive(Debug, Clone)]
pub struct LoopStall {
    pub threshold: Duration,
}

/// What the daemon knows about loop threads beyond their samples.
#[derive(Debug, Clone, Default)]
pub struct LoopFacts {
    /// CLOCK_MONOTONIC ns since which `sys_enter_loop` has been attached, if it is.
    pub probe_since_ns: Option<u64>,
    /// Verdicts on futex waits from the waiter's stack: the wait (its switch-out time)
    /// and whether it is a park.
    pub parked: HashMap<ThreadKey, (u64, bool)>,
    /// Loop threads seen parked: their futex waits are returns to idle.
    pub parkers: HashSet<ThreadKey>,
}

/// Where a loop thread stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopVerdict {
    /// In its wait, parked, back recently, or no loop at all.
    Fine,
    /// Away for a while, not yet proven stalled: the daemon should watch it closer.
    Watch(Watch),
    Stalled(Candidate),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Attach `sys_enter_loop` (the thread runs; it may come back without blocking).
    Probe,
    /// Read its stack to tell a park from a lock (it is in a futex wait).
    CheckPark,
}

impl LoopStall {
    /// The part of the threshold that must be proven (a blocking wait elsewhere, or the
    /// probe watching) before a stall is reported; the rest may be inferred from the
    /// last return seen.
    pub fn proven(&self) -> Duration {
        self.threshold / 4
    }

    pub fn check(&self, sample: &ThreadSample, facts: &LoopFacts, now_ns: u64) -> LoopVerdict {
        let Some(lp) = sample.event_loop else {
            return LoopVerdict::Fine;
        };
        if lp.in_wait || sample.paused() || sample.kernel_thread {
            return LoopVerdict::Fine;
        }
        let mut back = lp.back_at_ns;
        if facts.parkers.contains(&sample.key) {
            back = back.max(lp.futex_left_at_ns);
        }
        let away = now_ns.saturating_sub(back);
        let proven = nanos(self.proven());
        if away < proven {
            return LoopVerdict::Fine;
        }
        let blocked = !sample.not_blocked() && !sample.woken;
        if blocked && lp.in_futex {
            match facts.parked.get(&sample.key) {
                Some(&(wait, parked)) if wait == sample.off_cpu_at_ns => {
                    if parked {
                        return LoopVerdict::Fine;
                    }
                }
                _ => return LoopVerdict::Watch(Watch::CheckPark),
            }
        }
        // Since when it surely has not come back: it cannot while blocked elsewhere, and
        // the probe would have seen it while attached.
        let sure_since = match (blocked, facts.probe_since_ns) {
            (true, Some(p)) => p.min(sample.off_cpu_at_ns),
            (true, None) => sample.off_cpu_at_ns,
            (false, Some(p)) => p,
            (false, None) => return LoopVerdict::Watch(Watch::Probe),
        }
        .max(back);
        if Self::crossed(self.threshold, back, now_ns)
            && now_ns.saturating_sub(sure_since) >= proven
        {
            return LoopVerdict::Stalled(Candidate {
                thread: sample.key,
                tgid: sample.tgid,
                kind: HangKind::LoopStall,
                threshold: self.threshold,
                since_ns: back,
                members: Vec::new(),
                reason: None,
            });
        }
        if blocked {
            LoopVerdict::Fine // proven by the blocking wait itself, soon enough
        } else {
            LoopVerdict::Watch(Watch::Probe)
        }
    }
}

/// Frames of a worker parked idle, by runtime: tokio's multi-thread and current-thread
/// parkers, the standard library's `thread::park` (which they and others build on), Go's
/// idle M.
const PARK_FRAMES: &[&str] = &[
    "tokio::runtime::scheduler::multi_thread::park::",
    "tokio::runtime::park::",
    "tokio::runtime::scheduler::current_thread::",
    "std::thread::park",
    "std::sys::sync::thread_parking::",
    "runtime.notesleep",
    "runtime.futexsleep",
];

/// Whether a stack (function names, innermost first) is that of a worker parked idle.
pub fn is_parked<'a>(symbols: impl IntoIterator<Item = &'a str>) -> bool {
    symbols.into_iter().any(|s| {
        PARK_FRAMES
            .iter()
            .any(|p| s.starts_with(p) || s.contains(p))
    })
}

impl LoopStall {
    /// loop_stall's threshold check: a loop thread last seen back in its wait at `back_ns`
    /// has stayed away for `threshold` (whether that much is proven is `check`'s concern).
    pub fn crossed(threshold: Duration, back_ns: u64, now_ns: u64) -> bool {
        super::reached(now_ns.saturating_sub(back_ns), threshold)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::{detect::testing::blocked, state::LoopState};

    const SEC: u64 = 1_000_000_000;
    const MS: u64 = 1_000_000;

    fn loop_thread(back_at_ns: u64) -> ThreadSample {
        let mut s = blocked(7, 7, task_state::INTERRUPTIBLE, back_at_ns);
        s.event_loop = Some(LoopState {
            waits: 10,
            in_wait: false,
            back_at_ns,
            in_futex: false,
            futex_left_at_ns: 0,
        });
        s
    }

    fn running(mut s: ThreadSample) -> ThreadSample {
        s.on_cpu = true;
        s.task_state = task_state::RUNNING;
        s.woken = true;
        s
    }

    fn stall() -> LoopStall {
        LoopStall {
            threshold: Duration::from_secs(2),
        }
    }

    #[test]
    fn an_idle_loop_is_fine_however_long() {
        let mut s = loop_thread(0);
        s.event_loop.as_mut().unwrap().in_wait = true;
        assert_eq!(
            stall().check(&s, &LoopFacts::default(), 100 * SEC),
            LoopVerdict::Fine
        );
    }

    #[test]
    fn blocked_elsewhere_past_threshold_is_a_stall() {
        // Came back at 10 s, blocked in nanosleep right after.
        let s = loop_thread(10 * SEC);
        let facts = LoopFacts::default();
        assert_eq!(stall().check(&s, &facts, 11 * SEC), LoopVerdict::Fine);
        let LoopVerdict::Stalled(c) = stall().check(&s, &facts, 12 * SEC) else {
            panic!("not a stall at 2 s");
        };
        assert_eq!((c.kind, c.since_ns), (HangKind::LoopStall, 10 * SEC));
    }

    #[test]
    fn running_needs_the_probe_to_prove_it_did_not_come_back() {
        let s = running(loop_thread(10 * SEC));
        let mut facts = LoopFacts::default();
        assert_eq!(
            stall().check(&s, &facts, 13 * SEC),
            LoopVerdict::Watch(Watch::Probe),
            "no probe: a busy loop may return without blocking"
        );
        facts.probe_since_ns = Some(13 * SEC);
        assert_eq!(
            stall().check(&s, &facts, 13 * SEC + 100 * MS),
            LoopVerdict::Watch(Watch::Probe),
            "watched for 100 ms only"
        );
        assert!(matches!(
            stall().check(&s, &facts, 13 * SEC + 500 * MS),
            LoopVerdict::Stalled(_)
        ));
    }

    #[test]
    fn a_busy_loop_seen_returning_is_fine() {
        // The probe saw it enter epoll_wait at 13.4 s: `back_at_ns` moved there.
        let s = running(loop_thread(13 * SEC + 400 * MS));
        let facts = LoopFacts {
            probe_since_ns: Some(13 * SEC),
            ..LoopFacts::default()
        };
        assert_eq!(
            stall().check(&s, &facts, 13 * SEC + 500 * MS),
            LoopVerdict::Fine
        );
    }

    #[test]
    fn futex_waits_are_judged_by_the_stack() {
        let mut s = loop_thread(10 * SEC);
        s.event_loop.as_mut().unwrap().in_futex = true;
        let mut facts = LoopFacts::default();
        assert_eq!(
            stall().check(&s, &facts, 13 * SEC),
            LoopVerdict::Watch(Watch::CheckPark)
        );
        facts.parked.insert(s.key, (s.off_cpu_at_ns, true));
        assert_eq!(stall().check(&s, &facts, 60 * SEC), LoopVerdict::Fine);
        facts.parked.insert(s.key, (s.off_cpu_at_ns, false));
        assert!(matches!(
            stall().check(&s, &facts, 13 * SEC),
            LoopVerdict::Stalled(_)
        ));
    }

    #[test]
    fn a_parker_returns_to_idle_through_its_futex() {
        let mut s = running(loop_thread(SEC));
        s.event_loop.as_mut().unwrap().futex_left_at_ns = 20 * SEC;
        let mut facts = LoopFacts {
            probe_since_ns: Some(0),
            ..LoopFacts::default()
        };
        assert!(matches!(
            stall().check(&s, &facts, 21 * SEC),
            LoopVerdict::Stalled(_)
        ));
        facts.parkers.insert(s.key);
        assert_eq!(
            stall().check(&s, &facts, 21 * SEC),
            LoopVerdict::Watch(Watch::Probe),
            "back from its park 1 s ago: watched, not stalled"
        );
    }

    #[test]
    fn park_frames() {
        assert!(is_parked([
            "syscall",
            "std::sys::pal::unix::futex::futex_wait",
            "tokio::runtime::scheduler::multi_thread::park::Inner::park_condvar",
        ]));
        assert!(!is_parked([
            "syscall",
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "handler",
        ]));
    }
}
