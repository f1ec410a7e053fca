//! Detectors: from the thread samples of one scan, which threads are hung and of what kind.
//! One file per hang kind; each is a pure function of the samples, the rules and `now`.
mod d_state;
mod off_cpu;
mod targets;

use std::{collections::HashSet, time::Duration};

use serde::Serialize;

use crate::state::{ThreadKey, ThreadSample};

pub use d_state::DState;
pub use off_cpu::OffCpu;
pub use targets::Targets;

/// The hang kinds. Their names are part of the contract (MISSION.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangKind {
    DState,
    OffCpu,
}

impl HangKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DState => "d_state",
            Self::OffCpu => "off_cpu",
        }
    }
}

/// A thread that is hung right now, by one detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub thread: ThreadKey,
    pub tgid: u32,
    pub kind: HangKind,
    pub threshold: Duration,
    /// CLOCK_MONOTONIC ns at which the wait began: with `thread` and `kind` it names the
    /// episode, so a thread that runs and blocks again starts a new one.
    pub since_ns: u64,
}

/// Everything the detectors need besides the samples.
#[derive(Debug, Clone, Default)]
pub struct Detectors {
    pub d_state: Option<DState>,
    pub off_cpu: Option<OffCpu>,
}

/// The processes selected for `off_cpu`, resolved to tgids for this scan.
pub type Selected = HashSet<u32>;

impl Detectors {
    pub fn detect(
        &self,
        samples: &[ThreadSample],
        selected: &Selected,
        now_ns: u64,
    ) -> Vec<Candidate> {
        let mut out = Vec::new();
        for sample in samples {
            if let Some(d) = &self.d_state {
                out.extend(d.check(sample, now_ns));
            }
            if let Some(o) = &self.off_cpu {
                out.extend(o.check(sample, selected, now_ns));
            }
        }
        out
    }

    /// The kernel-side filter of a full walk: threads off-CPU for at least half of a
    /// threshold, the candidates that may cross it before the next walk.
    pub fn scan_config(&self) -> hangwatch_ebpf::ScanConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos() / 2).unwrap_or(u64::MAX);
        hangwatch_ebpf::ScanConfig {
            d_state_min_ns: self.d_state.as_ref().map_or(u64::MAX, |d| ns(d.threshold)),
            watched_min_ns: self.off_cpu.as_ref().map_or(u64::MAX, |o| ns(o.threshold)),
            any_min_ns: u64::MAX,
        }
    }
}

impl Detectors {
    /// How often the full walk must run so that no thread crosses a threshold unseen: half
    /// the smallest threshold, between one tick and `MAX_WALK_INTERVAL`.
    pub fn walk_interval(&self, tick: Duration) -> Duration {
        let smallest = [
            self.d_state.as_ref().map(|d| d.threshold),
            self.off_cpu.as_ref().map(|o| o.threshold),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(MAX_WALK_INTERVAL * 2);
        (smallest / 2).clamp(tick, MAX_WALK_INTERVAL.max(tick))
    }
}

/// Full walks happen at least this often, so new processes and threads are seen.
pub const MAX_WALK_INTERVAL: Duration = Duration::from_secs(5);

fn candidate(sample: &ThreadSample, kind: HangKind, threshold: Duration) -> Candidate {
    Candidate {
        thread: sample.key,
        tgid: sample.tgid,
        kind,
        threshold,
        since_ns: sample.off_cpu_at_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_often_enough_for_the_smallest_threshold() {
        let tick = Duration::from_millis(250);
        let d = Detectors {
            d_state: Some(DState {
                threshold: Duration::from_secs(10),
            }),
            off_cpu: None,
        };
        assert_eq!(d.walk_interval(tick), Duration::from_secs(5));
        let o = Detectors {
            off_cpu: Some(OffCpu {
                threshold: Duration::from_secs(1),
            }),
            ..d.clone()
        };
        assert_eq!(o.walk_interval(tick), Duration::from_millis(500));
        let tiny = Detectors {
            off_cpu: Some(OffCpu {
                threshold: Duration::from_millis(100),
            }),
            ..d
        };
        assert_eq!(tiny.walk_interval(tick), tick);
        assert_eq!(o.scan_config().watched_min_ns, 500_000_000);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::state::{ThreadKey, ThreadSample};

    /// A blocked thread as a scan would report it.
    pub fn blocked(tid: u32, tgid: u32, task_state: u32, off_cpu_at_ns: u64) -> ThreadSample {
        ThreadSample {
            key: ThreadKey {
                tid,
                start_boottime_ns: 1_000,
            },
            tgid,
            thread_name: "t".into(),
            task_state,
            state_at_switch: task_state,
            off_cpu_at_ns,
            woken: false,
            kernel_thread: false,
            blocked_before_attach: false,
            syscall: None,
            saved_syscall: None,
            seen_at_ns: 0,
        }
    }
}
