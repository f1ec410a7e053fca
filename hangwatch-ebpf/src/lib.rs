//! The kernel/userspace ABI of hangwatch: every type and name that crosses between the eBPF
//! programs (`src/main.rs`, built for `bpfel-unknown-none`) and the daemon.
//!
//! The rules of this file: `#[repr(C)]`, `Copy`, no implicit padding (u32 flags, not bool),
//! a compile-time size check for each type, explicit discriminants that are never reused,
//! and `aya::Pod` only behind the `user` feature.
#![no_std]

/// Names of programs and maps as they appear in the object file.
pub mod names {
    /// `tp_btf/sched_switch`: per-thread switch-out/switch-in timestamps and state.
    pub const PROG_SCHED_SWITCH: &str = "sched_switch";
    /// `tp_btf/sched_wakeup`: when a blocked thread was made runnable.
    pub const PROG_SCHED_WAKEUP: &str = "sched_wakeup";
    /// `tracepoint/syscalls/sys_enter_futex` and friends.
    pub const PROG_SYS_ENTER_FUTEX: &str = "sys_enter_futex";
    pub const PROG_SYS_EXIT_FUTEX: &str = "sys_exit_futex";
    pub const PROG_SYS_ENTER_FUTEX_WAIT: &str = "sys_enter_futex_wait";
    pub const PROG_SYS_ENTER_FUTEX_WAITV: &str = "sys_enter_futex_waitv";
    pub const PROG_SYS_EXIT_FUTEX_WAIT: &str = "sys_exit_futex_wait";
    pub const PROG_SYS_EXIT_FUTEX_WAITV: &str = "sys_exit_futex_waitv";
    /// `tp_btf/sys_enter`, attached only while a loop thread may be stalled: records when a
    /// loop thread enters an epoll or io_uring wait, also one that does not block.
    pub const PROG_SYS_ENTER_LOOP: &str = "sys_enter_loop";
    /// `tp_btf/signal_generate`: SIGTERM/SIGINT/SIGQUIT sent to a process (`stuck_exit`).
    pub const PROG_SIGNAL_GENERATE: &str = "signal_generate";
    /// `tp_btf/sched_switch` doing nothing: the benchmark's floor, never attached by the daemon.
    pub const PROG_FLOOR_SCHED_SWITCH: &str = "floor_sched_switch";
    /// `iter/task`: one [`crate::ClockSample`] (jiffies and CLOCK_MONOTONIC read together),
    /// from which the daemon derives [`crate::JiffiesClock`].
    pub const PROG_SAMPLE_CLOCKS: &str = "sample_clocks";
    /// `iter/task`: one [`crate::ThreadRecord`] per thread worth a look.
    pub const PROG_SCAN_THREADS: &str = "scan_threads";
    /// `iter/task`: one [`crate::StackRecord`] per thread named in `STACK_REQUESTS`.
    pub const PROG_DUMP_STACKS: &str = "dump_stacks";

    /// Task-local storage holding one [`crate::ThreadState`] per thread.
    pub const MAP_THREAD_STATE: &str = "THREAD_STATE";
    /// Per-CPU array of u64 counters, indexed by [`crate::Counter`].
    pub const MAP_COUNTERS: &str = "COUNTERS";
    /// Array of one [`crate::ScanConfig`].
    pub const MAP_SCAN_CONFIG: &str = "SCAN_CONFIG";
    /// Hash tgid -> 1: processes whose threads the scan reports from `watched_min_ns`.
    pub const MAP_WATCHED_TGIDS: &str = "WATCHED_TGIDS";
    /// Hash tid -> 1: threads whose stacks `dump_stacks` emits.
    pub const MAP_STACK_REQUESTS: &str = "STACK_REQUESTS";
    /// LRU hash tgid -> 1: processes in which a walk found a thread in a loop wait; their
    /// other threads become loop candidates too (a tokio worker parked on its condvar).
    pub const MAP_LOOP_TGIDS: &str = "LOOP_TGIDS";
    /// Hash tgid -> 1: processes with an epoll or io_uring fd, as the daemon read them from
    /// `/proc/PID/fd`; their blocked threads are emitted from `loop_fd_min_ns`.
    pub const MAP_LOOP_FD_TGIDS: &str = "LOOP_FD_TGIDS";
    /// LRU hash tgid -> [`crate::ExitSignal`]: processes asked to exit, drained by the daemon.
    pub const MAP_EXIT_SIGNALS: &str = "EXIT_SIGNALS";
    /// Array of u64 words, one bit per tid: the threads whose switch-ins `sched_switch`
    /// records (see [`crate::followed_word`]).
    pub const MAP_FOLLOWED_TIDS: &str = "FOLLOWED_TIDS";
    /// Array of one [`crate::JiffiesClock`]: how the probes read the time.
    pub const MAP_CLOCK: &str = "CLOCK";
    /// Array of [`crate::SwitchSlot`], indexed by `tid & SWITCH_SLOT_MASK`: where the
    /// scheduler probe records the switch-outs of the threads that own a slot.
    pub const MAP_SWITCH_SLOTS: &str = "SWITCH_SLOTS";
    /// `.rodata` global: the [`crate::TaskOffsets`] of this kernel, set at load time.
    pub const GLOBAL_TASK_OFFSETS: &str = "TASK_OFFSETS";
}

/// Capacity of `WATCHED_TGIDS`; more selected processes are counted as dropped.
pub const MAX_WATCHED_TGIDS: u32 = 4096;
/// Capacity of `STACK_REQUESTS`: stacks are taken for at most this many threads per scan.
pub const MAX_STACK_REQUESTS: u32 = 1024;
/// Capacity of `EXIT_SIGNALS`: processes sent an exit signal and not yet drained by the
/// daemon (it drains every tick); the least recently signalled are evicted beyond it.
pub const MAX_EXIT_SIGNALS: u32 = 4096;
/// Capacity of `LOOP_TGIDS`: processes with an event-loop thread (LRU beyond it).
pub const MAX_LOOP_TGIDS: u32 = 8192;
/// Capacity of `LOOP_FD_TGIDS`: processes with an epoll or io_uring fd; the daemon adds no
/// more beyond it (and counts them).
pub const MAX_LOOP_FD_TGIDS: u32 = 8192;
/// Words of `FOLLOWED_TIDS` in the object: enough for `PID_MAX_LIMIT` (4,194,304 tids) on
/// 64-bit kernels. The daemon sizes the map from `/proc/sys/kernel/pid_max` at load
/// ([`followed_words`]); a tid past the end (pid_max raised later) is treated as followed.
pub const MAX_FOLLOWED_WORDS: u32 = (1 << 22) / 64;

/// The word of `FOLLOWED_TIDS` that holds `tid`'s bit, and the bit.
#[inline(always)]
pub const fn followed_word(tid: u32) -> (u32, u64) {
    (tid / 64, 1 << (tid % 64))
}

/// Words of `FOLLOWED_TIDS` for tids below `pid_max`.
pub const fn followed_words(pid_max: u32) -> u32 {
    let words = pid_max.div_ceil(64);
    if words == 0 {
        1
    } else if words > MAX_FOLLOWED_WORDS {
        MAX_FOLLOWED_WORDS
    } else {
        words
    }
}

/// Entries of `SWITCH_SLOTS` in the object; the daemon lowers it to `pid_max` when that is
/// smaller ([`switch_slots`]): 24 bytes each, 1.5 MiB at most.
pub const MAX_SWITCH_SLOTS: u32 = 1 << 16;
/// A tid's slot is `tid & SWITCH_SLOT_MASK`.
pub const SWITCH_SLOT_MASK: u32 = MAX_SWITCH_SLOTS - 1;

/// Entries of `SWITCH_SLOTS` for tids below `pid_max`: one per tid when `pid_max` is at most
/// [`MAX_SWITCH_SLOTS`] (then no two threads share a slot), else all of them.
pub const fn switch_slots(pid_max: u32) -> u32 {
    if pid_max == 0 || pid_max > MAX_SWITCH_SLOTS {
        MAX_SWITCH_SLOTS
    } else {
        pid_max
    }
}

/// `SwitchSlot::flags`: the owner is followed (`FOLLOWED_TIDS`): its switch-outs go to its
/// task storage, beside the switch-ins the probe records there.
pub const SLOT_FOLLOWED: u32 = 1 << 0;

/// `SwitchSlot::switched_out` packs a switch-out in one word, so that a reader never sees
/// the stamp of one switch with the state of another: the stamp in the high bits (its low
/// 19 bits dropped: 524 µs steps, against jiffies' 4 ms), three flags, and the low 16 bits
/// of `prev_state` (every `TASK_*` bit). Stamps of one slot never go back but may repeat
/// (a thread that switches out twice within a step); the fold makes storage's strictly
/// later ([`fold_switch_out`]).
pub const SLOT_STAMP_MASK: u64 = !((1 << 19) - 1);
/// Set in every word written for a switch-out.
pub const SLOT_RECORDED: u64 = 1 << 16;
/// The switch-out is also in the owner's task storage (a followed owner): folding it
/// changes nothing while storage still holds it.
pub const SLOT_STORED: u64 = 1 << 17;
/// `sched_wakeup` (opt-in) woke the owner from this switch-out's wait.
pub const SLOT_WOKEN: u64 = 1 << 18;
pub const SLOT_STATE_MASK: u64 = 0xffff;

/// Where `sched_switch` records a switch-out without a helper call: an array slot (a lookup
/// the verifier inlines) instead of the thread's task storage (`bpf_task_storage_get`, the
/// one helper call left on the hot path, ~30 ns on this project's machine).
///
/// A slot belongs to one thread at a time, given by the walk (`scan_threads`, the only
/// writer of `tid`) to a thread with task storage whose slot is free or whose owner the last
/// complete walk did not see (it exited). Once a thread owns its slot, the slot's word is
/// its last switch-out, whoever wrote it: the probe writes only the slot for an owner that
/// is not followed, and task storage *and* the slot (the same stamp) for a followed one,
/// whose switch-ins go to storage and need its switch-outs there. A thread without a slot
/// (another live thread has it, or no walk has seen the thread yet) is recorded in task
/// storage alone, as before slots. Each walk folds an owner's slot into its task storage
/// ([`fold_switch_out`]), so what a walk emits is whole (docs/design.md, "The per-switch
/// cost").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchSlot {
    /// The owner's last switch-out, packed ([`SLOT_STAMP_MASK`]).
    pub switched_out: u64,
    /// The owner; 0 for a free slot.
    pub tid: u32,
    /// `SLOT_*` bits, written by the walk.
    pub flags: u32,
    /// `ScanConfig::walk_seq` of the last walk that saw the owner alive.
    pub seen_walk: u32,
    /// Which thread of that tid owns it: [`SwitchSlot::owner_mark`] of its
    /// `start_boottime`. A tid is reused by a new thread as soon as the old one is reaped,
    /// which can be before the old one's last switch-out: by tid alone, the new thread
    /// would write into the old one's slot and fold its switch-outs as its own (a blocked
    /// thread that never blocked, seen under a thread storm on reused tids).
    pub owner_start: u32,
}

impl SwitchSlot {
    /// The owner mark of a thread started at `start_boottime_ns`: its low 32 bits (two
    /// threads of one tid started a multiple of 4.3 s apart to the nanosecond would share
    /// it), never 0, which marks "no slot" in `ThreadState::slot_owner`.
    #[inline(always)]
    pub const fn owner_mark(start_boottime_ns: u64) -> u32 {
        start_boottime_ns as u32 | 1
    }

    /// The word the probe writes for an owner that is not followed, switched out at `now`
    /// in `prev_state`, after the slot's `previous` word: never stamped before it.
    #[inline(always)]
    pub const fn switch_out(previous: u64, now: u64, prev_state: u32) -> u64 {
        let after = previous & SLOT_STAMP_MASK;
        let stamp = now & SLOT_STAMP_MASK;
        let stamp = if stamp > after { stamp } else { after };
        stamp | SLOT_RECORDED | (prev_state as u64 & SLOT_STATE_MASK)
    }

    /// The word for a switch-out that is in task storage too, stamped `stamp` there.
    #[inline(always)]
    pub const fn stored(stamp: u64, prev_state: u32) -> u64 {
        (stamp & SLOT_STAMP_MASK)
            | SLOT_RECORDED
            | SLOT_STORED
            | (prev_state as u64 & SLOT_STATE_MASK)
    }
}

/// Folds a slot's word into its owner's task storage; returns whether it changed `state`.
/// The walk calls it for every slot owner, a followed thread's switch-in before it is
/// compared with its switch-out, `StateReader` for the threads it reads between walks.
///
/// A word not yet folded (`ThreadState::slot_word` remembers the last) that storage does
/// not hold already (not [`SLOT_STORED`] with storage's stamp) is the thread's last
/// switch-out: it becomes `off_cpu_at_ns`, stamped after every stamp storage has (the
/// slot's are coarser and may repeat), so that stamps stay unique per thread and "off-CPU"
/// stays `off_cpu_at_ns > on_cpu_at_ns`, and `state_at_switch`. A wakeup recorded in the
/// word ([`SLOT_WOKEN`]) becomes `woken_wait_ns`; a word that differs only by that bit is
/// the same switch-out.
#[inline(always)]
pub fn fold_switch_out(state: &mut ThreadState, word: u64) -> bool {
    if word & SLOT_RECORDED == 0 || word == state.slot_word {
        return false;
    }
    let same_switch_out = (word ^ state.slot_word) & !SLOT_WOKEN == 0;
    state.slot_word = word;
    let stamp = word & SLOT_STAMP_MASK;
    let in_storage = word & SLOT_STORED != 0 && stamp == state.off_cpu_at_ns & SLOT_STAMP_MASK;
    if !same_switch_out && !in_storage {
        let after = if state.off_cpu_at_ns > state.on_cpu_at_ns {
            state.off_cpu_at_ns
        } else {
            state.on_cpu_at_ns
        };
        state.off_cpu_at_ns = if stamp > after {
            stamp
        } else {
            after.wrapping_add(1)
        };
        state.state_at_switch = (word & SLOT_STATE_MASK) as u32;
    }
    // A word without the bit that differs from the last folded one is a new wait, even one
    // whose stamp and state repeat the last (the bit is cleared only by a new switch-out).
    if word & SLOT_WOKEN != 0 {
        state.woken_wait_ns = state.off_cpu_at_ns;
    } else if state.woken_wait_ns == state.off_cpu_at_ns {
        state.woken_wait_ns = 0;
    }
    true
}

/// Kernel stack depth captured per thread.
pub const MAX_KERNEL_STACK_DEPTH: usize = 64;

/// `ThreadState::flags`: the thread is inside one of the tracked syscalls (`syscall_nr` valid).
pub const FLAG_IN_SYSCALL: u32 = 1 << 0;
/// `ThreadState::flags`: the futex wait has a timeout.
pub const FLAG_FUTEX_TIMEOUT: u32 = 1 << 1;

/// What the probes keep per thread, in task-local storage. The hot path writes it in place;
/// the kernel frees it with the task, so thread exit needs no cleanup of ours.
///
/// Every switch-out is recorded: here, or for a thread that owns a switch slot and is not
/// followed, in the slot, folded in here by each walk ([`fold_switch_out`]). Switch-ins
/// (`on_cpu_at_ns`, `runnable_since_ns`, `loop_left_at_ns`, `futex_left_at_ns`) are
/// recorded only for *followed* threads: those
/// whose bit a walk set in `FOLLOWED_TIDS` (the candidates it returned and the loop
/// candidates), or every thread while an `on_cpu` rule has targets. For the others a
/// reader must take "switched in since" from the live task state (`__state` running): the
/// walk does, and catches the fields up when it starts following a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    // The fields the scheduler probe touches come first, to share as few cache lines as
    // possible.
    /// CLOCK_MONOTONIC ns of the last switch-out; the thread is off-CPU iff this is greater
    /// than `on_cpu_at_ns`.
    pub off_cpu_at_ns: u64,
    /// CLOCK_MONOTONIC ns of the last recorded switch-in (followed threads, see above).
    pub on_cpu_at_ns: u64,
    /// The last switch-out inside an event-loop wait; the thread is in its loop wait iff
    /// this equals `off_cpu_at_ns` (and it is off-CPU).
    pub loop_blocked_at_ns: u64,
    /// The last switch-out inside a futex wait.
    pub futex_blocked_at_ns: u64,
    /// The switch-in after the last blocking switch-out: the thread has been running (or
    /// runnable, when preempted) without blocking since then.
    pub runnable_since_ns: u64,
    /// `prev_state` at the last switch-out (TASK_* bits; 0 = preempted while runnable).
    pub state_at_switch: u32,
    /// Blocking switch-outs inside an event-loop wait (the epoll family, io_uring_enter):
    /// a thread with a few of these is an event-loop thread. Counted only once the thread
    /// is a `loop_candidate`.
    pub loop_waits: u32,
    /// Non-zero once a walk found the thread blocked in a loop wait: from then on the
    /// scheduler probe reads the syscall of its blocking switch-outs (the register read
    /// costs ~23 ns on this kind of machine, a helper call; other threads never pay it).
    pub loop_candidate: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The switch-in that ended the last blocking loop wait: the loop came back from it.
    pub loop_left_at_ns: u64,
    /// The switch-in that ended the last blocking futex wait.
    pub futex_left_at_ns: u64,
    /// Set by `sched_wakeup` to the `off_cpu_at_ns` of the wait it ended: the thread has
    /// been woken from its current wait iff the two are equal (and it is still off-CPU).
    pub woken_wait_ns: u64,
    /// Set by `sys_enter_loop` (attached on demand): the thread entered a loop wait,
    /// blocking in it or not. A busy loop returns to its wait without ever blocking in it.
    pub loop_entered_at_ns: u64,
    /// Set by the scan for a thread it finds blocked with no state (it has not switched since
    /// the probes were attached): the `off_cpu_at_ns` it gave it, the time it first saw it.
    /// While the two are equal the wait began before hangwatch started and its length is a
    /// lower bound; the next switch-out overwrites `off_cpu_at_ns`, so the hot path never
    /// has to clear anything. Likewise for a thread the first walk finds running (not
    /// switched, or only preempted, since the attach): the `runnable_since_ns` it gave it,
    /// equal until the thread blocks and switches in again.
    pub first_seen_blocked_ns: u64,
    /// When the current tracked syscall was entered (the optional futex probes).
    pub syscall_entered_at_ns: u64,
    /// For futex: the futex word's user address (the first one for `futex_waitv`).
    pub futex_uaddr: u64,
    /// The wait (`off_cpu_at_ns`) in which a walk last read the thread's syscall to look
    /// for a loop wait: each wait is looked at once.
    pub loop_checked_wait_ns: u64,
    /// Syscall number while `FLAG_IN_SYSCALL` is set.
    pub syscall_nr: u32,
    /// For futex: the op word (command and flags), as passed by the caller.
    pub futex_op: u32,
    /// The last word of the thread's switch slot folded into this state
    /// ([`fold_switch_out`]): the same word is never folded twice.
    pub slot_word: u64,
    /// The mark its slot carries while it owns one (`SwitchSlot::owner_start`), 0 before it
    /// took one: how a reader with no `task_struct` at hand (`StateReader`) tells its
    /// slot from one another thread of the same tid owns.
    pub slot_owner: u32,
    pub _pad: u32,
}

/// How the probes tell the time without a helper call: `jiffies` (a load the verifier
/// inlines) turned into CLOCK_MONOTONIC ns, `ns0 + (jiffies - jiffies0) * tick_ns`. The
/// kernel advances jiffies from the monotonic clock, one per `tick_ns` (1/HZ s), so this
/// never drifts; it is up to one tick early (4 ms at HZ=250), which thresholds of seconds
/// do not notice. `bpf_ktime_get_ns` cost ~70 ns per context switch on the project's
/// machine (docs/design.md, "The per-switch cost"). `tick_ns == 0`: not calibrated, the
/// probes read the monotonic clock instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JiffiesClock {
    pub jiffies0: u64,
    pub ns0: u64,
    pub tick_ns: u64,
    pub _reserved: u64,
}

impl JiffiesClock {
    /// `jiffies` as CLOCK_MONOTONIC ns (wrapping, as jiffies start near the 32-bit wrap).
    #[inline(always)]
    pub const fn ns(&self, jiffies: u64) -> u64 {
        self.ns0.wrapping_add(
            jiffies
                .wrapping_sub(self.jiffies0)
                .wrapping_mul(self.tick_ns),
        )
    }
}

/// One record of `sample_clocks`: both clocks, read one after the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub ns: u64,
}

/// What userspace asks of the `scan_threads` iterator: which off-CPU threads to emit.
/// A threshold of `u64::MAX` disables that clause.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanConfig {
    /// Emit threads in uninterruptible sleep for at least this long.
    pub d_state_min_ns: u64,
    /// Emit threads of `WATCHED_TGIDS` off-CPU for at least this long.
    pub watched_min_ns: u64,
    /// Emit any thread off-CPU for at least this long.
    pub any_min_ns: u64,
    /// Emit any user thread off-CPU for at least this long whose saved syscall is a futex
    /// wait (`futex`, `futex_wait`, `futex_waitv`): the candidates of `lock_wait` and
    /// `deadlock`. Costs one probe read (the syscall number) per thread past it.
    pub futex_min_ns: u64,
    /// Emit event-loop threads (`loop_waits >= MIN_LOOP_WAITS`) out of their loop wait for
    /// at least this long (since they last came back from it), running or blocked elsewhere.
    pub loop_min_ns: u64,
    /// Emit threads of `WATCHED_TGIDS` running (or runnable) without blocking for at least
    /// this long.
    pub on_cpu_min_ns: u64,
    /// Emit user threads of `LOOP_FD_TGIDS` (processes with an epoll or io_uring fd)
    /// blocked for at least this long in a syscall that is neither a loop wait, a poll nor
    /// a futex wait: the threads whose stack may show an event loop away from its wait.
    pub loop_fd_min_ns: u64,
    /// The number of the walk about to run, written by the daemon before each one and
    /// advanced only after a complete walk: a slot whose owner was not seen by walk
    /// `walk_seq - 1` has no live owner (`SwitchSlot`).
    pub walk_seq: u64,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            d_state_min_ns: u64::MAX,
            watched_min_ns: u64::MAX,
            any_min_ns: u64::MAX,
            futex_min_ns: u64::MAX,
            loop_min_ns: u64::MAX,
            on_cpu_min_ns: u64::MAX,
            loop_fd_min_ns: u64::MAX,
            walk_seq: 0,
        }
    }
}

/// A thread is an event-loop thread once it has blocked in a loop wait this many times.
pub const MIN_LOOP_WAITS: u32 = 2;

/// `ExitSignal::flags`: the first signal was generated by the kernel (a terminal's ^C or
/// ^\, not `kill(2)` from a process).
pub const EXIT_SIGNAL_FROM_KERNEL: u32 = 1 << 0;

/// A process that was sent SIGTERM, SIGINT or SIGQUIT (`signal_generate`), keyed by tgid.
/// The first signal is kept; later ones only count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitSignal {
    /// CLOCK_MONOTONIC ns of the first signal.
    pub first_at_ns: u64,
    pub last_at_ns: u64,
    /// `start_boottime` of the thread the signal was sent to: with the tid, it tells a
    /// reused pid from the signalled process.
    pub target_start_boottime_ns: u64,
    /// The thread it was sent to (the group leader for kill(2)).
    pub target_tid: u32,
    /// The process that sent it (the current task at generation).
    pub sender_tgid: u32,
    pub sender_comm: [u8; 16],
    pub sig: u32,
    pub count: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// Byte offsets of the `task_struct` fields the iterators read, taken by the daemon from the
/// running kernel's BTF (`/sys/kernel/btf/vmlinux`) because Rust eBPF has no CO-RE
/// relocations. Written into `.rodata` before the programs are loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    pub tgid: u32,
    pub state: u32,
    pub exit_state: u32,
    pub flags: u32,
    pub comm: u32,
    pub start_boottime: u32,
    /// Non-zero once userspace filled the table; the iterators emit nothing before.
    pub valid: u32,
}

/// One record of the `scan_threads` iterator: a thread off-CPU long enough to look at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadRecord {
    pub state: ThreadState,
    /// `task_struct::start_boottime`: with `tid`, identifies the thread across pid reuse.
    pub start_boottime_ns: u64,
    /// CLOCK_MONOTONIC ns at which the iterator looked at this thread.
    pub seen_at_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    /// `task_struct::__state` at scan time.
    pub task_state: u32,
    /// `task_struct::flags` (PF_*).
    pub task_flags: u32,
    /// The thread's own name (`task_struct::comm`).
    pub comm: [u8; 16],
    /// The syscall the thread is in, from the registers saved at kernel entry (which stay
    /// as they were while it is blocked): what `/proc/PID/task/TID/syscall` shows, read
    /// here at no cost to the per-event path. -1 when not in a syscall (or a kernel thread).
    pub syscall_nr: i64,
    /// Its first five arguments (futex: address, op, value, timeout pointer, ...).
    pub syscall_args: [u64; 5],
}

/// One record of the `dump_stacks` iterator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRecord {
    pub start_boottime_ns: u64,
    /// User registers saved at kernel entry (unchanged while the thread stays blocked).
    pub user_ip: u64,
    pub user_sp: u64,
    pub user_fp: u64,
    pub tid: u32,
    /// Number of valid entries in `kernel_stack`; 0 when the kernel could not walk it.
    pub kernel_depth: u32,
    pub kernel_stack: [u64; MAX_KERNEL_STACK_DEPTH],
}

/// Indices into the `COUNTERS` per-CPU array. Discriminants are part of the ABI: append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    SchedSwitchEvents = 0,
    SchedWakeupEvents = 1,
    FutexSyscallEvents = 2,
    /// Task storage could not be had (allocation failed or the storage lock was busy).
    StateUnavailable = 3,
    /// A record did not fit the iterator's output buffer; the kernel runs the program
    /// again for that thread at the next read(), so it is deferred, not lost.
    RecordsDeferred = 4,
    /// `bpf_get_task_stack` failed for a requested thread.
    KernelStackFailed = 5,
    /// Threads first seen already blocked by a scan (no switch-out observed).
    BlockedBeforeAttach = 6,
    /// `sys_enter_loop` runs (every syscall of the machine while it is attached).
    SysEnterEvents = 7,
    /// Exit signals (SIGTERM/SIGINT/SIGQUIT) recorded by `signal_generate`.
    ExitSignals = 8,
    /// Exit signals that could not be recorded (map update failed).
    ExitSignalsLost = 9,
    /// Switch-outs `sched_switch` recorded in task storage (a helper call) rather than in
    /// the thread's switch slot: threads without a slot of their own, and followed ones.
    SwitchOutsInStorage = 10,
}

impl Counter {
    pub const COUNT: u32 = 11;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::SchedSwitchEvents,
        Counter::SchedWakeupEvents,
        Counter::FutexSyscallEvents,
        Counter::StateUnavailable,
        Counter::RecordsDeferred,
        Counter::KernelStackFailed,
        Counter::BlockedBeforeAttach,
        Counter::SysEnterEvents,
        Counter::ExitSignals,
        Counter::ExitSignalsLost,
        Counter::SwitchOutsInStorage,
    ];
}

/// Linux task state bits (`include/linux/sched.h`), as found in `__state` and `prev_state`.
pub mod task_state {
    pub const RUNNING: u32 = 0x0000;
    pub const INTERRUPTIBLE: u32 = 0x0001;
    pub const UNINTERRUPTIBLE: u32 = 0x0002;
    pub const STOPPED: u32 = 0x0004;
    pub const TRACED: u32 = 0x0008;
    pub const DEAD: u32 = 0x0080;
    pub const WAKEKILL: u32 = 0x0100;
    pub const PARKED: u32 = 0x0040;
    /// With UNINTERRUPTIBLE: TASK_IDLE, an idle kernel thread, not a hang.
    pub const NOLOAD: u32 = 0x0400;
    pub const FROZEN: u32 = 0x8000;
}

/// `task_struct::flags`: a kernel thread, which has no user stack.
pub const PF_KTHREAD: u32 = 0x0020_0000;

const _: () = assert!(core::mem::size_of::<ThreadState>() == 144);
const _: () = assert!(core::mem::size_of::<ScanConfig>() == 64);
const _: () = assert!(core::mem::size_of::<SwitchSlot>() == 24);
const _: () = assert!(core::mem::size_of::<JiffiesClock>() == 32);
const _: () = assert!(core::mem::size_of::<ClockSample>() == 16);
const _: () = assert!(core::mem::size_of::<ExitSignal>() == 64);
const _: () = assert!(core::mem::size_of::<TaskOffsets>() == 32);
const _: () = assert!(core::mem::size_of::<ThreadRecord>() == 240);
const _: () = assert!(core::mem::size_of::<StackRecord>() == 40 + 8 * MAX_KERNEL_STACK_DEPTH);

#[cfg(feature = "user")]
mod pod {
    // Each: plain `#[repr(C)]` integers with no padding (sizes asserted above), so every
    // bit pattern the kernel writes is a valid value.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ThreadState {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ScanConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ThreadRecord {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StackRecord {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ExitSignal {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::JiffiesClock {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ClockSample {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SwitchSlot {}
}
