//! The task iterators the daemon reads at each scan. They walk every thread in the kernel,
//! but only where the daemon asks (one `read()` per scan) and they emit only what is worth
//! a look, so the cost is paid per scan, never per event.
//!
//! `scan_threads` emits a `ThreadRecord` for each thread off-CPU longer than the thresholds
//! of `SCAN_CONFIG` (and for the running threads a rule asks about: loop threads away from
//! their wait, threads of processes with a loop fd running for half the loop threshold,
//! selected ones for `on_cpu`); `dump_stacks` emits a `StackRecord` (kernel stack, user registers) for
//! each thread the daemon named in `STACK_REQUESTS`, i.e. only for threads being reported;
//! `sample_clocks` emits one `ClockSample`, from which the daemon calibrates `CLOCK` at
//! start.
use aya_ebpf::{
    bindings::{seq_file, task_struct},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_ns,
        generated::{bpf_get_task_stack, bpf_seq_write},
    },
};
use hangwatch_ebpf::{
    ClockSample, Counter, MAX_KERNEL_STACK_DEPTH, MIN_LOOP_WAITS, PF_KTHREAD, SLOT_FOLLOWED,
    SwitchSlot, ThreadRecord, ThreadState, fold_switch_out, task_state,
};

use super::sched::switched_in;
use crate::{
    clock,
    maps::{
        LOOP_FD_TGIDS, LOOP_TGIDS, RECORD_SCRATCH, SCAN_CONFIG, STACK_REQUESTS, STACK_SCRATCH,
        THREAD_STATE, WATCHED_TGIDS, count, followed, set_followed,
    },
    syscalls::{SavedRegs, is_futex_wait, is_loop_wait, is_poll_wait},
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
    let tid: u32 = task.read(off.pid);
    let exit_state: u32 = task.read(off.exit_state);
    if exit_state != 0 {
        set_followed(tid, false);
        return 0; // a zombie or dead thread: it waits for nothing
    }
    let task_state: u32 = task.read(off.state);
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    let Some(config) = SCAN_CONFIG.get(0) else {
        return 0;
    };
    let start_boottime: u64 = task.read(off.start_boottime);
    let owner = SwitchSlot::owner_mark(start_boottime);
    let slot = own_slot(tid, owner, config.walk_seq as u32);
    // SAFETY: a field of a map value (`switch_slot`), read once.
    let slot_word = slot.as_ref().map_or(0, |slot| unsafe {
        core::ptr::read_volatile(&slot.switched_out)
    });
    let state = match THREAD_STATE.get(task) {
        // (A slot's owner has storage: it took the slot at a switch-out recorded there.)
        Some(state) => state,
        // No switch seen since the probes were attached: if it is not runnable it has been
        // blocked since before then. Start its clock now and say so.
        None if task_state != task_state::RUNNING => match THREAD_STATE.get_or_create(task) {
            Some(state) => {
                let stamp = clock::now();
                state.off_cpu_at_ns = stamp;
                state.state_at_switch = task_state;
                state.first_seen_blocked_ns = stamp;
                count(Counter::BlockedBeforeAttach);
                state
            }
            None => {
                count(Counter::StateUnavailable);
                return 0;
            }
        },
        // Running with no switch since the probes were attached. Its running time is not
        // known, and no detector asks about running threads, except where a loop may spin
        // without ever having been seen in its wait: at the first walk (the loop-fd
        // processes may not be marked yet) and in a process with a loop fd. Start its clock
        // now and follow it (`follow_running` below).
        None if (config.walk_seq == FIRST_WALK || loop_fd_process(tgid_of(task)))
            && task.read::<u32>(off.flags) & PF_KTHREAD == 0 =>
        {
            match THREAD_STATE.get_or_create(task) {
                Some(state) => {
                    let stamp = clock::now();
                    state.on_cpu_at_ns = stamp;
                    state.runnable_since_ns = stamp;
                    if config.walk_seq == FIRST_WALK {
                        state.first_seen_blocked_ns = stamp;
                    }
                    state
                }
                None => {
                    count(Counter::StateUnavailable);
                    return 0;
                }
            }
        }
        None => {
            set_followed(tid, false);
            return 0;
        }
    };
    fold_switch_out(state, slot_word);
    let follow_all = config.on_cpu_min_ns != u64::MAX;
    let tgid = tgid_of(task);
    // The probe records the switch-ins of followed threads only (see `ThreadState`): for
    // one it did not follow, "switched in since its last switch-out" is the live state's
    // running (woken, on a CPU or waiting for one).
    let was_followed = follow_all || followed(tid);
    let on_cpu = state.off_cpu_at_ns <= state.on_cpu_at_ns
        || (!was_followed && task_state == task_state::RUNNING);
    mark_loop_candidate(task, tgid, state, on_cpu);
    // Running, or runnable after a preemption: not blocked, whatever the clock says.
    let not_blocked = on_cpu || state.state_at_switch == 0;
    // SAFETY (both lookups): the value is not used, only its presence.
    let watched = || unsafe { WATCHED_TGIDS.get(tgid) }.is_some();

    let away_from_loop = state.loop_waits >= MIN_LOOP_WAITS && !in_loop_wait(state, on_cpu) && {
        let back_at = state.loop_left_at_ns.max(state.loop_entered_at_ns);
        now.saturating_sub(back_at) >= config.loop_min_ns
    };
    let running_long = not_blocked
        && now.saturating_sub(state.runnable_since_ns) >= config.on_cpu_min_ns
        && watched();
    let loop_fd = || loop_fd_process(tgid);
    // Running without blocking, and not known as a loop by its waits: a loop spinning on
    // its first request or since before the daemon started looks like this, and so does
    // any busy thread. Followed while it runs in a process with a loop fd (and, at the
    // first walk, whatever its process: it may not be marked yet), so that its switch-ins
    // say how long it has run; emitted from half the loop threshold on, for the daemon to
    // sample its stack once per run (`LoopStall::check_by_stack`).
    let follow_running = not_blocked
        && state.loop_waits < MIN_LOOP_WAITS
        && (config.walk_seq == FIRST_WALK || running_before_attach(state) || loop_fd());
    let running_loop_fd = follow_running
        && was_followed
        && now.saturating_sub(state.runnable_since_ns) >= config.loop_fd_min_ns
        && loop_fd();
    let (wanted, maybe_futex, maybe_loop_fd) = if on_cpu {
        (
            away_from_loop || running_long || running_loop_fd,
            false,
            false,
        )
    } else {
        let off_cpu_for = now.saturating_sub(state.off_cpu_at_ns);
        let uninterruptible =
            task_state & task_state::UNINTERRUPTIBLE != 0 && task_state & task_state::NOLOAD == 0;
        (
            away_from_loop
                || running_long
                || running_loop_fd
                || off_cpu_for >= config.any_min_ns
                || (uninterruptible && off_cpu_for >= config.d_state_min_ns)
                || (off_cpu_for >= config.watched_min_ns && watched()),
            off_cpu_for >= config.futex_min_ns,
            off_cpu_for >= config.loop_fd_min_ns && loop_fd(),
        )
    };
    // Only threads worth a look pay for the flags read.
    let task_flags: u32 = if wanted || maybe_futex || maybe_loop_fd || follow_running {
        task.read(off.flags)
    } else {
        0
    };
    // A running thread's saved registers are those of its last kernel entry, stale: it is
    // in no syscall.
    let emit = if !wanted && !maybe_futex && !maybe_loop_fd {
        None
    } else if task_flags & PF_KTHREAD == 0 && !on_cpu {
        let regs = SavedRegs::of(task);
        let nr = regs.syscall_nr();
        // A thread of a process with an epoll or io_uring fd, blocked in something other
        // than the waits an idle thread sits in: its stack may show a loop away from its
        // wait (the daemon reads it once per wait). A futex wait only for the main thread,
        // where asyncio, gevent, Node and Redis run their loops (a lock taken by a handler);
        // other threads in futex waits are the pools and parked workers of every runtime.
        let loop_fd_away = maybe_loop_fd
            && !is_loop_wait(nr)
            && !is_poll_wait(nr)
            && (!is_futex_wait(nr) || tid == tgid);
        (wanted || loop_fd_away || (maybe_futex && is_futex_wait(nr)))
            .then(|| (nr, regs.syscall_args()))
    } else if wanted {
        Some((-1, [0; 5]))
    } else {
        None
    };
    // The threads the daemon will follow between walks (the candidates, re-read every
    // tick) and the loop candidates: their switch-ins must be recorded from now on.
    let follow = emit.is_some()
        || state.loop_candidate != 0
        || (follow_running && task_flags & PF_KTHREAD == 0);
    let newly_followed = !follow_all && follow && !set_followed(tid, true);
    let caught_up = newly_followed && catch_up_switch_in(task, state);
    if newly_followed && not_blocked {
        // How long it has run since its last switch-out is not known (its switch-ins were
        // not recorded): its running clock starts now. At the first walk, a thread
        // preempted or not switched at all since the attach has most likely run since
        // before it: marked so (`running_before_attach`).
        let stamp = clock::now();
        state.runnable_since_ns = stamp;
        if config.walk_seq == FIRST_WALK && state.state_at_switch == 0 {
            state.first_seen_blocked_ns = stamp;
        }
    }
    if !follow && !follow_all {
        set_followed(tid, false);
    }
    if let Some(slot) = slot {
        let flags = if follow || follow_all {
            SLOT_FOLLOWED
        } else {
            0
        };
        // SAFETY: a field of a map value (`switch_slot`). Written only when it changes,
        // so that a walk does not dirty every owner's slot.
        unsafe {
            if core::ptr::read_volatile(&slot.flags) != flags {
                core::ptr::write_volatile(&mut slot.flags, flags);
            }
        }
    }
    let Some((syscall_nr, syscall_args)) = emit else {
        return 0;
    };
    let (task_state, syscall_nr, syscall_args) = if caught_up {
        (task_state::RUNNING, -1, [0; 5])
    } else {
        (task_state, syscall_nr, syscall_args)
    };
    let Some(record) = RECORD_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, ours while this program runs; filled field by field so
    // that no copy of it is built on the stack.
    let record = unsafe { &mut *record };
    copy_state(&mut record.state, state);
    record.start_boottime_ns = start_boottime;
    record.seen_at_ns = now;
    record.tid = tid;
    record.tgid = tgid;
    record.task_state = task_state;
    record.task_flags = task_flags;
    record.comm = task.comm(off.comm);
    record.syscall_nr = syscall_nr;
    record.syscall_args = syscall_args;
    write(ctx, record as *const ThreadRecord);
    0
}

/// `*dst = *src`, a word at a time. The plain assignment compiles to a call of the
/// `memmove` that Rust links into the object, a byte loop in a BPF subprogram: Linux 6.1's
/// verifier walks its 128 iterations on every path through the walk and gives up at a
/// million instructions ("BPF program is too large"). Volatile accesses keep LLVM from
/// turning these 16 loads and stores back into that call.
#[inline(always)]
fn copy_state(dst: &mut ThreadState, src: &ThreadState) {
    const WORDS: usize = core::mem::size_of::<ThreadState>() / 8;
    let dst = (dst as *mut ThreadState).cast::<u64>();
    let src = (src as *const ThreadState).cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: both point at a whole `ThreadState` (144 bytes of u64-aligned integers,
        // sizes asserted in lib.rs), so every word `i < WORDS` is in bounds.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
    }
}

/// A thread the walk starts following (its bit just set): if it runs or was woken since
/// its last switch-out, which the probe did not record, record that switch-in now, as the
/// probe would have. `__state` is read after the bit was set, so a switch-in after this
/// read is the probe's to record. Returns whether it caught up.
#[inline(always)]
fn catch_up_switch_in(task: Task, state: &mut ThreadState) -> bool {
    let switched_out_at = state.off_cpu_at_ns;
    if switched_out_at <= state.on_cpu_at_ns {
        return false;
    }
    let now = clock::now();
    let task_state: u32 = task.read(offsets().state);
    if task_state != task_state::RUNNING {
        return false;
    }
    switched_in(state, now);
    // A switch-out between the read of `__state` and the stores above read the old
    // `on_cpu_at_ns`, and its stamp may not be later than ours: the thread is off-CPU
    // again, say so. (It cannot have switched in again already: that takes microseconds.)
    // SAFETY: a field of the task's storage, valid while the program runs; volatile so
    // that the probe's store is seen rather than the value loaded above.
    let off_cpu_at = unsafe { core::ptr::read_volatile(&state.off_cpu_at_ns) };
    if off_cpu_at != switched_out_at {
        state.on_cpu_at_ns = off_cpu_at.wrapping_sub(1);
    }
    true
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn sample_clocks(ctx: *mut IterTaskContext) -> i32 {
    // SAFETY: ctx and meta are valid for the duration of the program (verifier-checked).
    if unsafe { (*(*ctx).meta).seq_num } != 0 {
        return 0;
    }
    // SAFETY: helpers without arguments or preconditions, read back to back.
    let sample = ClockSample {
        jiffies: unsafe { bpf_jiffies64() },
        ns: unsafe { bpf_ktime_get_ns() },
    };
    write(ctx, &sample);
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
        let regs = SavedRegs::of(task);
        record.user_ip = regs.user_ip();
        record.user_sp = regs.user_sp();
        record.user_fp = regs.user_fp();
    }

    let size = (MAX_KERNEL_STACK_DEPTH * 8) as u32;
    let stack = record.kernel_stack.as_mut_ptr().cast();
    // SAFETY: `task` is the iterator's trusted task; `stack` points at `size` bytes of
    // `record.kernel_stack`, which the helper never writes past.
    let len = unsafe { bpf_get_task_stack(task.as_ptr(), stack, size, 0) };
    record.kernel_depth = if len > 0 { (len / 8) as u32 } else { 0 };
    if len <= 0 {
        count(Counter::KernelStackFailed);
    }
    write(ctx, record as *const _);
    0
}

/// The walk's side of `SwitchSlot`: `tid`'s slot if it owns it, marked seen by this walk
/// (`walk`), which keeps other threads from taking it (`sched::slot_free`). Threads take
/// slots at their switch-outs; a walk only folds the owner's word into its storage and
/// says whether it is followed.
#[inline(always)]
fn own_slot(tid: u32, owner: u32, walk: u32) -> Option<&'static mut SwitchSlot> {
    let slot = super::sched::own_slot(tid, owner)?;
    // SAFETY: a field of a map value (`switch_slot`).
    unsafe { core::ptr::write_volatile(&mut slot.seen_walk, walk) };
    Some(slot)
}

/// The number of the daemon's first walk (`ScanConfig::walk_seq`; it stays 1 until a walk
/// completes).
const FIRST_WALK: u64 = 1;

#[inline(always)]
fn tgid_of(task: Task) -> u32 {
    task.read(offsets().tgid)
}

/// A process with an epoll or io_uring fd (`LOOP_FD_TGIDS`, kept by the daemon).
#[inline(always)]
fn loop_fd_process(tgid: u32) -> bool {
    // SAFETY: presence check only.
    unsafe { LOOP_FD_TGIDS.get(tgid) }.is_some()
}

/// Running since the first walk found it running (preempted at most) after the attach: its
/// run began before hangwatch started. `first_seen_blocked_ns` is the walk's stamp, which
/// `runnable_since_ns` keeps until the thread blocks and switches in again.
#[inline(always)]
fn running_before_attach(state: &ThreadState) -> bool {
    state.runnable_since_ns != 0 && state.first_seen_blocked_ns == state.runnable_since_ns
}

/// Off-CPU in the loop wait it last blocked in (the switch-out that began this wait was
/// inside epoll_wait or io_uring_enter): an idle event loop.
#[inline(always)]
fn in_loop_wait(state: &ThreadState, on_cpu: bool) -> bool {
    !on_cpu && state.state_at_switch != 0 && state.loop_blocked_at_ns == state.off_cpu_at_ns
}

/// Finds event-loop threads for the scheduler probe: a user thread blocked in a loop wait
/// (epoll, io_uring) becomes a loop candidate, whose blocking switch-outs the probe then
/// classifies, and its process goes into `LOOP_TGIDS`, whose other blocked threads become
/// candidates too (tokio's workers take turns at the I/O driver and park on a futex in
/// between: the one parked when the walk passes is a loop thread all the same). Each wait
/// of each thread has its registers read once (`loop_checked_wait_ns`), so an idle thread
/// costs one register read in its life, not one per walk. The walk and the probe may write
/// the same state at once; the fields are independent words and a lost update only delays
/// recognition to the next walk.
#[inline(always)]
fn mark_loop_candidate(task: Task, tgid: u32, state: &mut ThreadState, on_cpu: bool) {
    if on_cpu || state.state_at_switch == 0 || state.loop_candidate != 0 {
        return;
    }
    // SAFETY: presence check only.
    if unsafe { LOOP_TGIDS.get(tgid) }.is_some() {
        state.loop_candidate = 1;
        return;
    }
    if state.loop_checked_wait_ns == state.off_cpu_at_ns {
        return;
    }
    state.loop_checked_wait_ns = state.off_cpu_at_ns;
    let task_flags: u32 = task.read(offsets().flags);
    if task_flags & PF_KTHREAD == 0 && is_loop_wait(SavedRegs::of(task).syscall_nr()) {
        state.loop_candidate = 1;
        // This wait is one of its loop waits, seen by the walk instead of the probe.
        state.loop_blocked_at_ns = state.off_cpu_at_ns;
        state.loop_waits = state.loop_waits.wrapping_add(1);
        let _ = LOOP_TGIDS.insert(tgid, 1, 0);
    }
}
