//! `lock_wait`: a thread blocked on a contended lock whose owner is known (a glibc mutex
//! names its owner beside the futex word, a PI futex in it) for longer than its threshold.
//! On for every process. Threads of a deadlock are the `deadlock` episode's, not this one's.
use std::time::Duration;

use super::{Candidate, HangKind, LockFacts, candidate};
use crate::state::ThreadSample;

#[derive(Debug, Clone)]
pub struct LockWait {
    pub threshold: Duration,
}

impl LockWait {
    pub fn check(
        &self,
        sample: &ThreadSample,
        locks: &LockFacts,
        now_ns: u64,
    ) -> Option<Candidate> {
        let long_enough = u128::from(sample.off_cpu_for_ns(now_ns)) >= self.threshold.as_nanos();
        (long_enough && sample.futex_wait().is_some() && locks.owners.contains_key(&sample.key))
            .then(|| candidate(sample, HangKind::LockWait, self.threshold))
    }
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::{detect::testing::blocked_in_futex, meta::ProcSyscall};

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn only_waits_with_a_known_owner_past_threshold() {
        let l = LockWait {
            threshold: Duration::from_secs(5),
        };
        let waiter = blocked_in_futex(11, 10, 0, 2, false);
        let mut locks = LockFacts::default();
        assert!(l.check(&waiter, &locks, 100 * SEC).is_none(), "no owner");
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
}
