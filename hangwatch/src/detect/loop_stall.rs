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
//!
//! A loop that stalls before it has been seen in its wait twice (on its first request, or
//! before the daemon started) is recognized from what it is instead (`check_by_stack`): a
//! thread of a process with an epoll or io_uring fd (`meta::loop_fds`), blocked outside
//! its loop wait, a poll and a futex wait, or running without blocking, for longer than
//! the threshold, whose user stack (read once per wait, or sampled on CPU once per run, by
//! the enrich stage, `Watch::CheckDriver`) shows an event loop's driver frame
//! (`DRIVER_FRAMES`); a running one must also be proven not to come back to its wait, as
//! a running loop thread is (`check_running_by_stack`).
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use super::Candidate;
use crate::{
    kind::HangKind,
    state::{FutexCall, FutexCmd, ProcSyscall, ThreadKey, ThreadSample},
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
    /// Processes with an epoll or io_uring fd (`meta::loop_fds`).
    pub fd_processes: HashSet<u32>,
    /// Verdicts on waits of threads of those processes from their stacks: the wait (its
    /// switch-out time) and the event loop's driver frame, if the stack shows one.
    pub drivers: HashMap<ThreadKey, (u64, Option<Arc<str>>)>,
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
    /// Read its stack for an event loop's driver (a thread not yet known as a loop thread,
    /// blocked elsewhere, in a process with a loop fd).
    CheckDriver,
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
            return self.stalled(sample, back);
        }
        if blocked {
            LoopVerdict::Fine // proven by the blocking wait itself, soon enough
        } else {
            LoopVerdict::Watch(Watch::Probe)
        }
    }
}

impl LoopStall {
    /// A thread not (yet) known as a loop thread by its waits: a stall if its process has a
    /// loop fd, it has been blocked outside its loop wait for the threshold, and its stack
    /// (read once per wait, from half the threshold on) shows an event loop's driver. A
    /// running one is `check_running_by_stack`'s.
    pub fn check_by_stack(
        &self,
        sample: &ThreadSample,
        facts: &LoopFacts,
        now_ns: u64,
    ) -> LoopVerdict {
        if sample.event_loop.is_some()
            || sample.paused()
            || sample.kernel_thread
            || !facts.fd_processes.contains(&sample.tgid)
        {
            return LoopVerdict::Fine;
        }
        if sample.not_blocked() {
            return self.check_running_by_stack(sample, facts, now_ns);
        }
        if sample.woken {
            return LoopVerdict::Fine;
        }
        // Idle where a loop or a worker idles: its loop wait, a poll, a futex (a park, or a
        // lock: `lock_wait` and `deadlock` report those with their owner), but for a main
        // thread's untimed private futex wait (`main_thread_lock_wait`).
        let Some(call) = &sample.saved_syscall else {
            return LoopVerdict::Fine;
        };
        if is_idle_wait(call.nr) && !main_thread_lock_wait(sample, call) {
            return LoopVerdict::Fine;
        }
        let away = sample.off_cpu_for_ns(now_ns);
        if away < nanos(self.threshold / 2) {
            return LoopVerdict::Fine;
        }
        match facts.drivers.get(&sample.key) {
            Some((wait, driver)) if *wait == sample.off_cpu_at_ns => match driver {
                Some(_) if Self::crossed(self.threshold, sample.off_cpu_at_ns, now_ns) => {
                    self.stalled(sample, sample.off_cpu_at_ns)
                }
                _ => LoopVerdict::Fine,
            },
            _ => LoopVerdict::Watch(Watch::CheckDriver),
        }
    }
}

impl LoopStall {
    /// A thread not known as a loop thread by its waits, running without blocking: a stall
    /// if its process has a loop fd, its stack (sampled on CPU once per run, from half the
    /// threshold on) shows an event loop's driver, and it has not entered its loop wait
    /// for the threshold. A busy loop whose waits find events ready never blocks, so that
    /// last part must be proven as for a loop thread (`check`): by `sys_enter_loop`, which
    /// sees every entry into a loop wait while attached, for a quarter of the threshold. A
    /// CPU-bound thread with no driver frame (a worker, a batch job beside a server) and a
    /// busy loop that keeps coming back to its wait stay quiet.
    fn check_running_by_stack(
        &self,
        sample: &ThreadSample,
        facts: &LoopFacts,
        now_ns: u64,
    ) -> LoopVerdict {
        let run = sample.runnable_since_ns;
        if run == 0 {
            return LoopVerdict::Fine; // its run has no start yet: the walk follows it
        }
        let back = run.max(sample.loop_entered_at_ns);
        if now_ns.saturating_sub(back) < nanos(self.threshold / 2) {
            return LoopVerdict::Fine;
        }
        match facts.drivers.get(&sample.key) {
            Some((checked, Some(_))) if *checked == run => {}
            Some((checked, None)) if *checked == run => return LoopVerdict::Fine,
            _ => return LoopVerdict::Watch(Watch::CheckDriver),
        }
        let Some(probe_since) = facts.probe_since_ns else {
            return LoopVerdict::Watch(Watch::Probe);
        };
        if Self::crossed(self.threshold, back, now_ns)
            && now_ns.saturating_sub(probe_since.max(back)) >= nanos(self.proven())
        {
            return self.stalled(sample, back);
        }
        LoopVerdict::Watch(Watch::Probe)
    }
}

/// The wait, or for a thread that runs the run, that a stack check (`Watch::CheckDriver`,
/// `Watch::CheckPark`) is about: its start, the key of the verdict (one check each).
pub fn checked_stretch_ns(sample: &ThreadSample) -> u64 {
    if sample.not_blocked() {
        sample.runnable_since_ns
    } else {
        sample.off_cpu_at_ns
    }
}

/// A main thread in an untimed wait on a private futex: a lock or a semaphore
/// (`threading.Lock`, `sem_wait`, a mutex). asyncio, gevent, Node and Redis run their loops
/// on the main thread, and a handler that takes a lock held elsewhere leaves the loop
/// there, in a futex wait that no loop history and no lock rule may know (a Python lock is
/// a semaphore, which keeps no owner). Its stack is read once per wait like any other
/// thread's away from its wait, and a driver frame decides. Other threads of a loop
/// process in futex waits (pools, parked workers, every JVM and Go thread at rest) are not
/// read: too many, and their loops (tokio's workers) are the history's; a main thread
/// joining a thread waits on a shared futex, a timed wait is a poll with a timeout.
fn main_thread_lock_wait(sample: &ThreadSample, call: &ProcSyscall) -> bool {
    sample.key.tid == sample.tgid
        && FutexCall::from_syscall(call)
            .is_some_and(|f| f.cmd == FutexCmd::Wait && f.private && !f.timed)
}

/// The waits a thread idles in: an event loop's own (epoll, io_uring), a poll (glib's main
/// loop, blocking I/O with a timeout) and a futex (a parked worker, or a lock).
fn is_idle_wait(nr: i64) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(nr, libc::SYS_epoll_wait | libc::SYS_poll | libc::SYS_select) {
        return true;
    }
    matches!(
        nr,
        libc::SYS_epoll_pwait
            | libc::SYS_epoll_pwait2
            | libc::SYS_io_uring_enter
            | libc::SYS_ppoll
            | libc::SYS_pselect6
            | libc::SYS_futex
    ) || nr == FUTEX_WAITV
        || nr == FUTEX_WAIT
}

const FUTEX_WAITV: i64 = 449;
const FUTEX_WAIT: i64 = 455;

/// Frames that drive an event loop, by runtime: a thread blocked with one of them on its
/// stack, outside its loop wait, is a loop that does not come back to it. Rust paths match
/// as a prefix (generics, closures); C and Python names exactly. Python frames are the
/// interpreter's (`stack/python`): CPython 3.11+ names them by qualified name.
const DRIVER_FRAMES: &[&str] = &[
    // libev (gevent's default hub), libuv (Node), redis, nginx, glib.
    "ev_run",
    "uv_run",
    "aeMain",
    "aeProcessEvents",
    "ngx_process_events_and_timers",
    "g_main_loop_run",
    "g_main_context_iterate",
    // tokio: a multi-thread worker, a current-thread runtime, `Runtime::block_on`'s thread.
    "tokio::runtime::scheduler::multi_thread::worker::run",
    "tokio::runtime::scheduler::multi_thread::worker::Context::run",
    "tokio::runtime::scheduler::current_thread::CurrentThread::block_on",
    "tokio::runtime::scheduler::current_thread::CoreGuard::block_on",
    "tokio::runtime::park::CachedParkThread::block_on",
    "mio::poll::Poll::poll",
    // CPython's asyncio (3.11+ qualified names, then 3.9/3.10's bare ones) and gevent's hub.
    "BaseEventLoop._run_once",
    "BaseEventLoop.run_forever",
    "_run_once",
    "Hub.run",
];

/// Frames that say the thread was handed off its loop on purpose: tokio's `block_in_place`
/// gives the worker's core to another thread, so the runtime goes on while it blocks.
const HANDED_OFF_FRAMES: &[&str] =
    &["tokio::runtime::scheduler::multi_thread::worker::block_in_place"];

/// The event loop's driver frame in a stack (function names, innermost first), if it shows
/// one and the thread was not handed off its loop nor parked.
pub fn driver_frame<'a>(symbols: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if symbols
        .clone()
        .into_iter()
        .any(|s| HANDED_OFF_FRAMES.iter().any(|p| names(s, p)))
        || is_parked(symbols.clone())
    {
        return None;
    }
    symbols
        .into_iter()
        .find(|s| DRIVER_FRAMES.iter().any(|p| names(s, p)))
}

/// Whether `symbol` is the function `name`: the same, or `name` followed by what a
/// demangled Rust path adds (`<T>`, `::{{closure}}`, ` (inlined)`).
fn names(symbol: &str, name: &str) -> bool {
    symbol
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['<', ':', ' ', '(', '{']))
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
    /// The verdict for `sample`, stalled since `since_ns` (its last return, or the start of
    /// the wait or run its stack was read in).
    fn stalled(&self, sample: &ThreadSample, since_ns: u64) -> LoopVerdict {
        LoopVerdict::Stalled(Candidate {
            thread: sample.key,
            tgid: sample.tgid,
            kind: HangKind::LoopStall,
            threshold: self.threshold,
            since_ns,
            members: Vec::new(),
            reason: None,
        })
    }

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

    fn in_read(tid: u32, tgid: u32, off_cpu_at_ns: u64) -> ThreadSample {
        let mut s = blocked(tid, tgid, task_state::INTERRUPTIBLE, off_cpu_at_ns);
        s.saved_syscall = Some(crate::state::ProcSyscall {
            nr: libc::SYS_read,
            args: [0; 6],
        });
        s
    }

    #[test]
    fn a_thread_of_a_loop_process_is_a_stall_once_its_stack_shows_a_driver() {
        let s = in_read(8, 8, 10 * SEC);
        let mut facts = LoopFacts::default();
        assert_eq!(
            stall().check_by_stack(&s, &facts, 12 * SEC),
            LoopVerdict::Fine,
            "no epoll or io_uring fd: never looked at"
        );
        facts.fd_processes.insert(8);
        assert_eq!(
            stall().check_by_stack(&s, &facts, 10 * SEC + 900 * MS),
            LoopVerdict::Fine
        );
        assert_eq!(
            stall().check_by_stack(&s, &facts, 11 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver),
            "its stack is read from half the threshold on"
        );
        facts
            .drivers
            .insert(s.key, (10 * SEC, Some("uv_run".into())));
        assert_eq!(
            stall().check_by_stack(&s, &facts, 11 * SEC),
            LoopVerdict::Fine
        );
        let LoopVerdict::Stalled(c) = stall().check_by_stack(&s, &facts, 12 * SEC) else {
            panic!("not a stall at the threshold");
        };
        assert_eq!((c.kind, c.since_ns), (HangKind::LoopStall, 10 * SEC));
        // No driver in the stack of this wait: quiet for the whole wait.
        facts.drivers.insert(s.key, (10 * SEC, None));
        assert_eq!(
            stall().check_by_stack(&s, &facts, 100 * SEC),
            LoopVerdict::Fine
        );
        // A new wait is asked about again.
        let later = in_read(8, 8, 50 * SEC);
        assert_eq!(
            stall().check_by_stack(&later, &facts, 52 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver)
        );
    }

    #[test]
    fn a_running_thread_of_a_loop_process_is_sampled_then_proven_by_the_probe() {
        let mut s = running(in_read(8, 8, 0));
        s.runnable_since_ns = 10 * SEC;
        let mut facts = LoopFacts::default();
        facts.fd_processes.insert(8);
        assert_eq!(
            stall().check_by_stack(&s, &facts, 10 * SEC + 900 * MS),
            LoopVerdict::Fine,
            "run for less than half the threshold"
        );
        assert_eq!(
            stall().check_by_stack(&s, &facts, 11 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver),
            "sampled from half the threshold on"
        );
        assert_eq!(checked_stretch_ns(&s), 10 * SEC, "one sample per run");
        facts
            .drivers
            .insert(s.key, (10 * SEC, Some("uv_run".into())));
        assert_eq!(
            stall().check_by_stack(&s, &facts, 12 * SEC),
            LoopVerdict::Watch(Watch::Probe),
            "a busy loop may come back without blocking: the probe must watch"
        );
        facts.probe_since_ns = Some(11 * SEC + 700 * MS);
        assert_eq!(
            stall().check_by_stack(&s, &facts, 12 * SEC),
            LoopVerdict::Watch(Watch::Probe),
            "watched for 300 ms only"
        );
        let LoopVerdict::Stalled(c) = stall().check_by_stack(&s, &facts, 12 * SEC + 200 * MS)
        else {
            panic!("not a stall once proven");
        };
        assert_eq!((c.kind, c.since_ns), (HangKind::LoopStall, 10 * SEC));
        // Seen entering its wait (a busy loop): back, from there.
        s.loop_entered_at_ns = 12 * SEC;
        assert_eq!(
            stall().check_by_stack(&s, &facts, 12 * SEC + 500 * MS),
            LoopVerdict::Fine
        );
        // No driver in its stack: quiet for the whole run; a new run is sampled again.
        s.loop_entered_at_ns = 0;
        facts.drivers.insert(s.key, (10 * SEC, None));
        assert_eq!(
            stall().check_by_stack(&s, &facts, 100 * SEC),
            LoopVerdict::Fine
        );
        s.runnable_since_ns = 50 * SEC;
        assert_eq!(
            stall().check_by_stack(&s, &facts, 52 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver)
        );
        // Preempted (runnable, not on a CPU) is running all the same.
        s.on_cpu = false;
        s.state_at_switch = 0;
        assert_eq!(
            stall().check_by_stack(&s, &facts, 52 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver)
        );
    }

    #[test]
    fn a_main_thread_in_an_untimed_private_futex_wait_is_asked_about() {
        let mut facts = LoopFacts::default();
        facts.fd_processes.insert(8);
        let main = crate::state::testing::blocked_in_futex(8, 8, 10 * SEC, 0, false);
        assert_eq!(
            stall().check_by_stack(&main, &facts, 11 * SEC),
            LoopVerdict::Watch(Watch::CheckDriver),
            "a lock taken by a loop's handler on the main thread"
        );
        facts
            .drivers
            .insert(main.key, (10 * SEC, Some("BaseEventLoop._run_once".into())));
        assert!(matches!(
            stall().check_by_stack(&main, &facts, 12 * SEC),
            LoopVerdict::Stalled(_)
        ));
        let worker = crate::state::testing::blocked_in_futex(9, 8, 10 * SEC, 0, false);
        let timed = crate::state::testing::blocked_in_futex(8, 8, 10 * SEC, 0, true);
        let mut shared = main.clone();
        shared.saved_syscall.as_mut().unwrap().args[1] = 0; // FUTEX_WAIT, not private
        for (what, s) in [
            ("another thread (pools, parked workers)", worker),
            ("a timed wait", timed),
            ("a shared futex (pthread_join)", shared),
        ] {
            assert_eq!(
                stall().check_by_stack(
                    &s,
                    &LoopFacts {
                        drivers: HashMap::new(),
                        ..facts.clone()
                    },
                    11 * SEC
                ),
                LoopVerdict::Fine,
                "{what}"
            );
        }
    }

    #[test]
    fn idle_waits_and_running_threads_without_a_run_are_never_asked_about() {
        let mut facts = LoopFacts::default();
        facts.fd_processes.insert(8);
        for nr in [libc::SYS_epoll_pwait, libc::SYS_ppoll, libc::SYS_futex, 426] {
            let mut s = in_read(8, 8, 0);
            s.saved_syscall.as_mut().unwrap().nr = nr;
            assert_eq!(
                stall().check_by_stack(&s, &facts, 60 * SEC),
                LoopVerdict::Fine,
                "{nr}"
            );
        }
        let s = running(in_read(8, 8, 0));
        assert_eq!(
            stall().check_by_stack(&s, &facts, 60 * SEC),
            LoopVerdict::Fine,
            "running, its run not timed (no walk followed it yet)"
        );
        // A known loop thread is the history's.
        let s = loop_thread(0);
        assert_eq!(
            stall().check_by_stack(&s, &facts, 60 * SEC),
            LoopVerdict::Fine
        );
    }

    #[test]
    fn driver_frames() {
        let worker = [
            "clock_nanosleep",
            "std::thread::sleep",
            "tokio_server::handle_request",
            "tokio::runtime::task::harness::Harness<T,S>::poll",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run_task",
            "tokio::runtime::scheduler::multi_thread::worker::Context::run",
            "tokio::runtime::scheduler::multi_thread::worker::run",
            "tokio::runtime::blocking::pool::Inner::run",
        ];
        assert_eq!(
            driver_frame(worker),
            Some("tokio::runtime::scheduler::multi_thread::worker::Context::run")
        );
        // spawn_blocking's thread: the blocking pool, no worker.
        assert_eq!(
            driver_frame([
                "read",
                "std::fs::File::read",
                "tokio_server::blocking_read::{{closure}}",
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                "tokio::runtime::blocking::pool::Inner::run",
            ]),
            None
        );
        // block_in_place: the worker's core went on without it.
        let mut handed = worker.to_vec();
        handed.insert(
            3,
            "tokio::runtime::scheduler::multi_thread::worker::block_in_place",
        );
        assert_eq!(driver_frame(handed), None);
        assert_eq!(
            driver_frame(["nanosleep", "handler", "ev_run", "main"]),
            Some("ev_run")
        );
        assert_eq!(
            driver_frame(["ev_run_pending", "main"]),
            None,
            "a prefix only"
        );
        assert_eq!(
            driver_frame([
                "clock_nanosleep",
                "serve",
                "BaseEventLoop._run_once",
                "main"
            ]),
            Some("BaseEventLoop._run_once")
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
