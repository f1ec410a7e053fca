//! Thread samples for unit tests, as a scan would report them (the detectors' tests and
//! state's own build on these).
use super::{ProcSyscall, ThreadKey, ThreadSample};

/// A blocked thread as a scan would report it.
pub fn blocked(tid: u32, tgid: u32, task_state: u32, off_cpu_at_ns: u64) -> ThreadSample {
    ThreadSample {
        key: ThreadKey {
            tid,
            start_boottime_ns: 1_000,
        },
        tgid,
        thread_name: "t".into(),
        task_state,
        state_at_switch: task_state,
        off_cpu_at_ns,
        on_cpu: false,
        runnable_since_ns: 0,
        event_loop: None,
        loop_entered_at_ns: 0,
        woken: false,
        kernel_thread: false,
        blocked_before_attach: false,
        syscall: None,
        saved_syscall: None,
        seen_at_ns: 0,
    }
}

/// A thread in `futex(uaddr, FUTEX_WAIT_PRIVATE, val, timeout)`.
pub fn blocked_in_futex(
    tid: u32,
    tgid: u32,
    off_cpu_at_ns: u64,
    val: u64,
    timed: bool,
) -> ThreadSample {
    let mut s = blocked(
        tid,
        tgid,
        hangwatch_ebpf::task_state::INTERRUPTIBLE,
        off_cpu_at_ns,
    );
    s.saved_syscall = Some(ProcSyscall {
        nr: libc::SYS_futex,
        args: [0x1000, 128, val, u64::from(timed), 0, 0],
    });
    s
}
