//! Detectors: from the thread samples of one scan, which threads are hung and of what kind.
//! One file per hang kind; each is a pure function of the samples, the rules and `now`.
mod d_state;
pub mod deadlock;
mod lock_wait;
pub mod loop_stall;
mod off_cpu;
mod on_cpu;
pub mod stuck_exit;
mod targets;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde::Serialize;

use crate::state::{ThreadKey, ThreadSample};

pub use d_state::DState;
pub use deadlock::Deadlock;
pub use lock_wait::LockWait;
pub use loop_stall::{LoopFacts, LoopStall, LoopVerdict, Watch};
pub use off_cpu::OffCpu;
pub use on_cpu::OnCpu;
pub use stuck_exit::{ExitRequest, StuckExit};
pub use targets::Targets;

/// The hang kinds. Their names are part of the contract (MISSION.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HangKind {
    DState,
    OffCpu,
    LockWait,
    Deadlock,
    LoopStall,
    OnCpu,
    StuckExit,
}

impl HangKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DState => "d_state",
            Self::OffCpu => "off_cpu",
            Self::LockWait => "lock_wait",
            Self::Deadlock => "deadlock",
            Self::LoopStall => "loop_stall",
            Self::OnCpu => "on_cpu",
            Self::StuckExit => "stuck_exit",
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
    /// For a deadlock, every thread of it (the cycle in order); empty otherwise.
    pub members: Vec<ThreadKey>,
}

/// What the daemon read about the locks the sampled threads wait on.
#[derive(Debug, Clone, Default)]
pub struct LockFacts {
    /// The owner tid of the lock a thread waits on, when known (a live thread of its
    /// process).
    pub owners: HashMap<ThreadKey, u32>,
}

/// Everything the detectors need besides the samples.
#[derive(Debug, Clone, Default)]
pub struct Detectors {
    pub d_state: Option<DState>,
    pub off_cpu: Option<OffCpu>,
    pub lock_wait: Option<LockWait>,
    pub deadlock: Option<Deadlock>,
    pub loop_stall: Option<LoopStall>,
    /// For the selected processes, like `off_cpu`.
    pub on_cpu: Option<OnCpu>,
    pub stuck_exit: Option<StuckExit>,
}

/// What one scan found: the hung threads, and the loop threads to watch closer.
#[derive(Debug, Clone, Default)]
pub struct Detection {
    pub candidates: Vec<Candidate>,
    pub watch: Vec<(ThreadKey, Watch)>,
}

/// Everything besides the samples that the detectors read.
pub struct Facts<'a> {
    pub selected: &'a Selected,
    pub locks: &'a LockFacts,
    pub loops: &'a LoopFacts,
    pub exits: &'a [ExitRequest],
}

/// The processes selected for `off_cpu`, resolved to tgids for this scan.
pub type Selected = HashSet<u32>;

impl Detectors {
    /// `confirm` checks a deadlock against /proc (see [`Deadlock::check`]).
    pub fn detect(
        &self,
        samples: &[ThreadSample],
        facts: &Facts<'_>,
        confirm: &mut deadlock::Confirm<'_>,
        now_ns: u64,
    ) -> Detection {
        let Facts {
            selected,
            locks,
            loops,
            exits,
        } = *facts;
        let mut watch = Vec::new();
        let mut out = match &self.deadlock {
            Some(d) => d.check(samples, locks, confirm, now_ns),
            None => Vec::new(),
        };
        // A thread of a deadlock is the deadlock's, also while the cycle has not held long
        // enough yet (its members block one after the other).
        let mut deadlocked = deadlock::members(&out);
        if self.deadlock.is_some() {
            deadlocked.extend(
                deadlock::cycles(samples, locks)
                    .into_iter()
                    .flatten()
                    .map(|i| samples[i].key),
            );
        }
        for sample in samples {
            if sample.paused() {
                continue; // stopped by a signal or a debugger: not the program's hang
            }
            if let Some(d) = &self.d_state {
                out.extend(d.check(sample, now_ns));
            }
            if let Some(o) = &self.off_cpu {
                out.extend(o.check(sample, selected, now_ns));
            }
            if let Some(l) = &self.lock_wait
                && !deadlocked.contains(&sample.key)
            {
                out.extend(l.check(sample, locks, now_ns));
            }
            if let Some(o) = &self.on_cpu {
                out.extend(o.check(sample, selected, now_ns));
            }
            // A loop thread in a lock wait or a deadlock is reported as that: it names the
            // owner, which a stall report cannot.
            if let Some(l) = &self.loop_stall
                && !deadlocked.contains(&sample.key)
                && !locks.owners.contains_key(&sample.key)
            {
                match l.check(sample, loops, now_ns) {
                    LoopVerdict::Fine => {}
                    LoopVerdict::Watch(w) => watch.push((sample.key, w)),
                    LoopVerdict::Stalled(c) => {
                        // Still watched: the probe is how a running loop is seen back.
                        if sample.not_blocked() {
                            watch.push((sample.key, Watch::Probe));
                        }
                        out.push(c);
                    }
                }
            }
        }
        if let Some(s) = &self.stuck_exit {
            out.extend(exits.iter().filter_map(|e| s.check(e, now_ns)));
        }
        Detection {
            candidates: out,
            watch,
        }
    }

    /// Whether the scan must report futex waiters (and the daemon read lock owners).
    pub fn wants_futex_waits(&self) -> bool {
        self.lock_wait.is_some() || self.deadlock.is_some()
    }

    fn futex_threshold(&self) -> Option<Duration> {
        [
            self.lock_wait.as_ref().map(|l| l.threshold),
            self.deadlock.as_ref().map(|d| d.hold),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The kernel-side filter of a full walk: threads off-CPU for at least half of a
    /// threshold, the candidates that may cross it before the next walk.
    pub fn scan_config(&self) -> hangwatch_ebpf::ScanConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos() / 2).unwrap_or(u64::MAX);
        hangwatch_ebpf::ScanConfig {
            d_state_min_ns: self.d_state.as_ref().map_or(u64::MAX, |d| ns(d.threshold)),
            watched_min_ns: self.off_cpu.as_ref().map_or(u64::MAX, |o| ns(o.threshold)),
            any_min_ns: u64::MAX,
            futex_min_ns: self.futex_threshold().map_or(u64::MAX, ns),
            // A loop thread is watched from a quarter of its threshold on (the probe must
            // prove that much before a stall is reported).
            loop_min_ns: self
                .loop_stall
                .as_ref()
                .map_or(u64::MAX, |l| ns(l.proven() * 2)),
            on_cpu_min_ns: self.on_cpu.as_ref().map_or(u64::MAX, |o| ns(o.threshold)),
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
            self.futex_threshold(),
            self.loop_stall.as_ref().map(|l| l.threshold),
            self.on_cpu.as_ref().map(|o| o.threshold),
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
        members: Vec::new(),
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
            ..Detectors::default()
        };
        assert_eq!(d.walk_interval(tick), Duration::from_secs(5));
        let locks = Detectors {
            deadlock: Some(Deadlock {
                hold: Duration::from_secs(1),
            }),
            ..d.clone()
        };
        assert_eq!(locks.walk_interval(tick), Duration::from_millis(500));
        assert_eq!(locks.scan_config().futex_min_ns, 500_000_000);
        assert_eq!(d.scan_config().futex_min_ns, u64::MAX);
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
mod lock_tests {
    use super::*;
    use crate::detect::testing::blocked_in_futex;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_forming_cycle_gets_no_lock_wait_and_then_one_deadlock() {
        let d = Detectors {
            lock_wait: Some(LockWait {
                threshold: Duration::from_secs(1),
            }),
            deadlock: Some(Deadlock {
                hold: Duration::from_secs(1),
            }),
            ..Detectors::default()
        };
        // b blocked first, a a little later: at 1 s b has waited 1 s, the cycle 0.99 s.
        let a = blocked_in_futex(101, 100, SEC / 100, 2, false);
        let b = blocked_in_futex(102, 100, 0, 2, false);
        let mut locks = LockFacts::default();
        locks.owners.insert(a.key, 102);
        locks.owners.insert(b.key, 101);
        let samples = [a, b];
        let mut yes = |_: &[&ThreadSample], _| true;
        let none = Selected::default();
        let loops = LoopFacts::default();
        let facts = Facts {
            selected: &none,
            locks: &locks,
            loops: &loops,
            exits: &[],
        };
        assert!(
            d.detect(&samples, &facts, &mut yes, SEC)
                .candidates
                .is_empty()
        );
        let later = d.detect(&samples, &facts, &mut yes, 2 * SEC).candidates;
        assert_eq!(
            later.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![HangKind::Deadlock]
        );
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
            on_cpu: false,
            runnable_since_ns: 0,
            event_loop: None,
            woken: false,
            kernel_thread: false,
            blocked_before_attach: false,
            syscall: None,
            saved_syscall: None,
            seen_at_ns: 0,
        }
    }

    /// A thread in `futex(uaddr, FUTEX_WAIT_PRIVATE, val, timeout)`.
    pub fn blocked_in_futex(
        tid: u32,
        tgid: u32,
        off_cpu_at_ns: u64,
        val: u64,
        timed: bool,
    ) -> ThreadSample {
        let mut s = blocked(
            tid,
            tgid,
            hangwatch_ebpf::task_state::INTERRUPTIBLE,
            off_cpu_at_ns,
        );
        s.saved_syscall = Some(crate::meta::ProcSyscall {
            nr: libc::SYS_futex,
            args: [0x1000, 128, val, u64::from(timed), 0, 0],
        });
        s
    }
}
