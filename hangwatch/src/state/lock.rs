//! Futex waits as locks: which futex call a blocked thread is in (from its saved syscall
//! arguments), and, given the words at the futex address, who owns the lock. Pure
//! functions; the reading is `meta::futex_owner`'s.
use super::{ProcSyscall, ThreadSample};

/// futex_waitv(2) and futex_wait(2), the same numbers on every architecture.
const SYS_FUTEX_WAITV: i64 = 449;
const SYS_FUTEX_WAIT: i64 = 455;
const FUTEX_PRIVATE_FLAG: u64 = 128;
const FUTEX_CLOCK_REALTIME: u64 = 256;
const FUTEX2_PRIVATE: u64 = 128;
/// The largest tid the kernel hands out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// What a futex wait is, as far as the lock logic cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexCmd {
    /// FUTEX_WAIT, FUTEX_WAIT_BITSET, futex_wait(2): a plain wait on a word.
    Wait,
    /// FUTEX_LOCK_PI / FUTEX_LOCK_PI2: the owner's tid is in the word.
    LockPi,
    /// Any other wait (FUTEX_WAIT_REQUEUE_PI, futex_waitv, ...).
    Other,
}

/// A thread's futex wait, decoded from its saved syscall arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FutexCall {
    pub uaddr: u64,
    pub cmd: FutexCmd,
    /// The value the caller expected in the word (`None` when unknown).
    pub val: Option<u32>,
    /// Private to the process (FUTEX_PRIVATE_FLAG / FUTEX2_PRIVATE).
    pub private: bool,
    /// The wait has a timeout.
    pub timed: bool,
}

impl FutexCall {
    /// The futex wait of a thread, from the registers the scan read, else from the futex
    /// probes' record (which has no expected value).
    pub fn of(sample: &ThreadSample) -> Option<Self> {
        if let Some(saved) = sample.saved_syscall {
            return Self::from_syscall(&saved);
        }
        let s = sample.syscall?;
        let nr = i64::from(s.nr);
        let op = u64::from(s.futex_op);
        let (cmd, private) = if nr == libc::SYS_futex {
            (futex_cmd(op), op & FUTEX_PRIVATE_FLAG != 0)
        } else if nr == SYS_FUTEX_WAIT {
            (FutexCmd::Wait, op & FUTEX2_PRIVATE != 0)
        } else {
            (FutexCmd::Other, false)
        };
        Some(Self {
            uaddr: s.futex_uaddr,
            cmd,
            val: None,
            private,
            timed: s.has_timeout,
        })
    }

    pub fn from_syscall(s: &ProcSyscall) -> Option<Self> {
        let a = s.args;
        match s.nr {
            libc::SYS_futex => Some(Self {
                uaddr: a[0],
                cmd: futex_cmd(a[1]),
                val: Some(a[2] as u32),
                private: a[1] & FUTEX_PRIVATE_FLAG != 0,
                timed: a[3] != 0,
            }),
            // futex_wait(uaddr, val, mask, flags, timeout, clockid)
            SYS_FUTEX_WAIT => Some(Self {
                uaddr: a[0],
                cmd: FutexCmd::Wait,
                val: Some(a[1] as u32),
                private: a[3] & FUTEX2_PRIVATE != 0,
                timed: a[4] != 0,
            }),
            // futex_waitv(waiters, nr, flags, timeout, clockid): the flags are per waiter.
            SYS_FUTEX_WAITV => Some(Self {
                uaddr: a[0],
                cmd: FutexCmd::Other,
                val: None,
                private: false,
                timed: a[3] != 0,
            }),
            _ => None,
        }
    }

    /// Could be a wait on a lock with a known owner: a PI lock, or glibc's lock wait (which
    /// waits for the value 2); unknown when the expected value is not known.
    pub fn may_have_owner(&self) -> bool {
        match self.cmd {
            FutexCmd::LockPi => true,
            FutexCmd::Wait => self.val.is_none_or(|v| v == 2),
            FutexCmd::Other => false,
        }
    }

    /// The shape of a lock's slow path that keeps no owner beside the word: glibc's
    /// `__lll_lock_wait` and Rust std's futex mutex wait untimed, privately, for 2
    /// ("locked, with waiters"); parking_lot parks on its thread's own word for 1. Only
    /// the stack tells whether it is one (`detect::lock_wait::lock_path`).
    pub fn lock_shaped(&self) -> bool {
        self.cmd == FutexCmd::Wait && self.private && !self.timed && matches!(self.val, Some(1 | 2))
    }

    /// The tid this wait joins, if it has the shape of glibc's `pthread_join` (which Rust's
    /// `JoinHandle::join` calls too): an untimed plain wait on a *shared* futex (the word
    /// is the joined thread's `tid`, which the kernel clears and wakes, not privately, when
    /// that thread exits: CLONE_CHILD_CLEARTID) for a positive value, the tid the word
    /// holds while the thread lives. Whether that tid is a thread of the same process is
    /// the caller's to check.
    pub fn joined_tid(&self) -> Option<u32> {
        if self.cmd != FutexCmd::Wait || self.private || self.timed {
            return None;
        }
        self.val.filter(|&v| v > 0 && v <= PID_MAX_LIMIT)
    }
}

fn futex_cmd(op: u64) -> FutexCmd {
    match op & !(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME) {
        0 | 9 => FutexCmd::Wait,
        6 | 13 => FutexCmd::LockPi,
        _ => FutexCmd::Other,
    }
}

/// How many bytes at the futex address `owner_candidate` looks at: glibc's
/// `struct __pthread_mutex_s` up to `__kind`.
pub const MUTEX_PREFIX_BYTES: usize = 20;

/// The owner tid the lock at the futex address names, before the liveness check.
///
/// `words` are the first five 32-bit words at the address. For a plain wait, glibc's
/// x86_64 `pthread_mutex_t` is `{int __lock; unsigned __count; int __owner; unsigned
/// __nusers; int __kind; ...}`: accepted only when the waiter is glibc's `lll_lock_wait`
/// (it waits for the value 2, "locked, with waiters"), the word is taken, and the kind is
/// a plain one (normal, recursive, error-checking, adaptive; not robust, PI or PP). For
/// a PI futex the owner is in the word.
pub fn owner_candidate(call: &FutexCall, words: [u32; 5]) -> Option<u32> {
    match call.cmd {
        FutexCmd::LockPi => Some(words[0] & 0x3fff_ffff).filter(|&tid| tid != 0),
        FutexCmd::Wait => {
            let [lock, _count, owner, _nusers, kind] = words;
            let waits_as_mutex = call.val.is_none_or(|v| v == 2);
            let plain_kind = (kind & 0x7f) <= 3;
            let owner = owner as i32;
            (waits_as_mutex && lock != 0 && plain_kind && owner > 0).then_some(owner as u32)
        }
        FutexCmd::Other => None,
    }
}

/// Whether a candidate of a full walk must be followed every tick: anything but a futex
/// wait that cannot have an owner (those matter only to rules the walks serve).
pub fn needs_ticks(record: &hangwatch_ebpf::ThreadRecord) -> bool {
    // Event-loop threads are few and are judged at every tick (loop_stall).
    if record.syscall_nr < 0 || record.state.loop_waits >= hangwatch_ebpf::MIN_LOOP_WAITS {
        return true;
    }
    let mut args = [0; 6];
    args[..5].copy_from_slice(&record.syscall_args);
    match FutexCall::from_syscall(&ProcSyscall {
        nr: record.syscall_nr,
        args,
    }) {
        Some(call) => call.may_have_owner(),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(val: u32) -> FutexCall {
        FutexCall {
            uaddr: 0x1000,
            cmd: FutexCmd::Wait,
            val: Some(val),
            private: true,
            timed: false,
        }
    }

    #[test]
    fn decodes_futex_syscalls() {
        let lock_wait = ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x5000, 0x80, 2, 0, 0, 0],
        };
        let call = FutexCall::from_syscall(&lock_wait).expect("futex");
        assert_eq!(call, wait(2).with_uaddr(0x5000));
        assert!(call.private && !call.timed);
        let timed_bitset = ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x5000, 0x189, 0, 0x7ffc, 0, 0],
        };
        let call = FutexCall::from_syscall(&timed_bitset).expect("futex");
        assert_eq!((call.cmd, call.timed), (FutexCmd::Wait, true));
        let pi = ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x5000, 6 | 128, 0, 0, 0, 0],
        };
        assert_eq!(
            FutexCall::from_syscall(&pi).map(|c| c.cmd),
            Some(FutexCmd::LockPi)
        );
        let read = ProcSyscall {
            nr: libc::SYS_read,
            args: [0; 6],
        };
        assert_eq!(FutexCall::from_syscall(&read), None);
    }

    impl FutexCall {
        fn with_uaddr(mut self, uaddr: u64) -> Self {
            self.uaddr = uaddr;
            self
        }
    }

    #[test]
    fn glibc_mutex_owner() {
        // Locked with waiters, owner 4242, normal kind.
        assert_eq!(owner_candidate(&wait(2), [2, 0, 4242, 1, 0]), Some(4242));
        // Recursive, private flag off (kind 1), elision bits above 0x7f ignored.
        assert_eq!(owner_candidate(&wait(2), [2, 1, 7, 1, 0x101]), Some(7));
        // Unlocked: not a held lock.
        assert_eq!(owner_candidate(&wait(2), [0, 0, 4242, 0, 0]), None);
        // Robust mutex kind (16): not trusted.
        assert_eq!(owner_candidate(&wait(2), [2, 0, 4242, 1, 16]), None);
        // A condvar wait (expected value 0): not a mutex.
        assert_eq!(owner_candidate(&wait(0), [2, 0, 4242, 1, 0]), None);
        // No owner written.
        assert_eq!(owner_candidate(&wait(2), [2, 0, 0, 1, 0]), None);
    }

    #[test]
    fn a_join_is_a_shared_untimed_wait_for_a_tid() {
        // pthread_join as glibc 2.36 makes it: FUTEX_WAIT_BITSET|FUTEX_CLOCK_REALTIME, not
        // private, no timeout, for the joined thread's tid.
        let join = ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x7f00_0990, 0x109, 31042, 0, 0, 0xffff_ffff],
        };
        let call = FutexCall::from_syscall(&join).expect("futex");
        assert_eq!(call.joined_tid(), Some(31042));
        assert!(!call.private && !call.timed);
        // The same word waited on privately, or with a timeout, or for 0: no join.
        assert_eq!(wait(31042).joined_tid(), None, "private");
        let mut timed = call;
        timed.timed = true;
        assert_eq!(timed.joined_tid(), None);
        let mut zero = call;
        zero.val = Some(0);
        assert_eq!(zero.joined_tid(), None);
        let mut pi = call;
        pi.cmd = FutexCmd::LockPi;
        assert_eq!(pi.joined_tid(), None);
    }

    #[test]
    fn pi_owner_is_in_the_word() {
        let mut call = wait(0);
        call.cmd = FutexCmd::LockPi;
        assert_eq!(
            owner_candidate(&call, [0x8000_0000 | 99, 0, 0, 0, 0]),
            Some(99)
        );
        assert_eq!(owner_candidate(&call, [0, 0, 0, 0, 0]), None);
    }
}
