//! What a thread's saved registers say about the syscall it is in: the syscall number and
//! arguments the thread entered the kernel with (`struct pt_regs` at the top of its kernel
//! stack), which stay as they were while it is blocked. `/proc/PID/task/TID/syscall` shows
//! the same; here it is read without any syscall probe, so no syscall pays for it.
use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_task_pt_regs};

use crate::task::Task;

/// Which kind of wait a syscall is, for the scheduler probe.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WaitKind {
    /// An event loop's wait: the epoll family and io_uring_enter.
    Loop,
    /// A futex wait: a lock, a condvar, a parked worker.
    Futex,
    Other,
}

/// The syscall number a task entered the kernel with, -1 for an interrupt or exception.
/// A direct load from the `pt_regs` the helper returns (a BTF pointer the verifier checks),
/// cheap enough for the scheduler's hot path.
#[inline(always)]
pub fn saved_syscall_nr(task: Task) -> i64 {
    // SAFETY: `task` is a trusted task pointer (the tracepoint's or the iterator's); the
    // helper returns its saved registers or null, checked below.
    let regs = unsafe { bpf_task_pt_regs(task.as_ptr()) } as *const u8;
    if regs.is_null() {
        return -1;
    }
    // SAFETY: a PTR_TO_BTF_ID load: the verifier checks the offset against `struct pt_regs`
    // and the kernel turns a fault into a zero. 32 bits on every architecture (arm64 keeps
    // it in an s32, x86_64's orig_ax holds a syscall number or -1).
    i64::from(unsafe { core::ptr::read_volatile(regs.wrapping_add(REG_SYSCALL_NR).cast::<i32>()) })
}

/// The saved registers of a task: its syscall number and first five arguments, and its
/// user instruction, stack and frame pointers. Read with probe_read (iterators only).
pub struct SavedRegs(*const u8);

impl SavedRegs {
    #[inline(always)]
    pub fn of(task: Task) -> Self {
        // SAFETY: `task` is a trusted task pointer from the iterator; the result is only read
        // through bpf_probe_read_kernel, which tolerates any address.
        Self(unsafe { bpf_task_pt_regs(task.as_ptr()) } as *const u8)
    }

    #[inline(always)]
    fn read(&self, offset: usize) -> u64 {
        // SAFETY: probe_read_kernel fails instead of faulting on a bad address.
        unsafe { bpf_probe_read_kernel(self.0.wrapping_add(offset).cast::<u64>()) }.unwrap_or(0)
    }

    #[inline(always)]
    pub fn syscall_nr(&self) -> i64 {
        // SAFETY: as in `read`.
        unsafe { bpf_probe_read_kernel(self.0.wrapping_add(REG_SYSCALL_NR).cast::<i32>()) }
            .map_or(-1, i64::from)
    }

    #[inline(always)]
    pub fn syscall_args(&self) -> [u64; 5] {
        [
            self.read(REG_ARG0),
            self.read(REG_ARG1),
            self.read(REG_ARG2),
            self.read(REG_ARG3),
            self.read(REG_ARG4),
        ]
    }

    #[inline(always)]
    pub fn user_ip(&self) -> u64 {
        self.read(REG_IP)
    }

    #[inline(always)]
    pub fn user_sp(&self) -> u64 {
        self.read(REG_SP)
    }

    #[inline(always)]
    pub fn user_fp(&self) -> u64 {
        self.read(REG_FP)
    }
}

#[inline(always)]
pub fn wait_kind(nr: i64) -> WaitKind {
    if is_loop_wait(nr) {
        WaitKind::Loop
    } else if is_futex_wait(nr) {
        WaitKind::Futex
    } else {
        WaitKind::Other
    }
}

/// The syscalls a thread waits on a futex in: futex(2), futex_waitv(2), futex_wait(2).
#[inline(always)]
pub fn is_futex_wait(nr: i64) -> bool {
    nr == SYS_FUTEX || nr == SYS_FUTEX_WAITV || nr == SYS_FUTEX_WAIT
}

/// The waits an event loop comes back to: epoll_wait, epoll_pwait, epoll_pwait2 and
/// io_uring_enter (hangwatch's userspace keeps the same list in `state/syscalls.rs`).
/// poll(2) and select(2) are left out on purpose: blocking I/O with a timeout uses them
/// (Python sockets, curl), so a thread that polled a few times and then computes is no
/// event loop, and reporting it would be noise.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn is_loop_wait(nr: i64) -> bool {
    matches!(nr, 232 | 281 | SYS_EPOLL_PWAIT2 | SYS_IO_URING_ENTER)
}

/// The same on arm64, which has epoll_pwait but no epoll_wait.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn is_loop_wait(nr: i64) -> bool {
    matches!(nr, 22 | SYS_EPOLL_PWAIT2 | SYS_IO_URING_ENTER)
}

/// The waits a thread idles in besides its loop wait and futexes: poll(2), ppoll(2),
/// select(2), pselect6(2). glib's main loop waits in poll(2), and so does blocking I/O
/// with a timeout: neither is a loop away from its wait.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub fn is_poll_wait(nr: i64) -> bool {
    matches!(nr, 7 | 23 | 270 | 271)
}

/// The same on arm64 (pselect6 and ppoll only).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub fn is_poll_wait(nr: i64) -> bool {
    matches!(nr, 72 | 73)
}

const SYS_FUTEX_WAITV: i64 = 449;
const SYS_FUTEX_WAIT: i64 = 455;
const SYS_EPOLL_PWAIT2: i64 = 441;
const SYS_IO_URING_ENTER: i64 = 426;

#[cfg(bpf_target_arch = "x86_64")]
const SYS_FUTEX: i64 = 202;

#[cfg(bpf_target_arch = "aarch64")]
const SYS_FUTEX: i64 = 98;

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
