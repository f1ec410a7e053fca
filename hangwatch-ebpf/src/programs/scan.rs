//! The task iterators the daemon reads at each scan. They walk every thread in the kernel,
//! but only where the daemon asks (one `read()` per scan) and they emit only what is worth
//! a look, so the cost is paid per scan, never per event.
//!
//! `scan_threads` emits a `ThreadRecord` for each thread off-CPU longer than the thresholds
//! of `SCAN_CONFIG`; `dump_stacks` emits a `StackRecord` (kernel stack, user registers) for
//! each thread the daemon named in `STACK_REQUESTS`, i.e. only for threads being reported.
use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_task_stack, bpf_seq_write, bpf_task_pt_regs},
    },
};
use hangwatch_ebpf::{Counter, MAX_KERNEL_STACK_DEPTH, PF_KTHREAD, ThreadRecord, task_state};

use crate::{
    maps::{SCAN_CONFIG, STACK_REQUESTS, STACK_SCRATCH, THREAD_STATE, WATCHED_TGIDS, count},
    task::{Task, offsets},
};

/// `struct bpf_iter_meta` (include/linux/bpf.h).
#[repr(C)]
pub struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: the context of an `iter/task` program.
#[repr(C)]
pub struct IterTaskContext {
    meta: *mut IterMeta,
    task: *mut task_struct,
}

#[inline(always)]
fn write<T>(ctx: *mut IterTaskContext, record: *const T) {
    // SAFETY: ctx and meta are valid for the duration of the program (verifier-checked).
    let seq = unsafe { (*(*ctx).meta).seq };
    let len = core::mem::size_of::<T>() as u32;
    if unsafe { bpf_seq_write(seq, record.cast(), len) } != 0 {
        count(Counter::RecordsDeferred);
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn scan_threads(ctx: *mut IterTaskContext) -> i32 {
    // SAFETY: the kernel passes a valid context; `task` is null at the end of the walk.
    let Some(task) = Task::new(unsafe { (*ctx).task }) else {
        return 0;
    };
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    let exit_state: u32 = task.read(off.exit_state);
    if exit_state != 0 {
        return 0; // a zombie or dead thread: it waits for nothing
    }
    let task_state: u32 = task.read(off.state);
    let now = unsafe { bpf_ktime_get_ns() };

    let state = match THREAD_STATE.get(task) {
        Some(state) => state,
        // No switch seen since the probes were attached: if it is not runnable it has been
        // blocked since before then. Start its clock now and say so.
        None if task_state != task_state::RUNNING => match THREAD_STATE.get_or_create(task) {
            Some(state) => {
                state.off_cpu_at_ns = now;
                state.state_at_switch = task_state;
                state.first_seen_blocked_ns = now;
                count(Counter::BlockedBeforeAttach);
                state
            }
            None => {
                count(Counter::StateUnavailable);
                return 0;
            }
        },
        None => return 0,
    };
    if state.off_cpu_at_ns <= state.on_cpu_at_ns {
        return 0; // on CPU
    }
    let off_cpu_for = now.saturating_sub(state.off_cpu_at_ns);
    let Some(config) = SCAN_CONFIG.get(0) else {
        return 0;
    };
    let uninterruptible =
        task_state & task_state::UNINTERRUPTIBLE != 0 && task_state & task_state::NOLOAD == 0;
    let tgid: u32 = task.read(off.tgid);
    let wanted = off_cpu_for >= config.any_min_ns
        || (uninterruptible && off_cpu_for >= config.d_state_min_ns)
        || (off_cpu_for >= config.watched_min_ns
            // SAFETY: the value is not used, only its presence.
            && unsafe { WATCHED_TGIDS.get(tgid) }.is_some());
    let maybe_futex = off_cpu_for >= config.futex_min_ns;
    if !wanted && !maybe_futex {
        return 0;
    }
    let task_flags: u32 = task.read(off.flags);
    let (syscall_nr, syscall_args) = if task_flags & PF_KTHREAD == 0 {
        let regs = unsafe { bpf_task_pt_regs(task.as_ptr()) } as *const u8;
        // 32 bits on every architecture (arm64 keeps it in an s32).
        let nr = unsafe { bpf_probe_read_kernel(regs.wrapping_add(REG_SYSCALL_NR).cast::<i32>()) }
            .map_or(-1, i64::from);
        if !wanted && !is_futex_wait(nr) {
            return 0;
        }
        (
            nr,
            [
                read_reg(regs, REG_ARG0),
                read_reg(regs, REG_ARG1),
                read_reg(regs, REG_ARG2),
                read_reg(regs, REG_ARG3),
                read_reg(regs, REG_ARG4),
            ],
        )
    } else if wanted {
        (-1, [0; 5])
    } else {
        return 0;
    };
    let record = ThreadRecord {
        state: *state,
        start_boottime_ns: task.read(off.start_boottime),
        seen_at_ns: now,
        tid: task.read(off.pid),
        tgid,
        task_state,
        task_flags,
        comm: task.comm(off.comm),
        syscall_nr,
        syscall_args,
    };
    write(ctx, &record);
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn dump_stacks(ctx: *mut IterTaskContext) -> i32 {
    // SAFETY: as in `scan_threads`.
    let Some(task) = Task::new(unsafe { (*ctx).task }) else {
        return 0;
    };
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    let tid: u32 = task.read(off.pid);
    // SAFETY: presence check only.
    if unsafe { STACK_REQUESTS.get(tid) }.is_none() {
        return 0;
    }
    let Some(record) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, ours while this program runs.
    let record = unsafe { &mut *record };
    record.tid = tid;
    record.start_boottime_ns = task.read(off.start_boottime);
    record.user_ip = 0;
    record.user_sp = 0;
    record.user_fp = 0;

    let flags: u32 = task.read(off.flags);
    if flags & PF_KTHREAD == 0 {
        // The user registers saved at kernel entry: valid as long as the thread stays in
        // the kernel, which is the case for every blocked thread we are asked about.
        let regs = unsafe { bpf_task_pt_regs(task.as_ptr()) } as *const u8;
        record.user_ip = read_reg(regs, REG_IP);
        record.user_sp = read_reg(regs, REG_SP);
        record.user_fp = read_reg(regs, REG_FP);
    }

    let size = (MAX_KERNEL_STACK_DEPTH * 8) as u32;
    let stack = record.kernel_stack.as_mut_ptr().cast();
    let len = unsafe { bpf_get_task_stack(task.as_ptr(), stack, size, 0) };
    record.kernel_depth = if len > 0 { (len / 8) as u32 } else { 0 };
    if len <= 0 {
        count(Counter::KernelStackFailed);
    }
    write(ctx, record as *const _);
    0
}

/// The syscalls a thread waits on a futex in: futex(2), futex_waitv(2), futex_wait(2).
#[inline(always)]
fn is_futex_wait(nr: i64) -> bool {
    nr == SYS_FUTEX || nr == 449 || nr == 455
}

#[cfg(bpf_target_arch = "x86_64")]
const SYS_FUTEX: i64 = 202;
#[cfg(bpf_target_arch = "aarch64")]
const SYS_FUTEX: i64 = 98;

#[inline(always)]
fn read_reg(regs: *const u8, offset: usize) -> u64 {
    // SAFETY: probe_read_kernel fails instead of faulting on a bad address.
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(offset).cast::<u64>()) }.unwrap_or(0)
}

// Byte offsets in `struct pt_regs`, a fixed layout per architecture.
#[cfg(bpf_target_arch = "x86_64")]
const REG_IP: usize = 16 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_SP: usize = 19 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_FP: usize = 4 * 8; // rbp
// The syscall number as entered (orig_ax, -1 for interrupts and exceptions) and the
// argument registers of the syscall ABI: rdi, rsi, rdx, r10, r8.
#[cfg(bpf_target_arch = "x86_64")]
const REG_SYSCALL_NR: usize = 15 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_ARG0: usize = 14 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_ARG1: usize = 13 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_ARG2: usize = 12 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_ARG3: usize = 7 * 8;
#[cfg(bpf_target_arch = "x86_64")]
const REG_ARG4: usize = 9 * 8; // r8

#[cfg(bpf_target_arch = "aarch64")]
const REG_IP: usize = 32 * 8; // pc
#[cfg(bpf_target_arch = "aarch64")]
const REG_SP: usize = 31 * 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_FP: usize = 29 * 8; // x29
// After user_pt_regs (regs[31], sp, pc, pstate): orig_x0 and syscallno. x0 is overwritten
// by the return value, so the first argument is orig_x0.
#[cfg(bpf_target_arch = "aarch64")]
const REG_SYSCALL_NR: usize = 35 * 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_ARG0: usize = 34 * 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_ARG1: usize = 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_ARG2: usize = 2 * 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_ARG3: usize = 3 * 8;
#[cfg(bpf_target_arch = "aarch64")]
const REG_ARG4: usize = 4 * 8;
