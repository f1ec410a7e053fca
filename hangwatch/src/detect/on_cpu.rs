//! `on_cpu`: a thread of a selected process that runs without blocking longer than its
//! threshold (a runaway loop). Preemption is not blocking: a thread that shares its CPU
//! but never waits for anything keeps running. Off unless processes are selected.
use std::time::Duration;

use super::{Candidate, HangKind, Selected};
use crate::state::ThreadSample;

#[derive(Debug, Clone)]
pub struct OnCpu {
    pub threshold: Duration,
}

impl OnCpu {
    pub fn check(
        &self,
        sample: &ThreadSample,
        selected: &Selected,
        now_ns: u64,
    ) -> Option<Candidate> {
        let since = sample.runnable_since_ns;
        let long_enough =
            since != 0 && u128::from(now_ns.saturating_sub(since)) >= self.threshold.as_nanos();
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
                since_ns: since,
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
