//! The scheduler probes: the hot path every machine pays for on each context switch.
//!
//! Per switch, in the common case: no helper call at all. The time from `jiffies` (an
//! inlined load: `clock.rs`), the per-CPU event counter, `prev`'s switch-out written as one
//! word into its slot of `SWITCH_SLOTS`, and a bit test for `next` (each an array lookup
//! the verifier inlines). A thread without a slot of its own (not yet given one by a walk,
//! or its slot is another live thread's) and a followed thread are recorded in task storage
//! instead, one `bpf_task_storage_get` call. Only a followed `next` (a candidate of the
//! last walk, a loop candidate, or every thread while an `on_cpu` rule has targets) costs
//! a lookup at switch-in: other threads' switch-ins are not recorded, the walks read
//! "running since it switched out" from the live task state instead (docs/design.md, "The
//! per-switch cost"). On a blocking switch-out of a loop candidate, one more load: the syscall it
//! blocks in, from its saved registers, which is how event-loop threads are recognized
//! without any syscall probe. BTF tracepoints (`tp_btf`) because they hand us the task
//! pointers that task storage is keyed by and cost far less than a classic tracepoint.
use aya_ebpf::{bindings::task_struct, macros::btf_tracepoint, programs::BtfTracePointContext};
use hangwatch_ebpf::{
    Counter, SLOT_FOLLOWED, SLOT_STORED, SLOT_WOKEN, SwitchSlot, ThreadState, fold_switch_out,
};

use crate::{
    clock,
    maps::{SCAN_CONFIG, THREAD_STATE, count, followed, switch_slot},
    syscalls::{WaitKind, saved_syscall_nr, wait_kind},
    task::{Task, pid_offset, start_boottime_offset},
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

    // tid 0: a CPU's idle task leaving its CPU to a woken thread, as frequent as wakeups
    // on idle CPUs. It waits for nothing and no walk sees it: nothing is recorded.
    if let Some(task) = Task::new(prev)
        && let tid = task.field::<u32>(pid_offset())
        && tid != 0
    {
        let owner = owner_of(task);
        match switch_slot(tid) {
            // The common case: a thread that owns its slot and is not followed. One word,
            // no helper call.
            Some(slot)
                if slot.tid == tid
                    && slot.owner_start == owner
                    && slot.flags & SLOT_FOLLOWED == 0 =>
            {
                // SAFETY: fields of a map value (`switch_slot`); volatile so that the word
                // is read and written whole, once.
                let previous = unsafe { core::ptr::read_volatile(&slot.switched_out) };
                let word = SwitchSlot::switch_out(previous, now, prev_state);
                unsafe { core::ptr::write_volatile(&mut slot.switched_out, word) };
            }
            slot => switched_out_to_storage(task, (tid, owner), slot, prev_state, now),
        }
    }
    if let Some(next) = Task::new(next) {
        let tid: u32 = next.field(pid_offset());
        if follow_all() || followed(tid) {
            match THREAD_STATE.get_or_create(next) {
                Some(state) => {
                    if let Some(slot) = own_slot(tid, owner_of(next)) {
                        take_slot_switch_out(slot, state);
                    }
                    switched_in(state, now);
                }
                None => count(Counter::StateUnavailable),
            }
        }
    }
    0
}

/// The slot of thread `tid` marked `owner` (`owner_of`) if it owns it (tid 0, the idle
/// tasks, owns none: 0 marks a free slot).
#[inline(always)]
pub fn own_slot(tid: u32, owner: u32) -> Option<&'static mut SwitchSlot> {
    switch_slot(tid).filter(|slot| tid != 0 && slot.tid == tid && slot.owner_start == owner)
}

/// The mark of `task` as a slot's owner (`SwitchSlot::owner_start`): one load.
#[inline(always)]
pub fn owner_of(task: Task) -> u32 {
    SwitchSlot::owner_mark(task.field::<u64>(start_boottime_offset()))
}

/// A switch-out recorded in task storage: a thread without a slot of its own, or a
/// followed one (its switch-ins are recorded there and compare with it). An owner also gets
/// the word in its slot, marked as stored; a thread whose slot is free, or whose slot's
/// owner the last complete walk did not see (it exited: walks see every live thread),
/// takes it, so that its next switch-outs cost no helper call.
#[inline(always)]
fn switched_out_to_storage(
    task: Task,
    (tid, owner): (u32, u32),
    slot: Option<&'static mut SwitchSlot>,
    prev_state: u32,
    now: u64,
) {
    let Some(state) = THREAD_STATE.get_or_create(task) else {
        count(Counter::StateUnavailable);
        return;
    };
    count(Counter::SwitchOutsInStorage);
    let out = clock::switch_out(state, now);
    state.off_cpu_at_ns = out;
    state.state_at_switch = prev_state;
    if let Some(slot) = slot {
        let word = SwitchSlot::stored(out, prev_state);
        // SAFETY (each volatile access): fields of a map value (`switch_slot`), each read
        // or written once, in this order.
        unsafe {
            if core::ptr::read_volatile(&slot.tid) == tid
                && core::ptr::read_volatile(&slot.owner_start) == owner
            {
                core::ptr::write_volatile(&mut slot.switched_out, word);
                state.slot_word = word;
            } else if let Some(walk) = slot_free(slot) {
                state.slot_word = word;
                state.slot_owner = owner;
                let flags = if follow_all() || followed(tid) {
                    SLOT_FOLLOWED
                } else {
                    0
                };
                core::ptr::write_volatile(&mut slot.switched_out, word);
                core::ptr::write_volatile(&mut slot.flags, flags);
                core::ptr::write_volatile(&mut slot.seen_walk, walk);
                core::ptr::write_volatile(&mut slot.owner_start, owner);
                // Last: the slot is used as this thread's from here on.
                core::ptr::write_volatile(&mut slot.tid, tid);
            }
        }
    }
    // Blocking (not preempted), and a thread a walk saw waiting in a loop wait: in which
    // kind of wait does it block now? Only loop candidates pay the register read; for the
    // rest of the machine this is one test of a loaded word.
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

/// Whether `slot` may be taken: free, or its owner not seen by the last complete walk.
/// Returns the number of the walk under way, which the taker stamps it with. Two threads
/// can take the same slot at once only if their tids share it (`pid_max` above
/// `MAX_SWITCH_SLOTS`); the loser finds it is not its own at its next switch-out and stays
/// with storage, and the winner's first word may be the loser's, which a fold ignores when
/// it is in the same 262 µs step as the winner's own (docs/design.md).
#[inline(always)]
fn slot_free(slot: &SwitchSlot) -> Option<u32> {
    let walk = SCAN_CONFIG
        .get(0)
        .map_or(0, |config| config.walk_seq as u32);
    // SAFETY: as in `switched_out_to_storage`.
    let (owner, seen) = unsafe {
        (
            core::ptr::read_volatile(&slot.tid),
            core::ptr::read_volatile(&slot.seen_walk),
        )
    };
    (owner == 0 || walk.wrapping_sub(seen) > 1).then_some(walk)
}

/// A followed thread switching in whose last switch-out may be in its slot alone (it was
/// not followed then): into storage with it, before the switch-in is compared with it, and
/// the word marked as stored. The switch-out happened before this switch-in, whichever CPU
/// it was on, so the word is there to read.
#[inline(always)]
fn take_slot_switch_out(slot: &mut SwitchSlot, state: &mut ThreadState) {
    // SAFETY: as in `sched_switch`.
    let word = unsafe { core::ptr::read_volatile(&slot.switched_out) };
    if word & SLOT_STORED != 0 || !fold_switch_out(state, word) {
        return;
    }
    let stored = SwitchSlot::stored(state.off_cpu_at_ns, state.state_at_switch);
    state.slot_word = stored;
    // SAFETY: as in `sched_switch`.
    unsafe { core::ptr::write_volatile(&mut slot.switched_out, stored) };
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
/// records which wait was ended: in storage, that wait's switch-out time (one load and one
/// store, no clock read: "woken since it blocked" is `woken_wait_ns == off_cpu_at_ns`); for
/// a thread that owns its slot, also a bit in the slot's word, which the walk folds with
/// the switch-out it belongs to. The waker holds the runqueue lock the owner's next
/// switch-out needs, so the two never write the word at once.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let task: *mut task_struct = ctx.arg(0);
    count(Counter::SchedWakeupEvents);
    let Some(task) = Task::new(task) else {
        return 0;
    };
    if let Some(slot) = own_slot(task.field(pid_offset()), owner_of(task)) {
        // SAFETY: as in `sched_switch`.
        unsafe {
            let word = core::ptr::read_volatile(&slot.switched_out);
            core::ptr::write_volatile(&mut slot.switched_out, word | SLOT_WOKEN);
        }
    }
    if let Some(state) = THREAD_STATE.get(task) {
        state.woken_wait_ns = state.off_cpu_at_ns;
    }
    0
}
