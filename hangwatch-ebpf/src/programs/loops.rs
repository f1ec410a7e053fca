//! `sys_enter_loop`: when an event-loop thread enters its wait (epoll, io_uring), also when
//! the wait does not block. The scheduler probe sees only waits that block; a busy loop
//! whose waits always find events ready never blocks, and without this it would look
//! like a loop stuck on CPU.
//!
//! Any syscall tracepoint sends every syscall of every thread through the kernel's slow
//! syscall path, so the daemon attaches this only while some loop thread has been away
//! from its wait for half its threshold, and detaches it when none is (docs/detection.md, "Event
//! loops").
use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use hangwatch_ebpf::Counter;

use crate::{
    maps::{THREAD_STATE, count},
    syscalls::is_loop_wait,
    task::Task,
};

/// `sys_enter(struct pt_regs *regs, long id)`.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_loop(ctx: BtfTracePointContext) -> i32 {
    count(Counter::SysEnterEvents);
    let id: i64 = ctx.arg(1);
    if !is_loop_wait(id) {
        return 0;
    }
    // SAFETY: the helper returns the running task, valid while we run.
    let Some(task) = Task::new(unsafe { bpf_get_current_task_btf() }) else {
        return 0;
    };
    // Threads known as loops, and those the daemon watches as loops recognized by their
    // stacks (running, with no loop wait seen: `LoopStall::check_by_stack`), have state;
    // for any other the stamp is never read. Never allocate here.
    if let Some(state) = THREAD_STATE.get(task) {
        // SAFETY: a helper without arguments or preconditions.
        state.loop_entered_at_ns = unsafe { bpf_ktime_get_ns() };
    }
    0
}
