//! The futex syscall probes: what a thread blocked in a futex waits on (address, op, whether
//! it has a timeout). They run once per futex syscall, not per context switch, and write the
//! same task-local storage as the scheduler probes.
//!
//! Classic tracepoints (`syscalls:sys_enter_futex`...) because syscall tracepoints exist only
//! in that form; the field offsets below are their stable `format` layout (8-byte slots after
//! the common header and `__syscall_nr`).
use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use hangwatch_ebpf::{Counter, FLAG_FUTEX_TIMEOUT, FLAG_IN_SYSCALL, ThreadState};

use crate::{
    maps::{THREAD_STATE, count},
    task::Task,
};

const NR_OFFSET: usize = 8;
const ARG0: usize = 16;

#[inline(always)]
fn arg(ctx: &TracePointContext, index: usize) -> u64 {
    // SAFETY: reads within the tracepoint record, whose layout the kernel documents.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * index) }.unwrap_or(0)
}

#[inline(always)]
fn current_state() -> Option<&'static mut ThreadState> {
    // SAFETY: the helper returns the running task, always valid while we run.
    let task = Task::new(unsafe { bpf_get_current_task_btf() })?;
    let state = THREAD_STATE.get_or_create(task);
    if state.is_none() {
        count(Counter::StateUnavailable);
    }
    state
}

#[inline(always)]
fn enter(ctx: &TracePointContext, uaddr: u64, op: u32, timeout: u64) -> u32 {
    count(Counter::FutexSyscallEvents);
    // SAFETY: NR_OFFSET is the `__syscall_nr` field of every sys_enter tracepoint's record
    // (format files); read_at goes through bpf_probe_read, a bad offset is an error.
    let nr = unsafe { ctx.read_at::<i32>(NR_OFFSET) }.unwrap_or(-1) as u32;
    if let Some(state) = current_state() {
        state.syscall_nr = nr;
        state.futex_uaddr = uaddr;
        state.futex_op = op;
        // SAFETY: a helper without arguments or preconditions.
        state.syscall_entered_at_ns = unsafe { bpf_ktime_get_ns() };
        let timeout_flag = if timeout != 0 { FLAG_FUTEX_TIMEOUT } else { 0 };
        state.flags = (state.flags & !FLAG_FUTEX_TIMEOUT) | FLAG_IN_SYSCALL | timeout_flag;
    }
    0
}

#[inline(always)]
fn exit() -> u32 {
    if let Some(state) = current_state() {
        state.flags &= !(FLAG_IN_SYSCALL | FLAG_FUTEX_TIMEOUT);
    }
    0
}

/// `futex(u32 *uaddr, int op, u32 val, const struct __kernel_timespec *utime, ...)`.
#[tracepoint(category = "syscalls", name = "sys_enter_futex")]
pub fn sys_enter_futex(ctx: TracePointContext) -> u32 {
    enter(&ctx, arg(&ctx, 0), arg(&ctx, 1) as u32, arg(&ctx, 3))
}

/// `futex_wait(void *uaddr, unsigned long val, unsigned long mask, unsigned int flags,
/// struct __kernel_timespec *timeout, clockid_t clockid)`: the op slot keeps the FUTEX2 flags.
#[tracepoint(category = "syscalls", name = "sys_enter_futex_wait")]
pub fn sys_enter_futex_wait(ctx: TracePointContext) -> u32 {
    enter(&ctx, arg(&ctx, 0), arg(&ctx, 3) as u32, arg(&ctx, 4))
}

/// `futex_waitv(struct futex_waitv *waiters, unsigned int nr_futexes, unsigned int flags,
/// struct __kernel_timespec *timeout, clockid_t clockid)`: the first waiter's address.
#[tracepoint(category = "syscalls", name = "sys_enter_futex_waitv")]
pub fn sys_enter_futex_waitv(ctx: TracePointContext) -> u32 {
    let waiters = arg(&ctx, 0);
    // struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 __reserved; }
    // SAFETY: bpf_probe_read_user takes any user address: a bad one is an error (0 here),
    // never a fault.
    let first = unsafe { bpf_probe_read_user((waiters + 8) as *const u64) }.unwrap_or(0);
    // SAFETY: as above.
    let flags = unsafe { bpf_probe_read_user((waiters + 16) as *const u32) }.unwrap_or(0);
    enter(&ctx, first, flags, arg(&ctx, 3))
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex")]
pub fn sys_exit_futex(_ctx: TracePointContext) -> u32 {
    exit()
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex_wait")]
pub fn sys_exit_futex_wait(_ctx: TracePointContext) -> u32 {
    exit()
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex_waitv")]
pub fn sys_exit_futex_waitv(_ctx: TracePointContext) -> u32 {
    exit()
}
