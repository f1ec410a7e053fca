//! The scheduler probes: the hot path every machine pays for on each context switch.
//! Two task-storage lookups (prev and next), one timestamp, a few stores; on a blocking
//! switch-out, one more load: the syscall the thread blocks in, from its saved registers,
//! which is how event-loop threads are recognized without any syscall probe. BTF tracepoints
//! (`tp_btf`) because they hand us the task pointers that task storage is keyed by and cost
//! far less than a classic tracepoint (figures in docs/benchmarks.md, "What the probes cost").
use aya_ebpf::{
    bindings::task_struct, helpers::bpf_ktime_get_ns, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use hangwatch_ebpf::Counter;

use crate::{
    maps::{THREAD_STATE, count},
    syscalls::{WaitKind, saved_syscall_nr, wait_kind},
    task::Task,
};

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev: *mut task_struct = ctx.arg(1);
    let next: *mut task_struct = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    count(Counter::SchedSwitchEvents);

    match Task::new(prev).and_then(|t| THREAD_STATE.get_or_create(t).map(|s| (t, s))) {
        Some((task, state)) => {
            state.off_cpu_at_ns = now;
            state.state_at_switch = prev_state;
            // Blocking (not preempted), and a thread a walk saw waiting in a loop wait: in
            // which kind of wait does it block now? Only loop candidates pay the register
            // read; for the rest of the machine this is one test of a loaded word.
            if prev_state != 0 && state.loop_candidate != 0 {
                match wait_kind(saved_syscall_nr(task)) {
                    WaitKind::Loop => {
                        state.loop_blocked_at_ns = now;
                        state.loop_waits = state.loop_waits.wrapping_add(1);
                    }
                    WaitKind::Futex => state.futex_blocked_at_ns = now,
                    WaitKind::Other => {}
                }
            }
        }
        None => count(Counter::StateUnavailable),
    }
    match Task::new(next).and_then(|t| THREAD_STATE.get_or_create(t)) {
        Some(state) => {
            state.on_cpu_at_ns = now;
            // Back from a blocking wait: a new stretch of running begins, and if the wait
            // was a loop's or a futex's, this is when it ended. (A thread's first switch-in
            // starts its first stretch.)
            if state.state_at_switch != 0 {
                state.runnable_since_ns = now;
                let switched_out_at = state.off_cpu_at_ns;
                if state.loop_blocked_at_ns == switched_out_at {
                    state.loop_left_at_ns = now;
                } else if state.futex_blocked_at_ns == switched_out_at {
                    state.futex_left_at_ns = now;
                }
            } else if state.runnable_since_ns == 0 {
                state.runnable_since_ns = now;
            }
        }
        None => count(Counter::StateUnavailable),
    }
    0
}

/// `sched_wakeup(struct task_struct *p)`: the thread is runnable again. Only threads that
/// already have state are touched, so wakeups never allocate. Instead of a timestamp it
/// records which wait was ended (that wait's switch-out time): one load and one store, no
/// clock read, and "woken since it blocked" is `woken_wait_ns == off_cpu_at_ns`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let task: *mut task_struct = ctx.arg(0);
    count(Counter::SchedWakeupEvents);
    if let Some(state) = Task::new(task).and_then(|t| THREAD_STATE.get(t)) {
        state.woken_wait_ns = state.off_cpu_at_ns;
    }
    0
}
