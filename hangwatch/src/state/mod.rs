//! Per-thread state as the scan sees it: the decoded form of the kernel's `ThreadRecord`s.
//! Plain data and pure functions, so detectors can be fed recorded samples in tests.
pub mod exits;
mod lock;
mod syscalls;
mod table;
#[cfg(test)]
pub mod testing;
mod wait;

use hangwatch_ebpf::{
    FLAG_FUTEX_TIMEOUT, FLAG_IN_SYSCALL, MIN_LOOP_WAITS, PF_KTHREAD, ThreadRecord, ThreadState,
    task_state,
};

pub use self::{
    exits::{ExitRequest, ExitTable},
    lock::{FutexCall, FutexCmd, MUTEX_PREFIX_BYTES, needs_ticks, owner_candidate},
    syscalls::{ProcSyscall, syscall_name},
    table::{Refresh, ThreadTable},
    wait::{TaskState, Wait, futex_op_name},
};

/// A thread, unambiguously: the tid together with its start time survives tid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadKey {
    pub tid: u32,
    pub start_boottime_ns: u64,
}

/// The syscall a thread is blocked in, as the optional futex probes saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedSyscall {
    pub nr: u32,
    pub futex_uaddr: u64,
    pub futex_op: u32,
    pub has_timeout: bool,
    pub entered_at_ns: u64,
}

/// An event-loop thread's dealings with its loop wait (epoll, io_uring), as the scheduler
/// probe (and, while attached, `sys_enter_loop`) recorded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopState {
    /// Blocking waits in the loop wait seen so far.
    pub waits: u32,
    /// Blocked in its loop wait now: an idle loop.
    pub in_wait: bool,
    /// The last time it was seen coming back to its wait: the end of its last blocking
    /// loop wait, or (while `sys_enter_loop` is attached) its last entry into one.
    pub back_at_ns: u64,
    /// Blocked in a futex wait now (a parked worker, or a lock: the stack tells).
    pub in_futex: bool,
    /// The end of its last blocking futex wait: a return to idle for a worker that parks.
    pub futex_left_at_ns: u64,
}

impl LoopState {
    pub fn of(state: &ThreadState) -> Option<Self> {
        if state.loop_waits < MIN_LOOP_WAITS {
            return None;
        }
        let blocked = state.off_cpu_at_ns > state.on_cpu_at_ns && state.state_at_switch != 0;
        Some(Self {
            waits: state.loop_waits,
            in_wait: blocked && state.loop_blocked_at_ns == state.off_cpu_at_ns,
            back_at_ns: state.loop_left_at_ns.max(state.loop_entered_at_ns),
            in_futex: blocked && state.futex_blocked_at_ns == state.off_cpu_at_ns,
            futex_left_at_ns: state.futex_left_at_ns,
        })
    }
}

/// One thread at one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSample {
    pub key: ThreadKey,
    pub tgid: u32,
    /// The thread's own name (`comm` of the task).
    /// Shared, so that the samples the table hands out every tick cost no allocation.
    pub thread_name: std::sync::Arc<str>,
    /// `__state` when the scan looked.
    pub task_state: u32,
    /// `prev_state` when it switched out.
    pub state_at_switch: u32,
    /// CLOCK_MONOTONIC ns of the switch-out that started this wait.
    pub off_cpu_at_ns: u64,
    /// On a CPU now (switched in after its last switch-out).
    pub on_cpu: bool,
    /// Running or runnable without blocking since then (the switch-in after its last
    /// blocking switch-out).
    pub runnable_since_ns: u64,
    /// For an event-loop thread, where it stands with its loop.
    pub event_loop: Option<LoopState>,
    /// Its last entry into a loop wait seen by `sys_enter_loop` (while attached), blocking
    /// or not: how a thread watched as a loop from its stack is seen back in its wait.
    pub loop_entered_at_ns: u64,
    /// Made runnable since it switched out (waiting for a CPU, no longer for an event).
    pub woken: bool,
    pub kernel_thread: bool,
    /// The probes were attached while this thread was already blocked (`off_cpu_at_ns` is
    /// when it was first seen) or already running without blocking (`runnable_since_ns`
    /// is when the first walk saw it).
    pub blocked_before_attach: bool,
    pub syscall: Option<TrackedSyscall>,
    /// The syscall it is in and its arguments, from its saved registers.
    pub saved_syscall: Option<ProcSyscall>,
    pub seen_at_ns: u64,
}

impl ThreadSample {
    pub fn off_cpu_for_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.off_cpu_at_ns)
    }

    /// Not blocked: on a CPU, or preempted and waiting for one.
    pub fn not_blocked(&self) -> bool {
        self.on_cpu || self.state_at_switch == 0 || self.task_state == task_state::RUNNING
    }

    /// In uninterruptible sleep, and not an idle kernel thread (`TASK_IDLE`).
    pub fn uninterruptible(&self) -> bool {
        self.task_state & task_state::UNINTERRUPTIBLE != 0
            && self.task_state & task_state::NOLOAD == 0
    }

    /// Stopped by a signal (`T`) or a tracer (`t`): paused from outside, not hung.
    pub fn paused(&self) -> bool {
        self.task_state & (task_state::STOPPED | task_state::TRACED) != 0
            && self.task_state & (task_state::INTERRUPTIBLE | task_state::UNINTERRUPTIBLE) == 0
    }

    /// In a futex wait, and neither woken nor paused: the thread waits for another one.
    pub fn futex_wait(&self) -> Option<FutexCall> {
        if self.woken || self.paused() || self.kernel_thread {
            return None;
        }
        FutexCall::of(self)
    }

    pub fn wait(&self) -> Wait {
        Wait::describe(self)
    }
}

impl From<&ThreadRecord> for ThreadSample {
    fn from(record: &ThreadRecord) -> Self {
        let s = &record.state;
        let name_len = record.comm.iter().position(|&b| b == 0).unwrap_or(16);
        Self {
            key: ThreadKey {
                tid: record.tid,
                start_boottime_ns: record.start_boottime_ns,
            },
            tgid: record.tgid,
            thread_name: String::from_utf8_lossy(&record.comm[..name_len]).into(),
            task_state: record.task_state,
            state_at_switch: s.state_at_switch,
            off_cpu_at_ns: s.off_cpu_at_ns,
            on_cpu: s.on_cpu_at_ns >= s.off_cpu_at_ns && s.on_cpu_at_ns != 0,
            runnable_since_ns: s.runnable_since_ns,
            event_loop: LoopState::of(s),
            loop_entered_at_ns: s.loop_entered_at_ns,
            // Woken from this wait, or runnable now (preempted, or woken before the probes
            // saw the wait): either way it waits for a CPU, not for an event.
            woken: (s.woken_wait_ns == s.off_cpu_at_ns && s.off_cpu_at_ns != 0)
                || record.task_state == task_state::RUNNING,
            kernel_thread: record.task_flags & PF_KTHREAD != 0,
            // (Running since before the attach only while it has not blocked since: its
            // next blocking switch-out is a later off_cpu_at_ns.)
            blocked_before_attach: s.first_seen_blocked_ns != 0
                && (s.first_seen_blocked_ns == s.off_cpu_at_ns
                    || (s.first_seen_blocked_ns == s.runnable_since_ns
                        && (s.off_cpu_at_ns <= s.on_cpu_at_ns || s.state_at_switch == 0))),
            syscall: (s.flags & FLAG_IN_SYSCALL != 0).then_some(TrackedSyscall {
                nr: s.syscall_nr,
                futex_uaddr: s.futex_uaddr,
                futex_op: s.futex_op,
                has_timeout: s.flags & FLAG_FUTEX_TIMEOUT != 0,
                entered_at_ns: s.syscall_entered_at_ns,
            }),
            saved_syscall: (record.syscall_nr >= 0).then(|| {
                let mut args = [0; 6];
                args[..5].copy_from_slice(&record.syscall_args);
                ProcSyscall {
                    nr: record.syscall_nr,
                    args,
                }
            }),
            seen_at_ns: record.seen_at_ns,
        }
    }
}
