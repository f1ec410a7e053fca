//! Reading `task_struct` fields without CO-RE: offsets come from the running kernel's BTF,
//! filled in by the daemon before load (`TaskOffsets`), and each read is a
//! `bpf_probe_read_kernel` in the iterators; the scheduler probe reads the one field it
//! needs (`pid`) with a direct load from its trusted BTF pointer (`Task::field`).
use aya_ebpf::{bindings::task_struct, helpers::bpf_probe_read_kernel};
use hangwatch_ebpf::TaskOffsets;

/// Set by the daemon through `EbpfLoader::set_global` (`names::GLOBAL_TASK_OFFSETS`).
#[unsafe(no_mangle)]
static TASK_OFFSETS: TaskOffsets = TaskOffsets {
    pid: 0,
    tgid: 0,
    state: 0,
    exit_state: 0,
    flags: 0,
    comm: 0,
    start_boottime: 0,
    valid: 0,
};

#[inline(always)]
pub fn offsets() -> TaskOffsets {
    // SAFETY: a static; the volatile read keeps the compiler from folding the zero
    // initialiser, since the loader rewrites `.rodata` before the program is loaded.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS) }
}

/// `task_struct::pid`'s offset alone: the scheduler probe needs no other, and a volatile
/// read of the whole table would be eight loads per switch.
#[inline(always)]
pub fn pid_offset() -> u32 {
    // SAFETY: as in `offsets`.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS.pid) }
}

/// `task_struct::start_boottime`'s offset alone: the scheduler probe reads it to tell a
/// switch slot's owner from another thread of the same tid (`SwitchSlot::owner_start`).
#[inline(always)]
pub fn start_boottime_offset() -> u32 {
    // SAFETY: as in `offsets`.
    unsafe { core::ptr::read_volatile(&TASK_OFFSETS.start_boottime) }
}

/// A `task_struct` pointer the kernel handed to a program.
#[derive(Clone, Copy)]
pub struct Task(*mut task_struct);

impl Task {
    #[inline(always)]
    pub fn new(ptr: *mut task_struct) -> Option<Self> {
        (!ptr.is_null()).then_some(Self(ptr))
    }

    #[inline(always)]
    pub fn as_ptr(self) -> *mut task_struct {
        self.0
    }

    /// Reads the field at byte `offset`, or the default when the read faults.
    #[inline(always)]
    pub fn read<T: Copy + Default>(self, offset: u32) -> T {
        let field = self
            .0
            .cast::<u8>()
            .wrapping_add(offset as usize)
            .cast::<T>();
        // SAFETY: probe_read_kernel checks the address and fails instead of faulting.
        unsafe { bpf_probe_read_kernel(field) }.unwrap_or_default()
    }

    /// Loads the field at byte `offset` directly, no helper call: for the task pointers a
    /// BTF tracepoint hands over (PTR_TO_BTF_ID). The offset comes from the frozen
    /// `.rodata`, so the verifier knows it and checks the load against `task_struct`'s BTF;
    /// a faulting load reads zero.
    #[inline(always)]
    pub fn field<T: Copy>(self, offset: u32) -> T {
        let field = self
            .0
            .cast::<u8>()
            .wrapping_add(offset as usize)
            .cast::<T>();
        // SAFETY: see above: the verifier rewrites it as a load that cannot fault.
        unsafe { core::ptr::read_volatile(field) }
    }

    #[inline(always)]
    pub fn comm(self, offset: u32) -> [u8; 16] {
        let field = self
            .0
            .cast::<u8>()
            .wrapping_add(offset as usize)
            .cast::<[u8; 16]>();
        // SAFETY: as in `read`.
        unsafe { bpf_probe_read_kernel(field) }.unwrap_or([0; 16])
    }
}
