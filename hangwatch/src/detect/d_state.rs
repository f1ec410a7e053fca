//! `d_state`: a thread in uninterruptible sleep (TASK_UNINTERRUPTIBLE) for too long: stuck
//! I/O, a frozen filesystem, hung NFS. On for every process.
use std::time::Duration;

use super::{Candidate, candidate, reached};
use crate::{kind::HangKind, state::ThreadSample};

#[derive(Debug, Clone)]
pub struct DState {
    pub threshold: Duration,
}

impl DState {
    /// d_state's threshold check: `sample` has been off-CPU (in its D sleep) for
    /// `threshold`. Also the detectors' test against the smallest threshold any process has.
    pub fn crossed(threshold: Duration, sample: &ThreadSample, now_ns: u64) -> bool {
        reached(sample.off_cpu_for_ns(now_ns), threshold)
    }

    pub fn check(&self, sample: &ThreadSample, now_ns: u64) -> Option<Candidate> {
        let long_enough = Self::crossed(self.threshold, sample, now_ns);
        (sample.uninterruptible() && !sample.woken && long_enough)
            .then(|| candidate(sample, HangKind::DState, self.threshold))
    }
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::detect::testing::blocked;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn reports_uninterruptible_sleep_past_threshold_only() {
        let d = DState {
            threshold: Duration::from_secs(10),
        };
        let stuck = blocked(7, 7, task_state::UNINTERRUPTIBLE, 5 * SEC);
        assert!(d.check(&stuck, 14 * SEC).is_none(), "9 s < 10 s");
        let c = d.check(&stuck, 15 * SEC).expect("10 s reached");
        assert_eq!((c.kind, c.since_ns), (HangKind::DState, 5 * SEC));
    }

    #[test]
    fn idle_kernel_threads_and_sleepers_are_not_d_state() {
        let d = DState {
            threshold: Duration::from_secs(1),
        };
        let idle = blocked(2, 2, task_state::UNINTERRUPTIBLE | task_state::NOLOAD, 0);
        let sleeper = blocked(3, 3, task_state::INTERRUPTIBLE, 0);
        assert!(d.check(&idle, 100 * SEC).is_none());
        assert!(d.check(&sleeper, 100 * SEC).is_none());
        let mut woken = blocked(4, 4, task_state::UNINTERRUPTIBLE, 0);
        woken.woken = true;
        assert!(d.check(&woken, 100 * SEC).is_none());
    }
}
