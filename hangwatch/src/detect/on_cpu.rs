//! `on_cpu`: a thread of a selected process that runs without blocking longer than its
//! threshold (a runaway loop). Preemption is not blocking: a thread that shares its CPU
//! but never waits for anything keeps running. Off unless processes are selected.
use std::time::Duration;

use super::{Candidate, Selected, reached};
use crate::{kind::HangKind, state::ThreadSample};

#[derive(Debug, Clone)]
pub struct OnCpu {
    pub threshold: Duration,
}

impl OnCpu {
    /// on_cpu's threshold check: `sample` has been runnable without blocking for
    /// `threshold` (0, not seen runnable, never has). Also the detectors' test against the
    /// smallest threshold any process has.
    pub fn crossed(threshold: Duration, sample: &ThreadSample, now_ns: u64) -> bool {
        let since = sample.runnable_since_ns;
        since != 0 && reached(now_ns.saturating_sub(since), threshold)
    }

    pub fn check(
        &self,
        sample: &ThreadSample,
        selected: &Selected,
        now_ns: u64,
    ) -> Option<Candidate> {
        let long_enough = Self::crossed(self.threshold, sample, now_ns);
        (selected.contains(&sample.tgid)
            && sample.not_blocked()
            && !sample.paused()
            && !sample.kernel_thread
            && long_enough)
            .then(|| Candidate {
                thread: sample.key,
                tgid: sample.tgid,
                kind: HangKind::OnCpu,
                threshold: self.threshold,
                since_ns: sample.runnable_since_ns,
                members: Vec::new(),
                reason: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use hangwatch_ebpf::task_state;

    use super::*;
    use crate::detect::testing::blocked;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn running_long_in_a_selected_process() {
        let o = OnCpu {
            threshold: Duration::from_secs(1),
        };
        let selected: Selected = [100].into_iter().collect();
        let mut spinning = blocked(101, 100, task_state::RUNNING, 5 * SEC);
        spinning.on_cpu = true;
        spinning.runnable_since_ns = 5 * SEC;
        assert!(o.check(&spinning, &selected, 5 * SEC + SEC / 2).is_none());
        let c = o.check(&spinning, &selected, 6 * SEC).expect("1 s on CPU");
        assert_eq!(c.since_ns, 5 * SEC);
        let mut other = spinning.clone();
        other.tgid = 200;
        assert!(
            o.check(&other, &selected, 60 * SEC).is_none(),
            "not selected"
        );
        let sleeping = blocked(102, 100, task_state::INTERRUPTIBLE, 5 * SEC);
        assert!(o.check(&sleeping, &selected, 60 * SEC).is_none(), "blocked");
    }
}
