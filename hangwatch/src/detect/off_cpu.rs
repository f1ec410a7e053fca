//! `off_cpu`: any thread of a selected process off-CPU longer than its threshold, whatever
//! it waits on. Off unless processes are selected (`--pid`, `--comm`).
use std::time::Duration;

use super::{Candidate, Selected, candidate, reached};
use crate::{kind::HangKind, state::ThreadSample};

#[derive(Debug, Clone)]
pub struct OffCpu {
    pub threshold: Duration,
}

impl OffCpu {
    /// off_cpu's threshold check: `sample` has been off-CPU for `threshold`, whatever it
    /// waits on. Also the detectors' test against the smallest threshold any process has.
    pub fn crossed(threshold: Duration, sample: &ThreadSample, now_ns: u64) -> bool {
        reached(sample.off_cpu_for_ns(now_ns), threshold)
    }

    pub fn check(
        &self,
        sample: &ThreadSample,
        selected: &Selected,
        now_ns: u64,
    ) -> Option<Candidate> {
        let long_enough = Self::crossed(self.threshold, sample, now_ns);
        (selected.contains(&sample.tgid) && !sample.woken && long_enough)
            .then(|| candidate(sample, HangKind::OffCpu, self.threshold))
    }
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::detect::testing::blocked;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn only_selected_processes_past_threshold() {
        let o = OffCpu {
            threshold: Duration::from_secs(1),
        };
        let selected: Selected = [100].into_iter().collect();
        let ours = blocked(101, 100, task_state::INTERRUPTIBLE, 10 * SEC);
        let theirs = blocked(201, 200, task_state::INTERRUPTIBLE, 10 * SEC);
        assert!(o.check(&ours, &selected, 10 * SEC + SEC / 2).is_none());
        assert!(o.check(&ours, &selected, 11 * SEC).is_some());
        assert!(o.check(&theirs, &selected, 100 * SEC).is_none());
    }
}
