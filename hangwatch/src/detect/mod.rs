//! Detectors: from the thread samples of one scan, which threads are hung and of what kind.
//! One file per hang kind; each is a pure function of the samples, the rules and `now`, and
//! has one threshold check (`crossed`: has this wait lasted its threshold?) that both its
//! `check` and the look-up of a process's threshold below use.
mod d_state;
pub mod deadlock;
pub mod lock_wait;
pub mod loop_stall;
mod off_cpu;
mod on_cpu;
pub mod reason;
pub mod stuck_exit;
mod targets;

use std::{collections::HashSet, time::Duration};

pub use self::{
    d_state::DState,
    deadlock::Deadlock,
    lock_wait::LockWait,
    loop_stall::{LoopFacts, LoopStall, LoopVerdict, Watch, checked_stretch_ns},
    off_cpu::OffCpu,
    on_cpu::OnCpu,
    stuck_exit::StuckExit,
    targets::Targets,
};
use crate::{
    config::Rules,
    kind::{HangKind, PerKind, Scope},
    meta::LockFacts,
    state::{ExitRequest, ThreadKey, ThreadSample},
};

/// The threshold of a kind for a process, as the rules give it; `None` when the kind is
/// off for that process. Implemented by [`Targets`]' per-process cache.
pub trait Thresholds {
    fn of(&mut self, kind: HangKind, tgid: u32) -> Option<Duration>;
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
    /// For a deadlock, the rule that fired and the facts it saw.
    pub reason: Option<std::sync::Arc<reason::DeadlockReason>>,
}

/// Everything the detectors need besides the samples: the rules, and for each kind the
/// smallest threshold any of them gives (what the kernel-side filter and the walks must
/// serve, and below which no process's threshold needs looking up).
#[derive(Debug, Clone)]
pub struct Detectors {
    rules: Rules,
    smallest: PerKind<Option<Duration>>,
}

impl Default for Detectors {
    /// The defaults of MISSION.md, no rules.
    fn default() -> Self {
        Self::new(Rules::default())
    }
}

/// What one scan found: the hung threads, and the loop threads to watch closer.
#[derive(Debug, Clone, Default)]
pub struct Detection {
    pub candidates: Vec<Candidate>,
    pub watch: Vec<(ThreadKey, Watch)>,
}

/// Everything besides the samples and the thresholds that the detectors read.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    pub selected: &'a Selected,
    pub locks: &'a LockFacts,
    pub loops: &'a LoopFacts,
    pub exits: &'a [ExitRequest],
}

/// The processes selected for `off_cpu` and `on_cpu`, resolved to tgids for this scan.
pub type Selected = HashSet<u32>;

impl Detectors {
    pub fn new(rules: Rules) -> Self {
        let smallest = PerKind::from_fn(|kind| rules.smallest(kind));
        Self { rules, smallest }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The smallest threshold of `kind` over every process; `None` when it is off for all.
    pub fn smallest(&self, kind: HangKind) -> Option<Duration> {
        self.smallest[kind]
    }

    /// `thresholds` gives each process's thresholds (asked only for threads off-CPU longer
    /// than the kind's smallest threshold); `confirm` checks a deadlock against /proc (see
    /// [`Deadlock::check`]).
    pub fn detect(
        &self,
        samples: &[ThreadSample],
        facts: &Facts<'_>,
        thresholds: &mut dyn Thresholds,
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
        let mut out = match self.smallest(HangKind::Deadlock) {
            Some(smallest) => Deadlock { hold: smallest }.check_per_process(
                samples,
                locks,
                confirm,
                &mut |tgid| thresholds.of(HangKind::Deadlock, tgid),
                now_ns,
            ),
            None => Vec::new(),
        };
        // A thread of a deadlock is the deadlock's, also while the cycle has not held long
        // enough yet (its members block one after the other).
        let mut deadlocked = deadlock::members(&out);
        if self.smallest(HangKind::Deadlock).is_some() {
            for cycle in deadlock::cycles(samples, locks) {
                let tgid = samples[cycle[0]].tgid;
                if thresholds.of(HangKind::Deadlock, tgid).is_some() {
                    deadlocked.extend(cycle.into_iter().map(|i| samples[i].key));
                }
            }
        }
        // The threshold of `kind` for this sample, looked up only once the kind's own check
        // (`crossed`) passes for the smallest threshold any process has.
        let past = |kind: HangKind,
                    crossed: fn(Duration, &ThreadSample, u64) -> bool,
                    sample: &ThreadSample,
                    thresholds: &mut dyn Thresholds|
         -> Option<Duration> {
            let smallest = self.smallest(kind)?;
            if !crossed(smallest, sample, now_ns) {
                return None;
            }
            thresholds.of(kind, sample.tgid)
        };
        for sample in samples {
            if sample.paused() {
                continue; // stopped by a signal or a debugger: not the program's hang
            }
            let off_cpu = selected
                .contains(&sample.tgid)
                .then(|| past(HangKind::OffCpu, OffCpu::crossed, sample, thresholds))
                .flatten();
            if sample.uninterruptible() {
                // The kind says what it is: a thread in D is `d_state`, also in a selected
                // process, and there as soon as its off-CPU threshold says so.
                let d_state = past(HangKind::DState, DState::crossed, sample, thresholds);
                if let Some(threshold) = d_state.into_iter().chain(off_cpu).min() {
                    out.extend(DState { threshold }.check(sample, now_ns));
                }
            } else if let Some(threshold) = off_cpu {
                out.extend(OffCpu { threshold }.check(sample, selected, now_ns));
            }
            // With a known owner, or in the shape of an ownerless lock's slow path (the
            // report reads the stack and drops the wait if it shows no lock).
            let lock_shaped = || sample.futex_wait().is_some_and(|c| c.lock_shaped());
            if (locks.owners.contains_key(&sample.key) || lock_shaped())
                && !deadlocked.contains(&sample.key)
                // Behind a thread parked for ever: the deadlock's, reported as that (between
                // walks the parked thread is not sampled and the deadlock is carried).
                && !(locks.behind_a_park(sample)
                    && self.smallest(HangKind::Deadlock).is_some()
                    && thresholds.of(HangKind::Deadlock, sample.tgid).is_some())
                && let Some(threshold) =
                    past(HangKind::LockWait, LockWait::crossed, sample, thresholds)
            {
                out.extend(LockWait { threshold }.check(sample, locks, now_ns));
            }
            // Running, not blocked: the off-CPU clock says nothing here.
            if selected.contains(&sample.tgid)
                && sample.not_blocked()
                && let Some(threshold) = past(HangKind::OnCpu, OnCpu::crossed, sample, thresholds)
            {
                out.extend(OnCpu { threshold }.check(sample, selected, now_ns));
            }
            // A loop thread in a lock wait or a deadlock is reported as that: it names the
            // owner, which a stall report cannot.
            if let Some(smallest) = self.smallest(HangKind::LoopStall)
                && sample.event_loop.is_some_and(|l| !l.in_wait)
                && !deadlocked.contains(&sample.key)
                && !locks.owners.contains_key(&sample.key)
            {
                // Watched from a quarter of the smallest threshold; the process's own
                // threshold is looked up only then.
                let early = LoopStall {
                    threshold: smallest,
                };
                let verdict = match early.check(sample, loops, now_ns) {
                    LoopVerdict::Fine => LoopVerdict::Fine,
                    _ => match thresholds.of(HangKind::LoopStall, sample.tgid) {
                        Some(threshold) => LoopStall { threshold }.check(sample, loops, now_ns),
                        None => LoopVerdict::Fine,
                    },
                };
                match verdict {
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
            // Not known as a loop thread by its waits (a loop stalled on its first request,
            // or since before the daemon started): recognized by its stack, if its process
            // has a loop fd.
            if let Some(smallest) = self.smallest(HangKind::LoopStall)
                && sample.event_loop.is_none()
                && !deadlocked.contains(&sample.key)
                && !locks.owners.contains_key(&sample.key)
                && (LoopStall {
                    threshold: smallest,
                })
                .check_by_stack(sample, loops, now_ns)
                    != LoopVerdict::Fine
                && let Some(threshold) = thresholds.of(HangKind::LoopStall, sample.tgid)
            {
                match (LoopStall { threshold }).check_by_stack(sample, loops, now_ns) {
                    LoopVerdict::Fine => {}
                    LoopVerdict::Watch(w) => watch.push((sample.key, w)),
                    LoopVerdict::Stalled(c) => {
                        // As above: a running loop is seen back by the probe.
                        if sample.not_blocked() {
                            watch.push((sample.key, Watch::Probe));
                        }
                        out.push(c);
                    }
                }
            }
        }
        if self.smallest(HangKind::StuckExit).is_some() {
            for request in exits {
                if let Some(grace) = thresholds.of(HangKind::StuckExit, request.tgid) {
                    out.extend(StuckExit { grace }.check(request, now_ns));
                }
            }
        }
        Detection {
            candidates: out,
            watch,
        }
    }

    /// Whether the scan must report futex waiters (and the daemon read lock owners).
    pub fn wants_futex_waits(&self) -> bool {
        self.futex_threshold().is_some()
    }

    fn futex_threshold(&self) -> Option<Duration> {
        [
            self.smallest(HangKind::LockWait),
            self.smallest(HangKind::Deadlock),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The smallest threshold of the kinds that watch only selected processes off-CPU.
    fn selected_threshold(&self) -> Option<Duration> {
        HangKind::ALL
            .into_iter()
            .filter(|k| k.default_rule().scope == Scope::Selected && *k != HangKind::OnCpu)
            .filter_map(|k| self.smallest(k))
            .min()
    }

    /// The kernel-side filter of a full walk: threads off-CPU for at least half of a
    /// threshold, the candidates that may cross it before the next walk. With rules, half
    /// the smallest threshold any rule gives for the kind.
    pub fn scan_config(&self) -> hangwatch_ebpf::ScanConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos() / 2).unwrap_or(u64::MAX);
        hangwatch_ebpf::ScanConfig {
            d_state_min_ns: self.smallest(HangKind::DState).map_or(u64::MAX, ns),
            watched_min_ns: self.selected_threshold().map_or(u64::MAX, ns),
            any_min_ns: u64::MAX,
            futex_min_ns: self.futex_threshold().map_or(u64::MAX, ns),
            // A loop thread is watched from a quarter of its threshold on (see
            // `LoopStall::proven`).
            loop_min_ns: self.smallest(HangKind::LoopStall).map_or(u64::MAX, |t| {
                u64::try_from(LoopStall { threshold: t }.proven().as_nanos()).unwrap_or(u64::MAX)
            }),
            on_cpu_min_ns: self.smallest(HangKind::OnCpu).map_or(u64::MAX, ns),
            // From half the threshold the daemon reads the stack of a thread of a process
            // with a loop fd (`LoopStall::check_by_stack`).
            loop_fd_min_ns: self.smallest(HangKind::LoopStall).map_or(u64::MAX, ns),
            // Numbered by the probes at each walk (`Probes::scan_threads`).
            walk_seq: 0,
        }
    }

    /// How often the full walk must run so that no thread crosses a threshold unseen: half
    /// the smallest threshold, between one tick and `MAX_WALK_INTERVAL`.
    pub fn walk_interval(&self, tick: Duration) -> Duration {
        // stuck_exit follows the exit signals, drained every tick, not the walks.
        let smallest = HangKind::ALL
            .into_iter()
            .filter(|k| *k != HangKind::StuckExit)
            .filter_map(|k| self.smallest(k))
            .min()
            .unwrap_or(MAX_WALK_INTERVAL * 2);
        (smallest / 2).clamp(tick, MAX_WALK_INTERVAL.max(tick))
    }
}

/// Full walks happen at least this often, so new processes and threads are seen.
pub const MAX_WALK_INTERVAL: Duration = Duration::from_secs(5);

/// Whether a wait of `waited_ns` has lasted `threshold`: the comparison every kind's
/// threshold check makes (each kind's file says what its wait is measured from).
fn reached(waited_ns: u64, threshold: Duration) -> bool {
    u128::from(waited_ns) >= threshold.as_nanos()
}

fn candidate(sample: &ThreadSample, kind: HangKind, threshold: Duration) -> Candidate {
    Candidate {
        thread: sample.key,
        tgid: sample.tgid,
        kind,
        threshold,
        since_ns: sample.off_cpu_at_ns,
        members: Vec::new(),
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Pattern, Rule, Selector, Setting},
        detect::testing::{RulesWith, blocked, blocked_in_futex},
    };

    const SEC: u64 = 1_000_000_000;

    fn base(set: &[(HangKind, Option<Duration>)]) -> Rules {
        let mut rules = Rules {
            base: PerKind::default(),
            rules: Vec::new(),
        };
        for (kind, t) in set {
            rules.base[*kind] = *t;
        }
        rules
    }

    fn rule(comm: &str, set: &[(HangKind, Setting)]) -> Rule {
        let mut per = PerKind::default();
        for (kind, s) in set {
            per[*kind] = Some(*s);
        }
        Rule {
            selector: Selector {
                comm: Some(Pattern::exact(comm)),
                ..Selector::default()
            },
            set: per,
            origin: "test".into(),
        }
    }

    #[test]
    fn walks_often_enough_for_the_smallest_threshold() {
        let tick = Duration::from_millis(250);
        let d = Detectors::new(base(&[(HangKind::DState, Some(Duration::from_secs(10)))]));
        assert_eq!(d.walk_interval(tick), Duration::from_secs(5));
        let mut locks = d.rules().clone();
        locks.base[HangKind::Deadlock] = Some(Duration::from_secs(1));
        let locks = Detectors::new(locks);
        assert_eq!(locks.walk_interval(tick), Duration::from_millis(500));
        assert_eq!(locks.scan_config().futex_min_ns, 500_000_000);
        assert_eq!(d.scan_config().futex_min_ns, u64::MAX);
        let mut o = d.rules().clone();
        o.rules.push(rule(
            "x",
            &[(HangKind::OffCpu, Setting::After(Duration::from_secs(1)))],
        ));
        let o = Detectors::new(o);
        assert_eq!(o.walk_interval(tick), Duration::from_millis(500));
        assert_eq!(o.scan_config().watched_min_ns, 500_000_000);
        assert_eq!(d.scan_config().watched_min_ns, u64::MAX);
        let mut tiny = d.rules().clone();
        tiny.rules.push(rule(
            "x",
            &[(HangKind::OffCpu, Setting::After(Duration::from_millis(100)))],
        ));
        assert_eq!(Detectors::new(tiny).walk_interval(tick), tick);
    }

    #[test]
    fn the_scan_filter_serves_the_smallest_threshold_any_rule_gives() {
        let mut rules = Rules::default();
        rules.rules.push(rule(
            "slow",
            &[(HangKind::DState, Setting::After(Duration::from_secs(60)))],
        ));
        rules.rules.push(rule(
            "fast",
            &[
                (HangKind::DState, Setting::After(Duration::from_secs(2))),
                (HangKind::LockWait, Setting::Off),
            ],
        ));
        let d = Detectors::new(rules);
        let config = d.scan_config();
        assert_eq!(config.d_state_min_ns, SEC, "half of fast's 2 s");
        assert_eq!(
            config.futex_min_ns,
            SEC / 2,
            "half of the 1 s deadlock hold"
        );
    }

    #[test]
    fn thresholds_are_per_process() {
        let mut rules = Rules::default();
        rules.rules.push(rule(
            "watched",
            &[(HangKind::OffCpu, Setting::After(Duration::from_secs(1)))],
        ));
        rules.rules.push(rule(
            "quiet",
            &[
                (HangKind::LockWait, Setting::Off),
                (HangKind::DState, Setting::After(Duration::from_secs(60))),
            ],
        ));
        let d = Detectors::new(rules.clone());
        let mut facts = RulesWith::new(&rules, &[(100, "watched"), (200, "quiet"), (300, "other")]);
        let watched = blocked(101, 100, hangwatch_ebpf::task_state::INTERRUPTIBLE, 0);
        let quiet_waiter = blocked_in_futex(201, 200, 0, 2, false);
        let quiet_d = blocked(202, 200, hangwatch_ebpf::task_state::UNINTERRUPTIBLE, 0);
        let loud_waiter = blocked_in_futex(301, 300, 0, 2, false);
        let loud_d = blocked(302, 300, hangwatch_ebpf::task_state::UNINTERRUPTIBLE, 0);
        // In D in the selected process: `d_state` (what it is) at off_cpu's 1 s.
        let watched_d = blocked(102, 100, hangwatch_ebpf::task_state::UNINTERRUPTIBLE, 0);
        let samples = [
            watched,
            quiet_waiter,
            quiet_d,
            loud_waiter,
            loud_d,
            watched_d,
        ];
        let mut locks = LockFacts::default();
        locks.owners.insert(samples[1].key, 203); // running owners, no cycle
        locks.owners.insert(samples[3].key, 303);
        let selected: Selected = [100].into_iter().collect();
        let mut no = |_: &[&ThreadSample], _| None;
        let loops = LoopFacts::default();
        let f = Facts {
            selected: &selected,
            locks: &locks,
            loops: &loops,
            exits: &[],
        };
        let found = d
            .detect(&samples, &f, &mut facts, &mut no, 20 * SEC)
            .candidates;
        let mut got: Vec<(u32, HangKind, u64)> = found
            .iter()
            .map(|c| (c.thread.tid, c.kind, c.threshold.as_secs()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (101, HangKind::OffCpu, 1),
                (102, HangKind::DState, 1),
                (301, HangKind::LockWait, 5),
                (302, HangKind::DState, 10),
            ]
        );
        // Below every threshold nobody's facts are looked up.
        facts.asked = 0;
        d.detect(&samples, &f, &mut facts, &mut no, SEC / 2);
        assert_eq!(facts.asked, 0);
    }

    #[test]
    fn a_loop_recognized_from_its_stack_follows_the_rules() {
        let mut rules = base(&[(HangKind::LoopStall, Some(Duration::from_secs(2)))]);
        rules
            .rules
            .push(rule("quiet", &[(HangKind::LoopStall, Setting::Off)]));
        let d = Detectors::new(rules.clone());
        let mut facts = RulesWith::new(&rules, &[(100, "server"), (200, "quiet")]);
        let in_read = |tid, tgid| {
            let mut s = blocked(tid, tgid, hangwatch_ebpf::task_state::INTERRUPTIBLE, 0);
            s.saved_syscall = Some(crate::state::ProcSyscall {
                nr: libc::SYS_read,
                args: [0; 6],
            });
            s
        };
        let samples = [in_read(101, 100), in_read(201, 200)];
        let mut loops = LoopFacts::default();
        loops.fd_processes.extend([100, 200]);
        let none = Selected::default();
        let locks = LockFacts::default();
        let mut no = |_: &[&ThreadSample], _| None;
        let found = d.detect(
            &samples,
            &Facts {
                selected: &none,
                locks: &locks,
                loops: &loops,
                exits: &[],
            },
            &mut facts,
            &mut no,
            SEC,
        );
        assert_eq!(
            found.watch,
            vec![(samples[0].key, Watch::CheckDriver)],
            "only the process whose rules keep loop_stall on has its stack read"
        );
        for s in &samples {
            loops.drivers.insert(s.key, (0, Some("uv_run".into())));
        }
        let found = d.detect(
            &samples,
            &Facts {
                selected: &none,
                locks: &locks,
                loops: &loops,
                exits: &[],
            },
            &mut facts,
            &mut no,
            2 * SEC,
        );
        assert_eq!(
            found
                .candidates
                .iter()
                .map(|c| (c.thread.tid, c.kind))
                .collect::<Vec<_>>(),
            vec![(101, HangKind::LoopStall)]
        );
    }

    #[test]
    fn a_forming_cycle_gets_no_lock_wait_and_then_one_deadlock() {
        let rules = base(&[
            (HangKind::LockWait, Some(Duration::from_secs(1))),
            (HangKind::Deadlock, Some(Duration::from_secs(1))),
        ]);
        let d = Detectors::new(rules.clone());
        let mut facts = RulesWith::new(&rules, &[]);
        // b blocked first, a a little later: at 1 s b has waited 1 s, the cycle 0.99 s.
        let a = blocked_in_futex(101, 100, SEC / 100, 2, false);
        let b = blocked_in_futex(102, 100, 0, 2, false);
        let mut locks = LockFacts::default();
        locks.owners.insert(a.key, 102);
        locks.owners.insert(b.key, 101);
        let samples = [a, b];
        let mut yes = |_: &[&ThreadSample], _| Some(Vec::new());
        let none = Selected::default();
        let loops = LoopFacts::default();
        let f = Facts {
            selected: &none,
            locks: &locks,
            loops: &loops,
            exits: &[],
        };
        assert!(
            d.detect(&samples, &f, &mut facts, &mut yes, SEC)
                .candidates
                .is_empty()
        );
        let later = d
            .detect(&samples, &f, &mut facts, &mut yes, 2 * SEC)
            .candidates;
        assert_eq!(
            later.iter().map(|c| c.kind).collect::<Vec<_>>(),
            vec![HangKind::Deadlock]
        );
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::{collections::HashMap, time::Duration};

    use super::Thresholds;
    pub use crate::state::testing::{blocked, blocked_in_futex};
    use crate::{
        config::{Process, Rules},
        kind::HangKind,
    };

    /// [`Thresholds`] from real rules over given process names (pid -> comm), counting
    /// the look-ups.
    pub struct RulesWith<'a> {
        rules: &'a Rules,
        comms: HashMap<u32, &'static str>,
        pub asked: usize,
    }

    impl<'a> RulesWith<'a> {
        pub fn new(rules: &'a Rules, comms: &[(u32, &'static str)]) -> Self {
            Self {
                rules,
                comms: comms.iter().copied().collect(),
                asked: 0,
            }
        }
    }

    impl Thresholds for RulesWith<'_> {
        fn of(&mut self, kind: HangKind, tgid: u32) -> Option<Duration> {
            self.asked += 1;
            let comm = self.comms.get(&tgid).copied().unwrap_or("unknown");
            self.rules.thresholds_for(&Process {
                pid: tgid,
                comm,
                exe: None,
                cgroup: None,
                pod: None,
            })[kind]
        }
    }
}
