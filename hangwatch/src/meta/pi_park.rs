//! Threads that glibc parks for ever after the kernel refused them a PI lock.
//!
//! `pthread_mutex_lock` on a priority-inheritance mutex asks the kernel with
//! `FUTEX_LOCK_PI`. When granting it would close a cycle of PI owners the kernel answers
//! EDEADLK, and glibc (nptl/pthread_mutex_lock.c: "delay the thread indefinitely") then
//! loops for ever in an untimed futex wait for 0 on a local variable: a word on the
//! thread's own stack that no other thread knows of. The other threads of the cycle stay
//! in `FUTEX_LOCK_PI` with the parked thread as the owner in the lock word, so the owner
//! graph has a chain ending at the parked thread, and the edge back is lost.
//!
//! Recognized here: the owner of a PI lock waiter that waits on no lock itself and is in
//! an untimed private plain futex wait for 0 on a word at most [`PARK_WINDOW`] bytes above
//! its saved stack pointer (`/proc/PID/task/TID/syscall`, which takes no mm lock: safe on
//! the detection thread). The edge back goes to the one thread of the PI chains ending at
//! it that no other thread of them waits on (in an ABBA, the other thread): its lock is
//! the one that was asked for. With several such threads that edge stays unknown, and no
//! cycle is claimed.
use std::{
    collections::{HashMap, HashSet},
    fs,
};

use super::LockFacts;
use crate::state::{FutexCall, FutexCmd, ThreadSample};

/// A thread that glibc parks for ever after `FUTEX_LOCK_PI` failed with EDEADLK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PiPark {
    /// How far above its stack pointer the futex word it waits on is: a local variable
    /// of `pthread_mutex_lock`, a word no other thread knows of.
    pub above_sp: u64,
    /// The thread that holds the lock it asked for, when only one can (the one thread
    /// whose chain of PI lock waits ends at the parked one).
    pub asked_owner: Option<u32>,
}

/// How far above the stack pointer at the syscall glibc's local futex word can be: the
/// frame of `pthread_mutex_lock`'s slow path (84 bytes with Debian 12's glibc 2.36).
pub const PARK_WINDOW: u64 = 512;

/// Finds the parked owners of this scan's PI lock waiters, records them in
/// `locks.parked` and, where it is known, the owner of the lock each one asked for in
/// `locks.owners` (which closes the cycle for `detect::deadlock`).
pub fn close_cycles(samples: &[ThreadSample], locks: &mut LockFacts) {
    locks.parked.clear();
    // Waiter tid -> owner tid, for the PI lock waits whose owner is known.
    let pi: HashMap<u32, (u32, u32)> = samples
        .iter()
        .filter(|s| s.futex_wait().is_some_and(|c| c.cmd == FutexCmd::LockPi))
        .filter_map(|s| Some((s.key.tid, (*locks.owners.get(&s.key)?, s.tgid))))
        .collect();
    if pi.is_empty() {
        return;
    }
    let by_tid: HashMap<u32, &ThreadSample> = samples.iter().map(|s| (s.key.tid, s)).collect();
    let waits_on_a_lock: HashSet<u32> = locks.owners.keys().map(|k| k.tid).collect();
    let mut looked = HashSet::new();
    for &(owner, tgid) in pi.values() {
        if !looked.insert(owner) || waits_on_a_lock.contains(&owner) {
            continue;
        }
        // Sampled (at a walk): its wait must look like the park before /proc is read.
        if let Some(sample) = by_tid.get(&owner)
            && !sample.futex_wait().is_some_and(|c| looks_parked(&c, true))
        {
            continue;
        }
        let Some(above_sp) = parked_above_sp(tgid, owner) else {
            continue;
        };
        let asked_owner = asked_owner(owner, &pi);
        locks.parked.insert(
            owner,
            PiPark {
                above_sp,
                asked_owner,
            },
        );
        if let (Some(asked), Some(sample)) = (asked_owner, by_tid.get(&owner)) {
            locks.owners.insert(sample.key, asked);
        }
    }
}

/// The owner of the lock the parked thread `parked` asked for, when only one thread can
/// be it: of the PI waiters whose chain of owners ends at `parked`, the one no other of
/// them waits on.
fn asked_owner(parked: u32, pi: &HashMap<u32, (u32, u32)>) -> Option<u32> {
    let reaches = |mut tid: u32| {
        for _ in 0..pi.len() {
            match pi.get(&tid) {
                Some(&(owner, _)) if owner == parked => return true,
                Some(&(owner, _)) => tid = owner,
                None => return false,
            }
        }
        false
    };
    let chain: Vec<u32> = pi.keys().copied().filter(|&t| reaches(t)).collect();
    let waited_on: HashSet<u32> = chain
        .iter()
        .filter_map(|t| pi.get(t))
        .map(|p| p.0)
        .collect();
    let mut ends = chain.into_iter().filter(|t| !waited_on.contains(t));
    match (ends.next(), ends.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// The shape of the park: an untimed plain wait on a private futex for 0 (`None`, not
/// known from the futex probes' record, passes when `unknown_value_ok`).
fn looks_parked(call: &FutexCall, unknown_value_ok: bool) -> bool {
    call.cmd == FutexCmd::Wait
        && call.private
        && !call.timed
        && match call.val {
            Some(v) => v == 0,
            None => unknown_value_ok,
        }
}

/// How far above its saved stack pointer the futex word thread `tid` of `tgid` waits on
/// is, if it is parked as glibc parks after EDEADLK.
fn parked_above_sp(tgid: u32, tid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{tgid}/task/{tid}/syscall")).ok()?;
    park_offset(&text)
}

/// From a `/proc/PID/task/TID/syscall` line ("NR ARG1 ... ARG6 SP PC").
fn park_offset(text: &str) -> Option<u64> {
    let call = FutexCall::from_syscall(&crate::state::ProcSyscall::parse(text)?)?;
    let sp = text.split_whitespace().nth(7)?;
    let sp = u64::from_str_radix(sp.strip_prefix("0x")?, 16).ok()?;
    let above = call.uaddr.checked_sub(sp)?;
    (looks_parked(&call, false) && above < PARK_WINDOW).then_some(above)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_park_is_a_wait_for_zero_just_above_the_stack_pointer() {
        // worker_b of tests/programs/pi_abba.c, as /proc showed it (glibc 2.36).
        let parked =
            "202 0x7f2e66e65e74 0x189 0x0 0x0 0x0 0xffffffff 0x7f2e66e65e20 0x7f2e676f0e96";
        assert_eq!(park_offset(parked), Some(0x54));
        // A condvar wait on a global (far from the stack), a wait for 2, a timed wait,
        // a shared one, and no futex at all: no park.
        for other in [
            "202 0x55aa1843b108 0x189 0x0 0x0 0x0 0xffffffff 0x7f02528b5dc0 0x7f025293ff16",
            "202 0x7f2e66e65e74 0x189 0x2 0x0 0x0 0xffffffff 0x7f2e66e65e20 0x7f2e676f0e96",
            "202 0x7f2e66e65e74 0x189 0x0 0x7ffc0000 0x0 0xffffffff 0x7f2e66e65e20 0x0",
            "202 0x7f2e66e65e74 0x109 0x0 0x0 0x0 0xffffffff 0x7f2e66e65e20 0x0",
            "0 0x3 0x7ffc 0x1 0x0 0x0 0x0 0x7f2e66e65e20 0x0",
            "running",
        ] {
            assert_eq!(park_offset(other), None, "{other}");
        }
    }

    #[test]
    fn the_asked_owner_is_the_far_end_of_the_chain() {
        // ABBA: 11 waits on 12's lock, 12 parked.
        let abba = HashMap::from([(11, (12, 10))]);
        assert_eq!(asked_owner(12, &abba), Some(11));
        // A three-cycle 11 -> 12 -> 13, 13 parked: it asked for 11's lock.
        let three = HashMap::from([(11, (12, 10)), (12, (13, 10))]);
        assert_eq!(asked_owner(13, &three), Some(11));
        // Two chains end at 13 (11 and 14 both wait on 12): which one is not known.
        let two = HashMap::from([(11, (12, 10)), (14, (12, 10)), (12, (13, 10))]);
        assert_eq!(asked_owner(13, &two), None);
        assert_eq!(asked_owner(99, &abba), None);
    }
}
