//! The maps shared with the daemon (names in `hangwatch_ebpf::names`).
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    helpers::generated::bpf_task_storage_get,
    macros::btf_map,
};
use hangwatch_ebpf::{
    Counter, ExitSignal, JiffiesClock, MAX_EXIT_SIGNALS, MAX_FOLLOWED_WORDS, MAX_LOOP_FD_TGIDS,
    MAX_LOOP_TGIDS, MAX_STACK_REQUESTS, MAX_SWITCH_SLOTS, MAX_WATCHED_TGIDS, SWITCH_SLOT_MASK,
    ScanConfig, StackRecord, SwitchSlot, ThreadRecord, ThreadState, followed_word,
};

use crate::task::Task;

/// A BTF-defined `BPF_MAP_TYPE_TASK_STORAGE` map (the pinned aya-ebpf has the helpers but no
/// map type). Field names and order follow libbpf's BTF map convention, which aya parses.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders for BTF, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    #[inline(always)]
    fn lookup(&self, task: Task, flags: u64) -> Option<&mut T> {
        let map = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: `task` is a task_struct pointer handed to us by the kernel; the helper
        // returns null or a pointer to this task's zero-initialised value.
        let ptr = unsafe { bpf_task_storage_get(map, task.as_ptr(), core::ptr::null_mut(), flags) };
        // SAFETY: non-null pointers from the helper point to a live, aligned T.
        unsafe { ptr.cast::<T>().as_mut() }
    }

    /// The task's value, created zeroed on first use.
    #[inline(always)]
    pub fn get_or_create(&self, task: Task) -> Option<&mut T> {
        self.lookup(task, BPF_LOCAL_STORAGE_GET_F_CREATE.into())
    }

    /// The task's value if it has one.
    #[inline(always)]
    pub fn get(&self, task: Task) -> Option<&mut T> {
        self.lookup(task, 0)
    }
}

#[btf_map]
pub static THREAD_STATE: TaskStorage<ThreadState> = TaskStorage::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static SCAN_CONFIG: Array<ScanConfig, 1> = Array::new();

#[btf_map]
pub static CLOCK: Array<JiffiesClock, 1> = Array::new();

#[btf_map]
pub static WATCHED_TGIDS: HashMap<u32, u32, { MAX_WATCHED_TGIDS as usize }> = HashMap::new();

#[btf_map]
pub static STACK_REQUESTS: HashMap<u32, u32, { MAX_STACK_REQUESTS as usize }> = HashMap::new();

/// Processes that run an event loop (tgid -> 1), filled by the walks: every thread of them
/// is a loop candidate, so a worker that parks on a futex between its turns at the loop's
/// wait (tokio) is followed too.
#[btf_map]
pub static LOOP_TGIDS: LruHashMap<u32, u32, { MAX_LOOP_TGIDS as usize }> = LruHashMap::new();

/// Processes with an epoll or io_uring fd (tgid -> 1), filled by the daemon from
/// `/proc/PID/fd`: their threads blocked elsewhere are emitted from `loop_fd_min_ns`, for
/// the daemon to read their stacks for an event loop's driver.
#[btf_map]
pub static LOOP_FD_TGIDS: HashMap<u32, u32, { MAX_LOOP_FD_TGIDS as usize }> = HashMap::new();

/// Processes sent an exit signal since the daemon last drained the map. LRU, so a storm of
/// signals to short-lived processes can never fill it (evictions are older entries, which
/// the daemon has already drained).
#[btf_map]
pub static EXIT_SIGNALS: LruHashMap<u32, ExitSignal, { MAX_EXIT_SIGNALS as usize }> =
    LruHashMap::new();

/// One bit per tid: the threads whose switch-ins `sched_switch` records. Only the
/// `scan_threads` walk writes it (one writer, so plain read-modify-write of a word is
/// safe); the probe only tests a bit, an array lookup the verifier inlines (no helper
/// call). The daemon sizes it to `pid_max` at load. A stale bit (the thread exited, its tid
/// reused) costs the new thread a storage lookup per switch-in until the next walk clears
/// it; it never changes what is recorded, since storage is per task.
#[btf_map]
pub static FOLLOWED_TIDS: Array<u64, { MAX_FOLLOWED_WORDS as usize }> = Array::new();

/// Whether `tid`'s switch-ins are recorded. A tid past the map's end (pid_max raised since
/// the daemon started) counts as followed: the old cost for it, never a missed switch-in.
#[inline(always)]
pub fn followed(tid: u32) -> bool {
    let (word, bit) = followed_word(tid);
    match FOLLOWED_TIDS.get(word) {
        Some(bits) => *bits & bit != 0,
        None => true,
    }
}

/// Sets or clears `tid`'s bit; returns whether it was set before. Called by the walk only.
#[inline(always)]
pub fn set_followed(tid: u32, follow: bool) -> bool {
    let (word, bit) = followed_word(tid);
    let Some(bits) = FOLLOWED_TIDS.get_ptr_mut(word) else {
        return true;
    };
    // SAFETY: a value of an array map, valid while the program runs; the walk is its only
    // writer (see above).
    let bits = unsafe { &mut *bits };
    let was = *bits & bit != 0;
    if follow != was {
        *bits ^= bit;
    }
    was
}

/// The switch-outs of the threads that own a slot (`SwitchSlot`): what lets the probe
/// record most switch-outs without a helper call. The daemon sizes it to `pid_max` when that
/// is smaller than `MAX_SWITCH_SLOTS` (a slot per tid).
#[btf_map]
pub static SWITCH_SLOTS: Array<SwitchSlot, { MAX_SWITCH_SLOTS as usize }> = Array::new();

/// `tid`'s slot, whoever owns it (`None` past the map's end: that tid never owns one).
#[inline(always)]
pub fn switch_slot(tid: u32) -> Option<&'static mut SwitchSlot> {
    let slot = SWITCH_SLOTS.get_ptr_mut(tid & SWITCH_SLOT_MASK)?;
    // SAFETY: a value of an array map, valid while the program runs. Writers: the owner's
    // switch-outs and switch-ins (one CPU at a time) and the walk (see `SwitchSlot`).
    Some(unsafe { &mut *slot })
}

/// Scratch space for the `ThreadRecord` a walk emits: with the walk's other locals it does
/// not fit the 512-byte BPF stack.
#[btf_map]
pub static RECORD_SCRATCH: PerCpuArray<ThreadRecord, 1> = PerCpuArray::new();

/// Scratch space for one `StackRecord`, too large for the 512-byte BPF stack.
#[btf_map]
pub static STACK_SCRATCH: PerCpuArray<StackRecord, 1> = PerCpuArray::new();

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *value += 1 };
    }
}
