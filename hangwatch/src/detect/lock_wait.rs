//! `lock_wait`: a thread blocked on a contended lock for longer than its threshold. On for
//! every process. Threads of a deadlock are the `deadlock` episode's, not this one's.
//!
//! - The owner is known: a glibc mutex names it beside the futex word, a PI futex in it.
//! - The lock keeps no owner (Rust std's futex mutex, parking_lot, glibc's internal
//!   `lll` locks): the wait has the shape of a lock's slow path
//!   ([`crate::state::FutexCall::lock_shaped`]) and is a candidate; whether it is a lock
//!   is read from its stack, which the report reads anyway ([`ownerless`]): a wait whose
//!   stack shows no lock path is not reported. Nothing is read per scan.
use std::time::Duration;

use serde::Serialize;

use super::{Candidate, candidate, reached};
use crate::{kind::HangKind, meta::LockFacts, state::ThreadSample};

#[derive(Debug, Clone)]
pub struct LockWait {
    pub threshold: Duration,
}

impl LockWait {
    /// lock_wait's threshold check: `sample` has been off-CPU (in its futex wait) for
    /// `threshold`. Also the detectors' test against the smallest threshold any process has.
    pub fn crossed(threshold: Duration, sample: &ThreadSample, now_ns: u64) -> bool {
        reached(sample.off_cpu_for_ns(now_ns), threshold)
    }

    pub fn check(
        &self,
        sample: &ThreadSample,
        locks: &LockFacts,
        now_ns: u64,
    ) -> Option<Candidate> {
        let long_enough = Self::crossed(self.threshold, sample, now_ns);
        let call = sample.futex_wait()?;
        (long_enough && (locks.owners.contains_key(&sample.key) || call.lock_shaped()))
            .then(|| candidate(sample, HangKind::LockWait, self.threshold))
    }
}

/// Which lock implementation a stack shows a thread waiting in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockPath {
    /// Rust std's futex `Mutex::lock_contended`.
    RustStd,
    /// parking_lot's `lock_slow` paths (mutexes and rwlocks).
    ParkingLot,
    /// glibc's `__lll_lock_wait` (its internal locks, a mutex whose owner is not readable).
    Glibc,
}

impl LockPath {
    /// The name in events.
    pub fn name(self) -> &'static str {
        match self {
            Self::RustStd => "rust_std",
            Self::ParkingLot => "parking_lot",
            Self::Glibc => "glibc",
        }
    }
}

/// A lock wait without an owner, as its report states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerlessLock {
    pub implementation: LockPath,
    /// The lock's address: the futex word for Rust std and glibc; `None` for parking_lot,
    /// which parks each thread on a word of its own (the lock is only a key in its tables).
    pub address: Option<String>,
}

/// Function names that are a lock's slow path, per implementation.
const LOCK_FRAMES: &[(&str, LockPath)] = &[
    // `<std::sys::sync::mutex::futex::Mutex>::lock_contended` (Rust 1.95), or
    // `std::sys::unix::locks::futex_mutex::Mutex::lock_contended` (older).
    ("Mutex>::lock_contended", LockPath::RustStd),
    ("Mutex::lock_contended", LockPath::RustStd),
    (
        "parking_lot::raw_mutex::RawMutex::lock_slow",
        LockPath::ParkingLot,
    ),
    ("parking_lot::raw_fair_mutex::", LockPath::ParkingLot),
    (
        "parking_lot::raw_rwlock::RawRwLock::lock_exclusive_slow",
        LockPath::ParkingLot,
    ),
    (
        "parking_lot::raw_rwlock::RawRwLock::lock_shared_slow",
        LockPath::ParkingLot,
    ),
    ("__lll_lock_wait", LockPath::Glibc),
];
/// The lock path must be among this many innermost frames: the futex wait is its own,
/// not one of a caller further up.
const LOCK_FRAME_DEPTH: usize = 8;

/// The lock implementation whose slow path a stack (function names, innermost first) is
/// waiting in, if any.
pub fn lock_path<'a>(symbols: impl IntoIterator<Item = &'a str>) -> Option<LockPath> {
    symbols.into_iter().take(LOCK_FRAME_DEPTH).find_map(|s| {
        LOCK_FRAMES
            .iter()
            .find(|(frame, _)| s.contains(frame))
            .map(|(_, path)| *path)
    })
}

/// What a `lock_wait` report without an owner makes of its stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownerless {
    /// Not an ownerless lock wait: the owner is known, or another kind.
    NotAsked,
    /// A lock path: reported, with the lock.
    Lock(OwnerlessLock),
    /// No lock path on a readable stack, or no stack to tell: not reported.
    NotALock,
}

impl Ownerless {
    /// The verdict for the report of a `kind` episode of `sample`, whose lock owner is
    /// `owner`, from the user stack the report read (`symbols`, innermost first).
    pub fn of<'a>(
        kind: HangKind,
        sample: &ThreadSample,
        owner: Option<u32>,
        symbols: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        if kind != HangKind::LockWait || owner.is_some() {
            return Self::NotAsked;
        }
        let Some(call) = sample.futex_wait() else {
            return Self::NotALock;
        };
        match lock_path(symbols) {
            Some(implementation) => Self::Lock(OwnerlessLock {
                implementation,
                address: (implementation != LockPath::ParkingLot)
                    .then(|| format!("{:#x}", call.uaddr)),
            }),
            None => Self::NotALock,
        }
    }

    pub fn lock(self) -> Option<OwnerlessLock> {
        match self {
            Self::Lock(lock) => Some(lock),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::{detect::testing::blocked_in_futex, state::ProcSyscall};

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn only_waits_with_a_known_owner_past_threshold() {
        let l = LockWait {
            threshold: Duration::from_secs(5),
        };
        let waiter = blocked_in_futex(11, 10, 0, 2, false);
        let mut locks = LockFacts::default();
        let condvar = blocked_in_futex(13, 10, 0, 0, false);
        assert!(
            l.check(&condvar, &locks, 100 * SEC).is_none(),
            "no owner, no lock shape"
        );
        locks.owners.insert(waiter.key, 12);
        assert!(l.check(&waiter, &locks, 4 * SEC).is_none(), "4 s < 5 s");
        let c = l.check(&waiter, &locks, 5 * SEC).expect("5 s");
        assert_eq!(c.kind, HangKind::LockWait);
        let mut stopped = waiter.clone();
        stopped.task_state = task_state::STOPPED | task_state::WAKEKILL;
        assert!(l.check(&stopped, &locks, 100 * SEC).is_none(), "paused");
        let mut in_read = waiter.clone();
        in_read.saved_syscall = Some(ProcSyscall {
            nr: libc::SYS_read,
            args: [0; 6],
        });
        assert!(
            l.check(&in_read, &locks, 100 * SEC).is_none(),
            "not a futex"
        );
    }

    #[test]
    fn a_lock_shaped_wait_without_owner_is_a_candidate_the_stack_decides() {
        let l = LockWait {
            threshold: Duration::from_secs(5),
        };
        let waiter = blocked_in_futex(11, 10, 0, 2, false);
        let none = LockFacts::default();
        assert!(
            l.check(&waiter, &none, 5 * SEC).is_some(),
            "the shape of a lock"
        );
        let timed = blocked_in_futex(12, 10, 0, 2, true);
        assert!(l.check(&timed, &none, 100 * SEC).is_none(), "a timed wait");

        let std_stack = [
            "syscall",
            "std::sys::pal::unix::futex::futex_wait",
            "<std::sys::sync::mutex::futex::Mutex>::lock_contended",
            "std_lock_read::waiter",
        ];
        let lock = Ownerless::of(HangKind::LockWait, &waiter, None, std_stack)
            .lock()
            .expect("a std mutex");
        assert_eq!(lock.implementation, LockPath::RustStd);
        assert_eq!(lock.address.as_deref(), Some("0x1000"));
        let parking = [
            "syscall",
            "parking_lot_core::parking_lot::park",
            "parking_lot::raw_mutex::RawMutex::lock_slow",
        ];
        let lock = Ownerless::of(HangKind::LockWait, &waiter, None, parking).lock();
        assert_eq!(
            lock.map(|l| (l.implementation, l.address)),
            Some((LockPath::ParkingLot, None))
        );
        let glibc = ["__lll_lock_wait_private", "_IO_puts", "main"];
        assert_eq!(lock_path(glibc), Some(LockPath::Glibc));
        // A condvar wait that happens to wait for 2, an unreadable stack: not reported.
        let condvar = [
            "__futex_abstimed_wait_common",
            "___pthread_cond_wait",
            "worker",
        ];
        assert_eq!(
            Ownerless::of(HangKind::LockWait, &waiter, None, condvar),
            Ownerless::NotALock
        );
        assert_eq!(
            Ownerless::of(HangKind::LockWait, &waiter, None, []),
            Ownerless::NotALock
        );
        // Known owner, other kinds: not this check's.
        assert_eq!(
            Ownerless::of(HangKind::LockWait, &waiter, Some(7), []),
            Ownerless::NotAsked
        );
        assert_eq!(
            Ownerless::of(HangKind::OffCpu, &waiter, None, []),
            Ownerless::NotAsked
        );
        // A lock frame deep in the caller chain is not this wait's.
        let deep: Vec<&str> = std::iter::repeat_n("f", LOCK_FRAME_DEPTH)
            .chain(["Mutex::lock_contended"])
            .collect();
        assert_eq!(lock_path(deep), None);
    }
}
