//! The scheduler probes: the hot path every machine pays for on each context switch.
//!
//! Per switch: one task-storage lookup (prev's), a few stores, the per-CPU event counter,
//! the time from `jiffies` (an inlined load, no helper call: `clock.rs`), and a bit test
//! for `next` (an inlined array lookup). Only a followed `next` (a candidate of the last
//! walk, a loop candidate, or every thread while an `on_cpu` rule has targets) costs a
//! second lookup: other threads' switch-ins are not recorded, the walks read "running since
//! it switched out" from the live task state instead (docs/design.md, "The per-switch
//! cost"). On a blocking switch-out of a loop candidate, one more load: the syscall it
//! blocks in, from its saved registers, which is how event-loop threads are recognized
//! without any syscall probe. BTF tracepoints (`tp_btf`) because they hand us the task
//! pointers that task storage is keyed by and cost far less than a classic tracepoint.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use hangwatch_ebpf::{Counter, ThreadState};

use crate::{
    clock,
    maps::{SCAN_CONFIG, THREAD_STATE, count, followed},
    syscalls::{WaitKind, saved_syscall_nr, wait_kind},
    task::{Task, pid_offset},
};

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev: *mut task_struct = ctx.arg(1);
    let next: *mut task_struct = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    let now = clock::now();
    count(Counter::SchedSwitchEvents);

    match Task::new(prev).and_then(|t| THREAD_STATE.get_or_create(t).map(|s| (t, s))) {
        Some((task, state)) => {
            let out = clock::switch_out(state, now);
            state.off_cpu_at_ns = out;
            state.state_at_switch = prev_state;
            // Blocking (not preempted), and a thread a walk saw waiting in a loop wait: in
            // which kind of wait does it block now? Only loop candidates pay the register
            // read; for the rest of the machine this is one test of a loaded word.
            if prev_state != 0 && state.loop_candidate != 0 {
                match wait_kind(saved_syscall_nr(task)) {
                    WaitKind::Loop => {
                        state.loop_blocked_at_ns = out;
                        state.loop_waits = state.loop_waits.wrapping_add(1);
                    }
                    WaitKind::Futex => state.futex_blocked_at_ns = out,
                    WaitKind::Other => {}
                }
            }
        }
        None => count(Counter::StateUnavailable),
    }
    if let Some(next) = Task::new(next)
        && (follow_all() || followed(next.field(pid_offset())))
    {
        match THREAD_STATE.get_or_create(next) {
            Some(state) => switched_in(state, now),
            None => count(Counter::StateUnavailable),
        }
    }
    0
}

/// Every switch-in is recorded while an `on_cpu` rule has targets: its detector needs when
/// each running stretch began, for threads no walk has followed yet.
#[inline(always)]
fn follow_all() -> bool {
    SCAN_CONFIG
        .get(0)
        .is_some_and(|config| config.on_cpu_min_ns != u64::MAX)
}

/// A followed thread goes on CPU at `now` (`clock::now`). Back from a blocking wait: a new
/// stretch of running begins, and if the wait was a loop's or a futex's, this is when it
/// ended. (A thread's first recorded switch-in starts its first stretch.) The walk does the
/// same for a thread it starts following while it runs (`scan::catch_up_switch_in`).
#[inline(always)]
pub fn switched_in(state: &mut ThreadState, now: u64) {
    let now = clock::switch_in(state, now);
    state.on_cpu_at_ns = now;
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
