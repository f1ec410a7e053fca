//! Per-thread state as the scan sees it: the decoded form of the kernel's `ThreadRecord`s.
//! Plain data and pure functions, so detectors can be fed recorded samples in tests.
mod lock;
mod syscalls;
mod table;
mod wait;

use hangwatch_ebpf::{FLAG_FUTEX_TIMEOUT, FLAG_IN_SYSCALL, PF_KTHREAD, ThreadRecord, task_state};

pub use lock::{FutexCall, FutexCmd, MUTEX_PREFIX_BYTES, needs_ticks, owner_candidate};
pub use syscalls::syscall_name;
pub use table::{Refresh, ThreadTable};
pub use wait::{TaskState, Wait, futex_op_name};

/// A thread, unambiguously: the tid together with its start time survives tid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadKey {
    pub tid: u32,
    pub start_boottime_ns: u64,
}

use crate::meta::ProcSyscall;

/// The syscall a thread is blocked in, as the optional futex probes saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedSyscall {
    pub nr: u32,
    pub futex_uaddr: u64,
    pub futex_op: u32,
    pub has_timeout: bool,
    pub entered_at_ns: u64,
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
    /// Made runnable since it switched out (waiting for a CPU, no longer for an event).
    pub woken: bool,
    pub kernel_thread: bool,
    /// The probes were attached while this thread was already blocked: `off_cpu_at_ns` is
    /// when it was first seen.
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
            // Woken from this wait, or runnable now (preempted, or woken before the probes
            // saw the wait): either way it waits for a CPU, not for an event.
            woken: (s.woken_wait_ns == s.off_cpu_at_ns && s.off_cpu_at_ns != 0)
                || record.task_state == task_state::RUNNING,
            kernel_thread: record.task_flags & PF_KTHREAD != 0,
            blocked_before_attach: s.first_seen_blocked_ns == s.off_cpu_at_ns
                && s.off_cpu_at_ns != 0,
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
